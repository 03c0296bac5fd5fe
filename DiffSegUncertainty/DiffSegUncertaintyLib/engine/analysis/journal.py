"""The per-image rows of an evaluation kept as they are scored, so ``diffseg evaluate --resume`` continues
an interrupted run where it stopped.

Why: the whole LIDC val split is 1,680 images at about 10 s each on a 2-core CPU (docs/cli.md), longer than
a working session, and an evaluation interrupted after two hours otherwise keeps nothing (the report is
written all or nothing, as ``diffseg sample`` writes its folder). Resuming gives the report an
uninterrupted run writes, row for row: an image's hypotheses depend only on (seed, hypothesis), and a row
goes through JSON and back unchanged (floats are written as their shortest exact repr).

The journal is a folder beside the output, ``<output>.resume``:

- ``run.json``: what the rows were scored with (model and weights checksum, data, sampler, seed,
  precision, conventions...). A resume with anything else is refused before any image is scored: its
  rows would not belong to the same report.
- ``rows-<pid>-<time>.jsonl``: one file per process and start, one row a line, flushed as each image
  finishes. A fresh file per start means a line torn by a kill can only be a file's last, and is skipped.
  Rows are taken by image index from every file, so a run may resume with another process count.

The folder is removed once the report is written; a run without ``--resume`` never reads or writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..networks.checks import InputError


def journal_folder(output: str | os.PathLike) -> Path:
    """``<output>.resume``, beside the output folder (never inside it: the output is written at once)."""
    out = Path(output).expanduser().absolute()
    return out.with_name(out.name + ".resume")


class Journal:
    """The kept rows of one evaluation (see the module docstring). ``open`` checks or starts it; ``rows``
    reads what earlier runs scored; ``append`` keeps one row; ``remove`` deletes the folder."""

    def __init__(self, folder: Path, run: Mapping[str, Any]):
        self.folder, self.run = Path(folder), dict(run)
        self._file: Any = None
        self._kept: dict[int, dict[str, Any]] | None = None  # what earlier runs kept, read once

    @classmethod
    def open(cls, folder: str | os.PathLike, run: Mapping[str, Any]) -> "Journal":
        """Start the journal in ``folder``, or check that the one there was started with ``run``.
        InputError naming the first setting that differs, before any work."""
        folder = Path(folder)
        run = json.loads(json.dumps(run))  # as it reads back from run.json (tuples -> lists)
        path = folder / "run.json"
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} exists and is not a folder; the journal of --resume goes there")
        if path.is_file():
            try:
                kept = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise InputError(f"{path} cannot be read ({e}); remove {folder} to start over") from None
            differ = [k for k in sorted(set(kept) | set(run)) if kept.get(k) != run.get(k)]
            if differ:
                k = differ[0]
                raise InputError(f"{folder} holds images scored with other settings ({k}: {kept.get(k)!r} there, "
                                 f"{run.get(k)!r} now); resume with the same settings, or remove {folder} "
                                 "to start over")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".run-{os.getpid()}.json"
            tmp.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, path)  # whole or absent; two processes starting at once write the same text
        return cls(folder, run)

    def rows(self, ids: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
        """Every kept row by image index (the first of any repeats). A line that does not parse, torn
        by a kill while it was written, is skipped. InputError if a row's id is not the data's there.
        Read from disk once, before this run appends (the command asks first, to report them before work)."""
        if self._kept is None:
            self._kept = {}
            for path in sorted(self.folder.glob("rows-*.jsonl")):
                for line in path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                        self._kept.setdefault(int(row["index"]), row)
                    except (ValueError, KeyError, TypeError):
                        continue
        for i, row in self._kept.items():
            if ids is not None and (i >= len(ids) or row.get("id") != ids[i]):
                raise InputError(f"{self.folder} has a row for image {i} ({row.get('id')!r}) that is not this "
                                 f"data's ({ids[i] if i < len(ids) else 'no such image'!r}); remove it to start over")
        return self._kept

    def append(self, row: Mapping[str, Any]) -> None:
        """Keep one scored row: written, flushed and synced before the next image starts."""
        if self._file is None:
            self._file = open(self.folder / f"rows-{os.getpid()}-{time.time_ns()}.jsonl", "a", encoding="utf-8")
        self._file.write(json.dumps(dict(row)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Delete the journal (its report is written)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
