"""Run a module on the device machine, which lacks SimpleITK (issue 15; docs/training.md "GPU campaign").

    python -m training.gpu.device training.benchmark_sampling --device cuda ...

The engine imports SimpleITK at the top of ``engine/files/volumes.py``, and ``diffseg evaluate`` and the
benchmark's quality study import that module for ``preprocess`` alone (numpy), never reading a file.
SimpleITK's wheel (~50 MB) does not fit the 64 MiB that travels beside the data pack, so where it is
missing a placeholder module takes its name: importing works, and any use of it raises at once, naming
what is missing. Where SimpleITK is installed nothing changes.
"""

from __future__ import annotations

import runpy
import sys
import types


class _Missing(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"SimpleITK.{name}: SimpleITK is not installed on this machine (training.gpu.device "
                          "lets the engine import without it; reading or writing image files needs it)")


def allow_missing_simpleitk() -> bool:
    """Put the placeholder in place if SimpleITK cannot be imported; True if it did."""
    try:
        import SimpleITK  # noqa: F401
        return False
    except ImportError:
        sys.modules["SimpleITK"] = _Missing("SimpleITK")
        return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m training.gpu.device MODULE [ARGS ...]", file=sys.stderr)
        return 2
    if allow_missing_simpleitk():
        print("note: SimpleITK is missing here: a placeholder takes its name (training/gpu/device.py)",
              file=sys.stderr)
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
