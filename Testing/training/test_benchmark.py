"""The sampling benchmark (issue 7): its paper-faithful reference must draw the *same* hypotheses as
the project's sampler when fed the same noise, so the speed-up compares like with like; and the script
must run end to end (tiny presets, a couple of steps) and write its JSON."""

from __future__ import annotations

import json
import time

import torch

from DiffSegUncertaintyLib.engine.networks import registry
from DiffSegUncertaintyLib.engine.sampling.sampler import SamplerConfig, sample
from training.bench import reference


def _tiny(method: str, **overrides):
    torch.manual_seed(0)
    return registry.build_model(method, registry.preset_config(method, "tiny", **overrides)).eval()


def test_hsrdiff_reference_matches_sampler():
    started = time.perf_counter()
    model = _tiny("hsrdiff", schedule={"kind": "linear", "T": 40, "scale_to_T": True})
    image = torch.randn(1, 1, 16, 16)
    ref = reference.hsrdiff_paper_sample(model, image, 3, seed=7)
    ours = sample(model, image, 3, SamplerConfig(method="ddpm", steps=None, variance="posterior"), seed=7).y0
    assert ref.shape == ours.shape == (1, 3, 2, 16, 16)
    torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-4)
    # different noise gives different hypotheses: the match above is not vacuous
    assert (ours[0, 0] - ours[0, 1]).abs().max() > 1e-2
    assert time.perf_counter() - started < 15


def test_pgrd_reference_matches_sampler():
    model = _tiny("pgrd")
    image = torch.randn(1, 1, 16, 16)
    ref = reference.pgrd_paper_sample(model, image, 3, steps=20, seed=3)
    ours = sample(model, image, 3, SamplerConfig(method="ddim", steps=20, eta=0.0, spacing="leading"),
                  seed=3).y0
    torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-4)
    assert reference.pgrd_paper_timesteps(1000, 300)[:2] == [898, 895]
    assert reference.pgrd_paper_timesteps(1000, 300) == model.schedule.timesteps(300, "leading")


def test_reference_recomputes_condition_every_step():
    """The paper-faithful baseline must call E_c once per step and hypothesis (no reuse)."""
    model = _tiny("hsrdiff", schedule={"kind": "linear", "T": 5, "scale_to_T": False})
    calls = []
    model.cond_encoder.register_forward_hook(lambda *a: calls.append(1))
    reference.hsrdiff_paper_sample(model, torch.randn(1, 1, 16, 16), 2)
    assert len(calls) == 2 * 5
    calls.clear()
    sample(model, torch.randn(1, 1, 16, 16), 2, SamplerConfig(method="ddpm"))
    assert len(calls) == 1


