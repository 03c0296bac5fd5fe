"""The real glioma MRI (4 sequences, 155 x 240 x 240, int16 NIfTI) through a tiny untrained 3D model:
reading, preprocessing, the physical ROI, 3D sliding window and full-size outputs on the input grid.
Speed: only an ROI around the tumour is sampled (2 hypotheses, 2 steps, 32^3 patches without overlap);
the outputs are still full size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import MAPS, grid, summary

from DiffSegUncertaintyLib.engine import testing

SEQUENCES = ("t1", "t1c", "t2", "fla")


def glioma_folder() -> Path | None:
    env = os.environ.get("DIFFSEG_GLIOMA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "glioma-example"
    return folder if all((folder / f"{s}.nii.gz").is_file() for s in SEQUENCES) else None


@pytest.mark.slow
def test_glioma_four_channels_3d(tmp_path):
    folder = glioma_folder()
    if folder is None:
        pytest.skip("glioma example not found (set DIFFSEG_GLIOMA to the folder with t1/t1c/t2/fla.nii.gz)")
    model = testing.make_tiny_model_folder(tmp_path / "glioma-tiny", spatial_dims=3, in_channels=4,
                                           num_classes=4, size=[32, 32, 32],
                                           preprocessing={"kind": "zscore", "nonzero": True})
    inputs = [folder / f"{s}.nii.gz" for s in SEQUENCES]
    # origin (0, -239, 0), identity direction, 1 mm: x = i, y = j - 239, z = k (LPS mm)
    proc = testing.run_diffseg("sample", *inputs, "--model", model, "--output", tmp_path / "out",
                               "--samples", "2", "--steps", "2", "--overlap", "0", "--device", "cpu",
                               "--roi-mm=56,-183,56,103,-120,103", timeout=500)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    want = grid(inputs[0])
    assert want[0] == (240, 240, 155)
    for name in MAPS:
        assert grid(out / name) == want, name
    s = summary(out)
    assert s["roi"] == {"start": [56, 56, 56], "stop": [104, 120, 104]}
    assert s["classes"] == ["background", "class 1", "class 2", "class 3"] and len(s["hypotheses"]) == 2
    from DiffSegUncertaintyLib.engine.files.segfile import read_layers
    layers, start = read_layers(out / "hypotheses.seg.nrrd")  # only the ROI's box is stored
    assert start == [56, 56, 56] and layers.shape == (2 * 3, 48, 64, 48) and layers.any()
    ent = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "entropy.nrrd")))
    assert ent.max() <= np.log(4) + 1e-6 and ent[56:104, 56:120, 56:104].any() and not ent[:, :56].any()
    for h in s["hypotheses"]:
        assert h["foreground_voxels"] == sum(h["class_voxels"].values()) <= 48 * 64 * 48
