"""The GPU campaign prepared on a CPU (issue 15): the data pack round-trips bit for bit through the
LIDC loader, train.py's device-side options (resident data, no per-step sync, the wall-clock deadline,
the sync-free EMA) change nothing they should not, and the whole campaign runs end to end with tiny
presets into a folder that --join turns back into model folders the engine scores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint as ck
from training.data.lidc import LIDC
from training.gpu import campaign as cp
from training.gpu import pack as pk
from training.train import EMA, ema_with_warmup, load_config, train

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"


@pytest.fixture(scope="module")
def small_lidc(lidc_root, tmp_path_factory) -> Path:
    """A lidc128-layout folder of real slices: 40 train and 24 val slices of the val split."""
    root = tmp_path_factory.mktemp("lidc-small")
    with np.load(lidc_root / "val.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for split, sl in (("train", slice(0, 40)), ("val", slice(40, 64))):
        np.savez(root / f"{split}.npz", **{k: v[sl] for k, v in arrays.items()})
    return root


@pytest.fixture(scope="module")
def packed(small_lidc, tmp_path_factory) -> Path:
    return pk.pack(small_lidc, tmp_path_factory.mktemp("pack") / "lidc64.npz", 64)


def test_pack_round_trips_bit_for_bit_through_the_loader(small_lidc, packed, tmp_path):
    folder = pk.unpack(packed, tmp_path / "unpacked")
    for split in ("train", "val"):
        with np.load(small_lidc / f"{split}.npz") as z:
            masks = z["masks"]
            assert np.array_equal(pk.read(packed, split)["masks"], masks[..., 32:96, 32:96])
            assert np.array_equal(pk.read(packed, split)["images"], z["images"][:, 32:96, 32:96])
            assert masks[..., 32:96, 32:96].any()                  # the crops hold nodules: a real check
        a = LIDC(small_lidc, split, size=64, fit="crop")
        b = LIDC(folder, split, size=64, fit="crop")
        assert len(a) == len(b) == (40 if split == "train" else 24)
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x["id"] == y["id"]
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["annotations"], y["annotations"])


def test_pack_refuses_bad_input_before_work(tmp_path, capsys):
    assert pk.main(["--data", str(tmp_path), "--out", str(tmp_path / "p.npz")]) == 2
    assert "train.npz" in capsys.readouterr().err and not (tmp_path / "p.npz").exists()
    assert pk.main(["--unpack", str(tmp_path / "none.npz"), "--out", str(tmp_path / "u")]) == 2


def test_sync_free_ema_equals_averaged_model_bit_for_bit():
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))  # float and int buffers
    ref = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.99), use_buffers=True)
    ema = EMA(net, 0.99)
    for _ in range(5):
        net(torch.randn(2, 1, 6, 6))                 # moves the BatchNorm buffers and its counter
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ref.update_parameters(net)
        ema.update_parameters(net)
    assert ema.n_averaged.device.type == "cpu"
    a, b = ref.state_dict(), ema.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _tiny_cfg(**extra):
    ov = {"model.preset": "tiny", "data.size": 16, "data.train_limit": 12, "train.batch_size": 4,
          "train.steps": 6, "train.log_every": 4, "train.checkpoint_every": 100, "train.warmup_steps": 2}
    return load_config(CONFIGS / "hsrdiff-light-gpu.toml", {**ov, **extra})


def test_resident_data_trains_exactly_as_the_loader(packed, tmp_path):
    data = pk.unpack(packed, tmp_path / "data")
    runs = {}
    for resident in (False, True):
        out = tmp_path / f"r{int(resident)}"
        runs[resident] = train(_tiny_cfg(**{"train.resident": resident}), out, data_root=str(data), quiet=True)
        assert runs[resident]["step"] == 6 and len(runs[resident]["losses"]) == 6   # flushed at 4 and 6
    assert runs[False]["losses"] == runs[True]["losses"]
    a, b = ck.load(tmp_path / "r0" / ck.LAST), ck.load(tmp_path / "r1" / ck.LAST)
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_deadline_stops_saves_and_resume_finishes_the_run(packed, tmp_path):
    data = pk.unpack(packed, tmp_path / "data")
    whole = train(_tiny_cfg(), tmp_path / "whole", data_root=str(data), quiet=True)
    cut = train(_tiny_cfg(), tmp_path / "cut", data_root=str(data), quiet=True, deadline=time.monotonic())
    assert cut["stopped"] == "time" and cut["step"] == 1                  # one step, then the clock
    assert ck.load(tmp_path / "cut" / ck.LAST)["step"] == 1
    rest = train(_tiny_cfg(), tmp_path / "cut", data_root=str(data), quiet=True, resume=True)
    assert rest["stopped"] == "steps" and rest["step"] == 6
    assert rest["losses"] == whole["losses"][1:]
    a, b = ck.load(tmp_path / "whole" / ck.LAST), ck.load(tmp_path / "cut" / ck.LAST)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_max_minutes_on_the_command_line(packed, tmp_path, capsys):
    from training.train import main
    data = pk.unpack(packed, tmp_path / "data")
    base = ["--config", str(CONFIGS / "hsrdiff-light-gpu.toml"), "--data", str(data), "--quiet",
            "--override", 'model.preset="tiny"', "--override", "data.size=16", "--override", "data.train_limit=8",
            "--override", "train.batch_size=4", "--override", "train.steps=3"]
    assert main([*base, "--out", str(tmp_path / "bad"), "--max-minutes", "0"]) == 2
    assert "--max-minutes" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "ok"), "--max-minutes", "5"]) == 0   # 3 steps fit in 5 min
    assert ck.load(tmp_path / "ok" / ck.LAST)["step"] == 3


def test_non_finite_loss_is_refused_before_a_checkpoint(packed, tmp_path):
    data = pk.unpack(packed, tmp_path / "data")
    with pytest.raises(FloatingPointError, match="at step"):
        train(_tiny_cfg(**{"train.lr": float("inf"), "train.checkpoint_every": 2}), tmp_path / "nan",
              data_root=str(data), quiet=True)
    assert not (tmp_path / "nan" / ck.LAST).exists()


NO_SITK = "import sys; sys.modules['SimpleITK'] = None; "   # the device machine has no SimpleITK


def test_campaign_end_to_end_with_tiny_presets(packed, tmp_path):
    out, work = tmp_path / "OUT", tmp_path / "work"
    args = ["--pack", str(packed), "--out", str(out), "--work", str(work), "--minutes", "5", "--device",
            "cpu", "--tiny", "--score-images", "4", "--samples", "2", "--score-batch", "8"]
    # the first call as on the device: a fresh interpreter where SimpleITK cannot be imported
    code = NO_SITK + f"from training.gpu.campaign import main; sys.exit(main({args!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SimpleITK is missing here" in proc.stderr
    doc = json.loads((out / "scores.json").read_text())
    assert set(doc["models"]) == {"hsrdiff-light-gpu", "pgrd-2d-gpu"}
    for name, m in doc["models"].items():
        for stage in m["stages"].values():
            assert stage["stopped"] == "steps" and stage["step"] == stage["total_steps"] > 0
            assert stage["gflop_per_sample"] > 0 and stage["tflop_per_s"] == pytest.approx(
                stage["steps_per_s"] * stage["batch"] * stage["gflop_per_sample"] / 1000, rel=0.01)
        assert 0 <= m["val"]["ged"]["mean"] <= 2 and m["val_images"] == 4
        # the shipped model it would replace, scored on the same slices and seed, paired per image
        vs = m["against_shipped"]
        assert vs["model"] == cp.REPLACES[name] and vs["sampler"]["steps"] == 25  # its own card's sampler
        for key in ("ged", "hm_iou"):
            row = vs["paired"][key]
            assert row["n"] == 4 and row["a"] == pytest.approx(vs["val"][key]["mean"])
            assert row["b"] == pytest.approx(m["val"][key]["mean"])
            assert row["mean_difference"] == pytest.approx(row["b"] - row["a"])
    # what comes back: few files, none above the device's 16 MiB, no folder
    files = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() and p.stat().st_size <= 16 * 2 ** 20 for p in out.iterdir()) and len(files) <= 8
    models = cp.join(out, tmp_path / "models")
    assert sorted(p.name for p in models) == ["hsrdiff-light-gpu", "pgrd-2d-gpu"]
    for folder in models:
        card = json.loads((folder / "model.json").read_text())
        assert card["metrics"]["source"] == "diffseg evaluate" and card["metrics"]["samples"] == 2
        assert card["metrics"]["values"]["ged"] == doc["models"][folder.name]["val"]["ged"]["mean"]
    # a second call resumes: every stage is at its ceiling, so nothing trains and the scores repeat
    args += ["--no-shipped"]
    assert cp.main(args) == 0
    again = json.loads((out / "scores.json").read_text())
    for name, m in again["models"].items():
        assert m["val"]["ged"] == doc["models"][name]["val"]["ged"]
    assert again["models"]["pgrd-2d-gpu"]["stages"]["prior"] == {"skipped": "the denoiser has started on this prior"}
    # a fresh machine: warm start from the folders that came back (PGRD's prior taken from its model)
    fresh = tmp_path / "fresh"
    assert cp.main([*args[:4], "--work", str(fresh), *args[6:], "--models", "pgrd",
                    "--init-from", str(tmp_path / "models")]) == 0
    warm = json.loads((out / "scores.json").read_text())["models"]["pgrd-2d-gpu"]["stages"]
    assert warm["prior"] == {"from": str(tmp_path / "models" / "pgrd-2d-gpu")} and warm["diffusion"]["step"] > 0
    from safetensors.torch import load_file
    exported = load_file(str(tmp_path / "models" / "pgrd-2d-gpu" / "model.safetensors"))
    prior = ck.load(fresh / "pgrd-2d-gpu" / "prior" / ck.BEST)["weights"]
    assert prior and all(torch.equal(v, exported["prior." + k].float()) for k, v in prior.items())


def test_device_runner_lets_the_engine_import_without_simpleitk():
    code = NO_SITK + (
        "from training.gpu.device import allow_missing_simpleitk; assert allow_missing_simpleitk(); "
        "from DiffSegUncertaintyLib.engine.files import volumes\n"
        "try:\n    volumes.sitk.ReadImage('x.nii.gz')\nexcept ImportError as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SimpleITK.ReadImage: SimpleITK is not installed" in proc.stdout
    from training.gpu.device import allow_missing_simpleitk
    assert allow_missing_simpleitk() is False          # installed here: nothing changes


def test_campaign_refuses_bad_input_before_work(packed, tmp_path, capsys):
    base = ["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--device", "cpu"]
    assert cp.main(["--pack", str(tmp_path / "none.npz"), *base]) == 2
    assert cp.main(["--pack", str(packed), "--models", "unet", *base]) == 2
    assert cp.main(["--pack", str(packed), "--minutes", "0", *base]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_plan_deadlines_are_cumulative_shares_of_the_minutes():
    p = cp.Plan(["hsrdiff", "pgrd"], 10, 100.0)
    # shares 0.45, 0.10, 0.45 of 600 s: ends at 270, 330, 600 s after the start
    assert p.deadline("hsrdiff", "train") == pytest.approx(370.0)
    assert p.deadline("pgrd", "prior") == pytest.approx(430.0)
    assert p.deadline("pgrd", "diffusion") == pytest.approx(700.0)
    alone = cp.Plan(["pgrd"], 10, 0.0)                    # PGRD alone gets every minute: 0.10 / 0.55
    assert alone.deadline("pgrd", "prior") == pytest.approx(600 * 0.10 / 0.55)
    assert alone.deadline("pgrd", "diffusion") == pytest.approx(600.0)


def test_a_failing_model_does_not_cost_the_other(packed, tmp_path, monkeypatch):
    """A GPU failure (out of memory, a kernel error: they cannot happen on this CPU, so it is raised
    here) in PGRD's training is recorded; HSRDiff is still exported, scored and returned, and the exit
    code says that something failed."""
    real = cp.run_model

    def run_model(key, *a, **kw):
        if key == "pgrd":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(key, *a, **kw)

    monkeypatch.setattr(cp, "run_model", run_model)
    out = tmp_path / "OUT"
    assert cp.main(["--pack", str(packed), "--out", str(out), "--work", str(tmp_path / "w"), "--device", "cpu",
                    "--tiny", "--score-images", "2", "--samples", "2", "--models", "pgrd,hsrdiff"]) == 1
    doc = json.loads((out / "scores.json").read_text())
    assert doc["failed"] and "CUDA out of memory (simulated)" in doc["models"]["pgrd-2d-gpu"]["error"]
    assert doc["models"]["hsrdiff-light-gpu"]["val_images"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["hsrdiff-light-gpu.tar.00", "scores.json"]
