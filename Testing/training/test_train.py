"""Training: every config trains a few steps on real LIDC images, losses fall, resume is exact, and
an exported run samples through the engine and the ``diffseg sample`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint as ck
from training.data import build_dataset, pick_annotation
from training.export import export_run
from training.train import build_task, load_config, main, model_config, train

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.toml"))
DATA = {"dataset": "lidc", "split": "val", "val_split": "val", "dims": 2, "size": 16,
        "train_limit": 4, "val_limit": 2, "foreground_only": True}


def tiny(path: Path, root: Path, **extra) -> dict:
    """A config shrunk for tests: tiny preset, 4 LIDC val slices at 16 x 16, 2 steps, one validation."""
    cfg = load_config(path)
    ov = {"model.preset": "tiny", "model.init_from": "", "data": dict(DATA), "train.batch_size": 2, "train.num_workers": 0,
          "train.steps": 2, "train.checkpoint_every": 1, "train.log_every": 1,
          "validation.images": 2, "validation.samples": 2, "validation.every": 2,
          "validation.batch_size": 2, "validation.sampler": {"method": "ddim", "steps": 2}}
    if cfg["model"]["method"] == "pgrd":
        # MONAI's attention blocks need einops, which the environment lacks (see the report)
        ov["model.config.attention_levels"] = [False, False]
    if cfg["model"].get("stage") == "both":
        ov["data"] = {**DATA, "dims": 3, "depth": 4, "train_limit": 2, "val_limit": 1}
        ov["train.batch_size"] = 1
        ov["validation.images"] = 1
        ov["prior_stage.train.steps"] = 2                                # [prior_stage] wins over train
    ov.update(extra)
    return load_config(path, ov)


@pytest.fixture(scope="session")
def prior_run(lidc_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pgrd-prior-2d"
    cfg = tiny(Path(CONFIGS[0]).with_name("pgrd-prior-2d.toml"), lidc_root)
    train(cfg, out, data_root=str(lidc_root), quiet=True)
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_trains(path, lidc_root, prior_run, tmp_path):
    cfg = tiny(path, lidc_root)
    if cfg["model"]["method"] == "pgrd" and cfg["model"]["stage"] == "diffusion" \
            and cfg["model"]["config"].get("use_prior", True):
        cfg["model"]["prior_run"] = str(prior_run)
    result = train(cfg, tmp_path / "run", data_root=str(lidc_root), quiet=True)
    assert result["step"] == 2 and len(result["losses"]) == 2
    assert all(np.isfinite(result["losses"]))
    run = tmp_path / "run"
    assert (run / ck.LAST).exists() and (run / ck.BEST).exists()
    val = [json.loads(line) for line in (run / ck.VAL_LOG).read_text().splitlines()]
    assert val[-1]["step"] == 2 and np.isfinite(val[-1][cfg["validation"]["metric"]])
    if cfg["model"]["stage"] == "both":  # the prior stage ran first, into <out>/prior
        assert (run / "prior" / ck.BEST).exists()
        assert ck.read_config(run)["architecture"]["spatial_dims"] == 3


def test_pgrd_diffusion_stage_loads_and_freezes_the_prior(lidc_root, prior_run):
    cfg = tiny(CONFIGS[0].with_name("pgrd-2d.toml"), lidc_root, **{"model.prior_run": str(prior_run)})
    ds = build_dataset(cfg["data"], "val", str(lidc_root))
    task = build_task(cfg, model_config(cfg, ds))
    best = ck.load(prior_run / ck.BEST)["weights"]
    for k, v in task.full.prior.state_dict().items():
        assert torch.equal(v, best[k])
    assert not any(p.requires_grad for p in task.full.prior.parameters())
    assert not any(p is q for p in task.params for q in task.full.prior.parameters())


def test_a_pgrd_model_folder_continues_without_its_prior_run(lidc_root, prior_run, tmp_path):
    """Issue 15: a longer PGRD run starts from a model folder (e.g. the shipped one, whose run folders are
    gone): prior and denoiser come from the folder, the prior stays frozen (equal after the steps),
    without prior_run or init_from the diffusion stage is refused before any step, and a run without DDS
    heads (dds_weight 0) takes everything else from a folder trained with them."""
    from safetensors.torch import load_file
    from training.train import init_from_model
    cfg = tiny(CONFIGS[0].with_name("pgrd-2d.toml"), lidc_root, **{"model.prior_run": str(prior_run)})
    train(cfg, tmp_path / "first", data_root=str(lidc_root), quiet=True)
    folder = export_run(tmp_path / "first", tmp_path / "model")
    shipped = load_file(str(folder / "model.safetensors"))
    again = tiny(CONFIGS[0].with_name("pgrd-2d.toml"), lidc_root,
                 **{"model.init_from": str(folder), "model.prior_run": ""})
    ds = build_dataset(again["data"], "val", str(lidc_root))
    task = build_task(again, model_config(again, ds))
    assert not any(p.requires_grad for p in task.full.prior.parameters())
    train(again, tmp_path / "second", data_root=str(lidc_root), quiet=True)
    after = ck.load(tmp_path / "second" / ck.LAST)["model"]  # the trained network (not its average)
    prior = {k: v for k, v in after.items() if k.startswith("prior.")}
    assert prior and all(torch.equal(v, shipped[k].to(v.dtype)) for k, v in prior.items())
    assert any(not torch.equal(v, shipped[k].to(v.dtype)) for k, v in after.items() if k not in prior)
    with pytest.raises(ValueError, match="prior_run .* or model.init_from"):
        build_task(tiny(CONFIGS[0].with_name("pgrd-2d.toml"), lidc_root, **{"model.prior_run": ""}),
                   model_config(again, ds))
    # the w/o DDS ablation continues it: everything but the (training-only) DDS heads is copied
    no_dds = tiny(CONFIGS[0].with_name("pgrd-2d.toml"), lidc_root,
                  **{"model.init_from": str(folder), "model.prior_run": "", "model.config.dds_weight": 0.0})
    net = build_task(no_dds, model_config(no_dds, ds)).net
    assert net.dds_heads is None and any(k.startswith("dds_heads.") for k in shipped)
    init_from_model(net, folder)
    assert all(torch.equal(v, shipped[k].to(v.dtype)) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", ["hsrdiff-light", "baseline-unet"])
def test_loss_falls_on_a_fixed_batch(name, lidc_root):
    cfg = tiny(CONFIGS[0].with_name(f"{name}.toml"), lidc_root)
    ds = build_dataset(cfg["data"], "val", str(lidc_root))
    torch.manual_seed(0)
    task = build_task(cfg, model_config(cfg, ds))
    image = torch.stack([ds[i]["image"] for i in range(2)])
    labels, _ = pick_annotation(torch.stack([ds[i]["annotations"] for i in range(2)]),
                                torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(task.params, lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(1)  # the same timesteps and noise every step: only the weights change
        loss = task.loss(task.net, image, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def _args(run: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS[0].with_name("hsrdiff.toml")), "--data", str(root), "--out", str(run),
            "--quiet", "--seed", "3",
            "--override", "model.preset=\"tiny\"", "--override", "data.dataset=\"lidc\"",
            "--override", "data.split=\"val\"", "--override", "data.size=16",
            "--override", "data.train_limit=4", "--override", "data.val_limit=2",
            "--override", "data.foreground_only=true",
            "--override", "train.batch_size=2", "--override", "train.num_workers=0",
            "--override", "train.steps=4", "--override", "train.checkpoint_every=100",
            "--override", "validation.images=2", "--override", "validation.samples=2",
            "--override", "validation.every=2", "--override", "validation.batch_size=2",
            "--override", "validation.sampler={method = \"ddim\", steps = 2}", *extra]


@pytest.fixture(scope="module")
def resumed_run(lidc_root, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("resume")
    whole, parts = base / "whole", base / "parts"
    assert main(_args(whole, lidc_root)) == 0
    assert main(_args(parts, lidc_root, "--max-steps", "2")) == 0        # "killed" after step 2
    assert ck.load(parts / ck.LAST)["step"] == 2
    assert main(_args(parts, lidc_root, "--resume")) == 0
    return whole, parts


def test_resume_continues_the_step_count_and_reproduces_the_run(resumed_run):
    whole, parts = resumed_run
    a, b = ck.load(whole / ck.LAST), ck.load(parts / ck.LAST)
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    va = (whole / ck.VAL_LOG).read_text().splitlines()
    vb = (parts / ck.VAL_LOG).read_text().splitlines()
    assert va == vb and len(va) == 2                                      # validations at steps 2 and 4
    assert "--resume" in ck.read_config(parts)["command"]


def test_export_samples_through_the_engine_and_the_cli(resumed_run, lidc_root, tmp_path):
    from DiffSegUncertaintyLib.engine.files.modelfile import load_model
    from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, sample
    run = resumed_run[0]
    folder = export_run(run, tmp_path / "models" / "hsrdiff-test")
    model, card = load_model(folder)
    best = ck.load(run / ck.BEST)
    assert card["metrics"]["values"]["ged"] == pytest.approx(best["metrics"]["ged"])
    assert card["training"]["step"] == best["step"] and "training.train" in card["training"]["command"]
    assert card["input"]["size"] == [16, 16] and card["classes"] == ["background", "nodule"]
    assert card["input"]["roi_required"] is True  # LIDC models are crop models
    from training.data.lidc import CT_PREPROCESSING, TERMINOLOGY
    assert card["input"]["preprocessing"] == CT_PREPROCESSING and card["terminology"] == TERMINOLOGY
    image = torch.rand(1, 1, 16, 16)
    y0 = sample(model, image, 2, SamplerConfig(method="ddim", steps=2), seed=0).y0
    assert y0.shape == (1, 2, 2, 16, 16) and torch.isfinite(y0).all()

    exe = Path(sys.executable).with_name("diffseg")
    if not exe.exists():
        pytest.skip("no diffseg command installed")
    import SimpleITK as sitk
    raw = np.load(lidc_root / "val.npz")["images"][:2, 56:72, 56:72].astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(tmp_path / "ct.nrrd"))
    proc = subprocess.run([str(exe), "sample", str(tmp_path / "ct.nrrd"), "--model", str(folder),
                           "--output", str(tmp_path / "out"), "--samples", "2", "--steps", "2",
                           "--roi", "0,0,0,16,16,2", "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "hypotheses.seg.nrrd").exists() and summary


def test_export_records_the_chosen_sampler_and_evaluated_metrics(resumed_run, lidc_root, tmp_path):
    from DiffSegUncertaintyLib.engine import cli
    from DiffSegUncertaintyLib.engine.files.modelfile import read_card
    run = resumed_run[0]
    folder = export_run(run, tmp_path / "m")
    with np.load(lidc_root / "val.npz") as z:
        np.savez(tmp_path / "few.npz", images=z["images"][:2], masks=z["masks"][:2])
    assert cli.main(["evaluate", "--model", str(folder), "--data", str(tmp_path / "few.npz"), "--samples", "2",
                     "--steps", "2", "--device", "cpu", "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    from training import export
    assert export.main(["--run", str(run), "--output", str(tmp_path / "m"), "--sampler", "ddim", "--steps", "7",
                        "--eta", "1", "--metrics", str(tmp_path / "eval" / "metrics.json")]) == 0
    card = read_card(tmp_path / "m")
    assert card["sampling"]["method"] == "ddim" and card["sampling"]["steps"] == 7
    assert card["sampling"]["eta"] == 1.0  # the stochastic sampler chosen on val (docs/decisions.md)
    assert card["metrics"]["source"] == "diffseg evaluate" and card["metrics"]["images"] == 2
    assert card["metrics"]["values"]["ged"] == doc["summary"]["ged"]["mean"]


def test_export_carries_the_configs_note_into_the_card(resumed_run, tmp_path):
    import shutil

    from DiffSegUncertaintyLib.engine.files.modelfile import read_card
    run = shutil.copytree(resumed_run[0], tmp_path / "run")
    assert "note" not in read_card(export_run(run, tmp_path / "plain"))["training"]
    info = json.loads((run / "config.json").read_text())
    info["config"]["note"] = "CPU-trained: a small preset"
    (run / "config.json").write_text(json.dumps(info))
    assert read_card(export_run(run, tmp_path / "noted"))["training"]["note"] == "CPU-trained: a small preset"


def test_export_refuses_runs_that_are_not_diffusion_models(prior_run, tmp_path):
    with pytest.raises(ValueError, match="PGRD prior"):
        export_run(prior_run, tmp_path / "m")


def test_overrides_and_errors(tmp_path, capsys):
    cfg = load_config(CONFIGS[0].with_name("hsrdiff.toml"),
                      ["data.size=64", "train.lr=3e-4", "validation.sampler={method = \"ddpm\"}",
                       "model.config.x0_head=false", "name=bare-word"])
    assert cfg["data"]["size"] == 64 and cfg["train"]["lr"] == 3e-4
    assert cfg["validation"]["sampler"] == {"method": "ddpm"} and cfg["model"]["config"]["x0_head"] is False
    assert cfg["name"] == "bare-word" and cfg["data"]["dataset"] == "lidc"
    with pytest.raises(ValueError, match="key.path=value"):
        load_config(CONFIGS[0], ["nonsense"])
    code = main(["--config", str(CONFIGS[0].with_name("hsrdiff.toml")), "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "DIFFSEG_LIDC" in capsys.readouterr().err


# The Table 6 configs spell out their switches for readability; the engine's ABLATIONS table is the
# definition. They must not drift apart.
TABLE6_ROWS = {"hsrdiff-t6-eps": "eps", "hsrdiff-t6-eps-fg": "eps+fg", "hsrdiff-t6-eps-fg-fh": "eps+fg+Fh",
               "hsrdiff-t6-x0-eps": "eps+x0+fg+Fh", "hsrdiff-t6-dual-fixed": "dual", "hsrdiff": "srdiff"}


@pytest.mark.parametrize("config_name,row", sorted(TABLE6_ROWS.items()))
def test_table6_configs_match_engine_ablations(config_name, row):
    from DiffSegUncertaintyLib.engine.networks.hsrdiff import ABLATIONS, PRESETS

    from training.train import load_config

    cfg = load_config(Path(__file__).parents[2] / "training" / "configs" / f"{config_name}.toml")
    switches = cfg["model"].get("config", {})
    defaults = PRESETS[cfg["model"]["preset"]]
    effective = {k: switches.get(k, defaults[k]) for k in set(switches) | set(ABLATIONS[row])}
    expected = {k: ABLATIONS[row].get(k, defaults[k]) for k in effective}
    assert effective == expected


def test_ema_warmup_forgets_the_initial_weights():
    from torch.optim.swa_utils import AveragedModel

    from training.train import ema_with_warmup

    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.999), use_buffers=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # the first update copies: the EMA starts at 1
    with torch.no_grad():
        net.weight.fill_(0.0)
    for _ in range(600):
        ema.update_parameters(net)
    w = float(ema.module.weight.detach())
    # decay_n = (1 + n) / (10 + n): the weight of the start is prod_{n=1}^{600} decay_n = 10! * 601 / 610! ...
    expected = float(np.prod([(1 + n) / (10 + n) for n in range(1, 601)]))
    assert w == pytest.approx(expected, rel=1e-4) and w < 1e-15
    # a fixed 0.999 would have kept 0.999^600 = 0.55 of the random start


def test_warm_start_copies_a_model_folder_and_refuses_another_architecture(resumed_run, lidc_root, tmp_path):
    """model.init_from: the run starts from the folder's weights (float16 ones included), and a folder
    of another architecture is refused before any step."""
    from safetensors.torch import load_file
    from training.train import init_from_model
    folder = export_run(resumed_run[0], tmp_path / "m", half=True)
    info = ck.read_config(resumed_run[0])
    task = build_task(info["config"], info["architecture"])
    init_from_model(task.net, folder)
    shipped = load_file(str(folder / "model.safetensors"))
    for k, v in task.net.state_dict().items():
        assert torch.equal(v, shipped[k].to(v.dtype)), k
    other = load_config(CONFIGS[0].with_name("hsrdiff.toml"), {"model.preset": "hsrdiff-small", "data": dict(DATA)})
    with pytest.raises((ValueError, RuntimeError)):
        init_from_model(build_task(other, model_config(other, build_dataset(DATA, "val", str(lidc_root)))).net, folder)
    with pytest.raises(FileNotFoundError, match="init_from"):
        init_from_model(task.net, tmp_path)


def test_learning_rate_warms_up_then_decays_on_a_cosine():
    from training.train import learning_rate
    t = {"lr": 1e-3, "warmup_steps": 10, "lr_schedule": "cosine"}
    assert learning_rate(t, 0, 100) == pytest.approx(1e-4 * 0.5 * (1 + np.cos(0)))
    assert learning_rate(t, 50, 100) == pytest.approx(0.5e-3)
    assert learning_rate(t, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate({**t, "lr_schedule": "constant"}, 50, 100) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate({**t, "lr_schedule": "step"}, 5, 100)


def test_cpu_bf16_autocast_trains_close_to_fp32(lidc_root, tmp_path, monkeypatch, capsys):
    """train.cpu_amp: the same 2 steps in bf16 autocast give finite losses within bf16 rounding of fp32's
    (the CPU's native bf16 forced on: torch emulates it where missing); on a CPU without native bf16 the
    option trains in fp32, bit for bit as without it, and says so."""
    import training.train as tr
    path = CONFIGS[0].with_name("hsrdiff.toml")
    a = train(tiny(path, lidc_root, **{"validation.every": 0}), tmp_path / "a", data_root=str(lidc_root), quiet=True)
    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: True)
    b = train(tiny(path, lidc_root, **{"validation.every": 0, "train.cpu_amp": True}), tmp_path / "b",
              data_root=str(lidc_root), quiet=True)
    assert np.isfinite(b["losses"]).all()
    assert b["losses"][0] == pytest.approx(a["losses"][0], rel=0.05)
    assert b["losses"][0] != a["losses"][0]  # autocast really ran in bf16
    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: False)
    capsys.readouterr()
    c = train(tiny(path, lidc_root, **{"validation.every": 0, "train.cpu_amp": True}), tmp_path / "c",
              data_root=str(lidc_root), quiet=True)
    assert c["losses"] == a["losses"]
    assert "no native bf16" in capsys.readouterr().err