def test_benchmark_script_runs(tmp_path):
    from training import benchmark_sampling as bench
    out = tmp_path / "bench.json"
    rc = bench.main(["--cases", "tiny-hsrdiff", "--samples", "2", "--steps", "ddim:3",
                     "--measure", "per-step", "--measured-steps", "2", "--threads", "1",
                     "--no-gemm-peak", "--data", str(tmp_path / "missing.npz"), "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["sampler"] for r in rows} == {"project", "reference"}
    assert all(r["seconds"] > 0 and r["flops_per_eval"] > 0 for r in rows)
    assert all(r["quality"] == "no trained model" for r in rows)
    assert any(r["timing"] == "per-step x steps" for r in rows)


def test_chunk_sweep_and_precision_switches_run(tmp_path):
    from training import benchmark_sampling as bench
    out = tmp_path / "sweep.json"
    rc = bench.main(["--cases", "tiny-hsrdiff", "--samples", "2", "--steps", "ddim:3", "--skip-paper-steps",
                     "--reference", "off", "--precision", "bf16", "--channels-last", "--measure", "full",
                     "--threads", "1", "--no-gemm-peak", "--chunk-sweep", "1,2", "--chunk-sweep-work", "2",
                     "--sweep-steps", "ddim:3", "--data", str(tmp_path / "missing.npz"), "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    row = result["rows"][0]
    assert row["options"] == "autocast-bf16+channels-last" and row["precision"] == "bf16"
    assert row["timing"] == "measured" and row["chunk"] == 2
    sweep = result["chunk_sweep"]
    assert {(r["chunk"], r["precision"], r["options"]) for r in sweep} == {
        (c, p, o) for c in (1, 2) for p, o in (("fp32", "fp32 eager"), ("fp32", "channels-last"),
                                               ("bf16", "autocast-bf16"), ("bf16", "autocast-bf16+channels-last"))}
    assert all(r["per_step_s"] > 0 and r["relative_to_best"] >= 1.0 for r in sweep)
    assert min(r["relative_to_best"] for r in sweep) == 1.0


def _tiny_folder_and_data(tmp_path, roi=True):
    """A tiny untrained HSRDiff (T = 40, 16 x 16 input, marked as a crop model) and 3 images of 24 x 24
    with 2 readers each."""
    import numpy as np

    from DiffSegUncertaintyLib.engine.testing import make_tiny_model_folder
    folder = make_tiny_model_folder(tmp_path / "tiny", "hsrdiff", size=[16, 16],
                                    config={"schedule": {"kind": "linear", "T": 40, "scale_to_T": True}})
    if roi:
        card = json.loads((folder / "model.json").read_text())
        card["input"]["roi_required"] = True
        (folder / "model.json").write_text(json.dumps(card))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 24, 24)).astype(np.uint8)
    masks = np.zeros((3, 2, 24, 24), np.uint8)
    masks[:, 0, 9:15, 9:15] = 1
    masks[:, 1, 10:16, 8:14] = 1
    data = tmp_path / "val.npz"
    np.savez(data, images=images, masks=masks)
    return folder, data


def test_quality_study_on_a_tiny_model(tmp_path):
    from training.bench import quality
    folder, data = _tiny_folder_and_data(tmp_path)
    out = tmp_path / "q.json"
    rc = quality.main(["--model", str(folder), "--data", str(data), "--images", "2", "--samples", "3",
                       "--specs", "paper", "ddim:4", "ddim:3@bf16", "--bootstrap", "200", "--output", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["images"] == 2 and res["image_size"] == [16, 16]  # centre crop of a crop model, not a resize
    assert res["specs"] == ["ddpm:40", "ddim:4", "ddim:3@bf16"] and res["baseline"] == "ddpm:40"
    rows = res["rows"]
    assert rows["ddim:3@bf16"]["precision"] == "bf16" and rows["ddim:4"]["steps"] == 4
    base = rows["ddpm:40"]
    assert base["ged_verdict"] == "baseline" and base["vs_baseline"]["ged"]["mean"] == 0.0
    for spec in ("ddim:4", "ddim:3@bf16"):
        d = rows[spec]["vs_baseline"]["ged"]
        per = res["per_image"]
        want = sum(a - b for a, b in zip(per[spec]["ged"], per["ddpm:40"]["ged"])) / 2
        assert abs(d["mean"] - want) < 1e-12 and d["n"] == 2
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert 0 <= rows[spec]["ged"] <= 2 and 0 <= rows[spec]["dice"] <= 1
    assert (tmp_path / "q.md").read_text().startswith("| steps |")


def test_paired_difference_and_verdict():
    from training.bench.quality import paired, verdict
    base = [0.30, 0.20, 0.50, 0.40]
    d = paired([0.305, 0.203, 0.498, 0.402], base, boot=2000)
    assert abs(d["mean"] - 0.002) < 1e-12 and d["n"] == 4
    assert d["se"] > 0 and -0.01 <= d["ci95"][0] <= d["ci95"][1] <= 0.01
    assert verdict(d) == "equal"
    assert verdict(paired([v + 0.05 for v in base], base, boot=500)) == "worse"
    assert verdict(paired([v - 0.05 for v in base], base, boot=500)) == "better"
    noisy = paired([0.40, 0.10, 0.60, 0.31], base, boot=2000)   # mean +0.0025, large spread
    assert verdict(noisy) == "within (point)"
    assert paired([float("nan"), 0.2], [0.1, 0.1])["n"] == 1


def test_benchmark_quality_uses_the_crop_and_paired_differences(tmp_path):
    from training import benchmark_sampling as bench
    folder, data = _tiny_folder_and_data(tmp_path)
    out = tmp_path / "bench.json"
    rc = bench.main(["--cases", "tiny-hsrdiff", "--samples", "2", "--steps", "ddim:3", "--skip-paper-steps",
                     "--reference", "off", "--measure", "per-step", "--threads", "1", "--no-gemm-peak",
                     "--model", str(folder), "--data", str(data), "--quality-images", "2", "--output", str(out)])
    assert rc == 0
    q = json.loads(out.read_text())["quality"]
    assert q["status"] == "ok" and q["image_size"] == [16, 16] and q["images"] == 2
    assert list(q["project"]) == ["ddpm:40", "ddim:3"]
    assert q["project"]["ddim:3"]["ged_verdict"] in ("equal", "within (point)", "worse", "better", "undecided")
    assert "ged_vs_paper" in q["project"]["ddim:3"]


def test_quality_study_sees_what_diffseg_evaluate_sees(lidc_root):
    """A minmax CT card on the LIDC crops: the whole crop is preprocessed before the box (exactly x / 255)."""
    import numpy as np

    from training.bench.quality import load_data
    card = {"architecture": {"spatial_dims": 2},
            "input": {"size": [64, 64], "roi_required": True,
                      "preprocessing": {"kind": "minmax", "lower": -1000.0, "upper": 1400.0}}}
    data = load_data(lidc_root / "val.npz", card, 3)
    with np.load(lidc_root / "val.npz") as z:
        idx = np.linspace(0, len(z["images"]) - 1, 3).round().astype(int)
        images, masks = z["images"][idx], z["masks"][idx]
    assert data.box == (slice(32, 96), slice(32, 96))  # the ROI the pipeline samples, on the whole crop
    np.testing.assert_array_equal(data.images, images)  # preprocessed by the pipeline, as diffseg sample does
    np.testing.assert_array_equal(data.masks, masks[:, :, 32:96, 32:96])
