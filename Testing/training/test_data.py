"""The loaders: real LIDC and the glioma example, and every other layout on small synthetic files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffSegUncertaintyLib.engine.analysis.evaluation import edge_pad, windows
from training.data import DataMissing, build_dataset, pick_annotation
from training.data.cityscapes import FLIPS, Cityscapes
from training.data.instance import Instance
from training.data.lidc import LIDC
from training.data.mslesion import MSLesion
from training.data.brats import BraTS
from training.data.volumes import split_of


def _write(path, array, spacing=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    if spacing:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


# -- LIDC ------------------------------------------------------------------------------------------

def test_lidc_2d_items(lidc_root):
    ds = LIDC(lidc_root, "val", size=32, limit=6)
    item = ds[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["annotations"].shape == (4, 32, 32) and item["annotations"].dtype == torch.int64
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert set(item["annotations"].unique().tolist()) <= {0, 1}
    raw = np.load(lidc_root / "val.npz")["masks"][3, :, 48:80, 48:80]   # centre crop of 128
    assert np.array_equal(item["annotations"].numpy(), raw)


def test_pick_annotation_returns_one_of_the_readings(lidc_root):
    ds = LIDC(lidc_root, "val", size=32, foreground_only=True, limit=4)
    ann = torch.stack([ds[i]["annotations"] for i in range(4)])          # (4 items, 4 readings, H, W)
    seen = set()
    for step in range(40):
        labels, idx = pick_annotation(ann, torch.Generator().manual_seed(step))
        for b in range(4):
            assert torch.equal(labels[b], ann[b, idx[b]])
        seen.update(idx.tolist())
        again, idx2 = pick_annotation(ann, torch.Generator().manual_seed(step))
        assert torch.equal(idx, idx2)                                   # seeded per step: resumable
    assert seen == {0, 1, 2, 3}
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 4)                         # weights are honoured
    assert pick_annotation(ann, torch.Generator().manual_seed(0), w)[1].tolist() == [2, 2, 2, 2]


def test_lidc_3d_stacks_are_consecutive_slices_of_one_nodule(lidc_root):
    ds = LIDC(lidc_root, "val", dims=3, size=32, depth=4, stride=2)
    assert len(ds) > 10
    for rows in ds.index:
        assert len({(ds.patient[r], int(ds.nodule[r])) for r in rows}) == 1
        steps = np.diff([int(ds.slice[r]) for r in rows])
        assert set(steps.tolist()) <= {0, 1}                             # 0 only where a short one is padded
        if len(set(rows)) == len(rows):
            assert (steps == 1).all()
    item = ds[0]
    assert item["image"].shape == (1, 4, 32, 32) and item["annotations"].shape == (4, 4, 32, 32)
    assert len(LIDC(lidc_root, "val", dims=3, depth=8, pad="skip").index) < len(LIDC(lidc_root, "val", dims=3, depth=8).index)


def test_window_helpers():
    assert windows(5, 4, 2) == [[0, 1, 2, 3], [1, 2, 3, 4]]
    assert windows(8, 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert edge_pad(2, 5) == [0, 0, 1, 1, 1]


def test_missing_data_says_what_to_put_there(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSEG_LIDC", str(tmp_path / "nowhere"))
    with pytest.raises(DataMissing, match="DIFFSEG_LIDC"):
        build_dataset({"dataset": "lidc"}, "train")
    with pytest.raises(DataMissing, match="train.npz"):
        LIDC(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset({"dataset": "mnist"}, "train", str(tmp_path))


# -- BraTS and the glioma example ------------------------------------------------------------------

def test_glioma_example_five_raters_old_labels_mapped(glioma_root):
    ds = build_dataset({"dataset": "glioma-example", "dims": 3, "size": 32, "fit": "resize"}, "all")
    item = ds[0]
    assert item["image"].shape == (4, 32, 32, 32)
    assert item["annotations"].shape == (5, 32, 32, 32)
    assert set(item["annotations"].unique().tolist()) == {0, 1, 2, 3}   # 4 -> 3
    assert ds.num_classes == 4 and ds.in_channels == 4


def test_brats2024_layout(tmp_path):
    rng = np.random.default_rng(0)
    for case in ("BraTS-GLI-00000-000", "BraTS-GLI-00001-000"):
        for m in ("t1c", "t1n", "t2f", "t2w"):
            vol = np.zeros((12, 16, 16), np.int16)
            vol[2:10, 3:13, 3:13] = rng.integers(100, 200, (8, 10, 10))
            _write(tmp_path / case / f"{case}-{m}.nii.gz", vol)
        seg = np.zeros((12, 16, 16), np.uint8)
        seg[5:7, 6:9, 6:9] = 3
        seg[4, 6, 6] = 2
        _write(tmp_path / case / f"{case}-seg.nii.gz", seg)
    ds = BraTS(tmp_path, split="all", dims=3, size=[8, 16, 16])
    item = ds[0]
    assert len(ds) == 2 and item["image"].shape == (4, 8, 16, 16) and item["annotations"].shape == (1, 8, 16, 16)
    brain = item["image"][0] != 0
    assert abs(float(item["image"][0][brain].mean())) < 1e-4                  # z-scored over the brain
    assert int((item["annotations"] == 3).sum()) == 18                        # labels kept (new naming)
    ds2 = BraTS(tmp_path, split="all", dims=2, size=16)
    assert len(ds2) == 2 * 3 and ds2[0]["image"].shape == (4, 16, 16)        # z = 4, 5, 6 per case
    with pytest.raises(ValueError, match="num_classes"):
        BraTS(tmp_path, split="all", num_classes=3)[0]


# -- INSTANCE, MS-Lesion, Cityscapes ---------------------------------------------------------------

def test_instance_layout_and_hu_window(tmp_path):
    ct = np.full((4, 16, 16), -1000, np.int16)
    ct[:, 4:12, 4:12] = 30
    ct[1, 6:8, 6:8] = 70
    lab = np.zeros((4, 16, 16), np.uint8)
    lab[1, 6:8, 6:8] = 1
    for case in [f"case{i:03d}" for i in range(12)]:
        _write(tmp_path / "data" / f"{case}.nii.gz", ct)
        _write(tmp_path / "label" / f"{case}.nii.gz", lab)
    ds = Instance(tmp_path, split="all", size=16)
    assert len(ds) == 12                                                     # one foreground slice each
    img = ds[0]["image"][0]
    assert float(img[0, 0]) == 0.0 and abs(float(img[6, 6]) - 90 / 140) < 1e-6
    assert ds.preprocessing == {"kind": "window", "lower": -20.0, "upper": 120.0}
    names = [f"case{i:03d}" for i in range(12)]
    assert sum(len(Instance(tmp_path, split=s, size=16)) for s in ("train", "val", "test")) == 12
    assert {split_of(n) for n in names} <= {"train", "val", "test"}


@pytest.mark.parametrize("flat", [False, True])
def test_mslesion_layouts_two_raters(tmp_path, flat):
    for subject in ("training01", "training02"):
        scan = f"{subject}_01"
        img_dir = tmp_path / subject / ("" if flat else "preprocessed")
        mask_dir = tmp_path / subject / ("" if flat else "masks")
        for m in ("flair", "mprage", "pd", "t2"):
            vol = np.zeros((3, 8, 8), np.float32)
            vol[:, 2:6, 2:6] = 1 + np.arange(16).reshape(4, 4)
            _write(img_dir / (f"{scan}_{m}.nii.gz" if flat else f"{scan}_{m}_pp.nii"), vol)
        for k, box in ((1, (slice(3, 5), slice(3, 5))), (2, (slice(3, 6), slice(3, 6)))):
            mk = np.zeros((3, 8, 8), np.uint8)
            mk[(1, *box)] = 1
            _write(mask_dir / f"{scan}_mask{k}.nii", mk)
    train = MSLesion(tmp_path, "train", size=8)
    val = MSLesion(tmp_path, "val", size=8)
    assert len(train) == 3 and len(val) == 3                                 # brain slices of one subject each
    item = train[1]
    assert item["image"].shape == (4, 8, 8) and item["annotations"].shape == (2, 8, 8)
    assert item["annotations"].sum((1, 2)).tolist() == [4, 9]


def test_cityscapes_flip_protocol(tmp_path):
    for split in ("train",):
        stem = "aachen_000000_000019"
        rgb = np.random.default_rng(0).integers(0, 255, (8, 16, 3)).astype(np.uint8)
        img = sitk.GetImageFromArray(rgb, isVector=True)
        (tmp_path / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        sitk.WriteImage(img, str(tmp_path / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png"))
        tid = np.full((8, 16), 255, np.uint8)
        tid[:2], tid[2:4], tid[4:6], tid[6, :8] = 0, 1, 11, 13
        _write(tmp_path / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelTrainIds.png", tid)
    ds = Cityscapes(tmp_path, "train", size=[8, 16])
    item = ds[0]
    assert ds.num_classes == 25 and item["image"].shape == (3, 8, 16)
    assert item["annotations"].shape == (32, 8, 16)
    assert abs(float(item["weights"].sum()) - 1) < 1e-12
    ann, w = item["annotations"], item["weights"]
    none = ann[0]                                                            # no flip: trainId + 1, void 0
    assert none[0, 0] == 1 and none[2, 0] == 2 and none[7, 0] == 0
    sidewalk_flipped = (ann[:, 2, 0] == 20)
    assert abs(float(w[sidewalk_flipped].sum()) - 8 / 17) < 1e-9
    person_flipped = (ann[:, 4, 0] == 21)
    assert abs(float(w[person_flipped].sum()) - 7 / 17) < 1e-9
    assert [f[0] for f in FLIPS] == [1, 11, 13, 8, 0]
    assert not Cityscapes(tmp_path, "train", size=[8, 16], flip=False)[0].get("weights")


def test_evaluation_stacks_are_the_3d_loaders_items(lidc_root):
    """diffseg evaluate scores a 3D model on the stacks the 3D loader trains on (one stacking code)."""
    from DiffSegUncertaintyLib.engine.analysis.evaluation import load_multireader_npz
    ds = LIDC(lidc_root, "val", dims=3, size=None, depth=8)
    stacks = load_multireader_npz(lidc_root / "val.npz").stacks(8)
    assert len(stacks) == len(ds) and stacks.images.shape[1:] == (8, 128, 128)
    for i in (0, len(ds) // 2, len(ds) - 1):
        item = ds[i]
        np.testing.assert_allclose(stacks.images[i] / 255, item["image"][0].numpy(), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(stacks.masks[i], item["annotations"].numpy())
        assert int(stacks.slice[i]) == int(ds.slice[ds.index[i][-1]])
