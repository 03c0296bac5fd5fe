"""hypotheses.seg.nrrd through slicerio (engine/files/segfile.py): only the ROI's box is stored, on the input's
grid, with a standard terminology per segment, and Slicer's own reader puts it back where it belongs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import slicerio.segmentation

from DiffSegUncertaintyLib.engine import testing
from DiffSegUncertaintyLib.engine.files.segfile import ijk_to_lps, read_layers, write_seg
from DiffSegUncertaintyLib.engine.files.volumes import Segment, read_inputs

NODULE = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
          "category": ["SCT", "49755003", "Morphologically Altered Structure"],
          "type": ["SCT", "27925004", "Nodule"],
          "anatomicContextName": "Anatomic codes - DICOM master list",
          "anatomicRegion": ["SCT", "39607008", "Lung"]}


def _case(tmp_path, orientation="permuted-flipped-anisotropic"):
    geo = testing.ORIENTATIONS[orientation]
    path = testing.write_volume(tmp_path / "ct.nrrd", np.zeros((12, 20, 24), np.int16), **geo)
    geometry = read_inputs([path]).geometry
    start, stop = [5, 3, 2], [17, 15, 9]                        # index (i, j, k)
    rng = np.random.default_rng(0)
    box = (7, 12, 12)                                           # array (k, j, i) of the box
    masks = [rng.random(box) > 0.7 for _ in range(3)]
    masks[2][:] = False                                         # an empty hypothesis
    segs = [Segment(f"hypothesis_{n + 1:02d}", f"Hypothesis {n + 1:02d}", m, (0.1 * n, 0.5, 0.9),
                    {"DiffSeg.Hypothesis": str(n + 1), "DiffSeg.Class": "nodule"}) for n, m in enumerate(masks)]
    return path, geometry, start, stop, masks, segs


def test_only_the_box_is_stored_on_the_input_grid(tmp_path):
    path, geometry, start, stop, masks, segs = _case(tmp_path)
    out = tmp_path / "h.seg.nrrd"
    write_seg(segs, geometry, start, out, {"nodule": NODULE})
    seg = slicerio.read_segmentation(str(out))
    assert seg["voxels"].shape == (3, 12, 12, 7)                # (layer, i, j, k): the box only
    assert seg["referenceImageExtentOffset"] == start
    # the box's first voxel sits where the input's voxel `start` is, with the input's axes and spacing
    m = np.asarray(seg["ijkToLPS"])
    itk = sitk.ReadImage(str(path))  # ITK's own transform of the input file
    np.testing.assert_allclose(m[:3, 3], itk.TransformIndexToPhysicalPoint(start), atol=1e-6)
    np.testing.assert_allclose(m, ijk_to_lps(geometry, start), atol=1e-9)
    np.testing.assert_allclose(m[:3, :3] @ [1, 0, 0], np.asarray(itk.TransformIndexToPhysicalPoint(
        [start[0] + 1, start[1], start[2]])) - m[:3, 3], atol=1e-6)
    for n, s in enumerate(seg["segments"]):
        assert s["id"] == f"hypothesis_{n + 1:02d}" and s["layer"] == n and s["labelValue"] == 1
        assert s["extent"] == [0, 11, 0, 11, 0, 6]
        assert slicerio.segmentation.terminology_entry_matches(s["terminology"], NODULE)
        assert s["tags"]["DiffSeg.Class"] == "nodule"
    layers, offset = read_layers(out)
    assert offset == start and all(np.array_equal(layers[n] > 0, masks[n]) for n in range(3))
    full, _ = read_layers(out, geometry)                        # put back on the whole grid
    assert full.shape == (3, 12, 20, 24)
    assert np.array_equal(full[:, 2:9, 3:15, 5:17], layers) and full.sum() == layers.sum()
    # the same segments give the same bytes (pynrrd's time stamp is dropped)
    write_seg(segs, geometry, start, tmp_path / "again.seg.nrrd", {"nodule": NODULE})
    assert (tmp_path / "again.seg.nrrd").read_bytes() == out.read_bytes()
    # a class without a term gets none; a box leaving the grid is refused
    write_seg(segs[:1], geometry, start, tmp_path / "plain.seg.nrrd")
    assert "terminology" not in slicerio.read_segmentation(str(tmp_path / "plain.seg.nrrd"))["segments"][0]
    with pytest.raises(ValueError, match="leaves the grid"):
        write_seg(segs, geometry, [15, 3, 2], tmp_path / "x.seg.nrrd")


def test_slicer_reads_it_back_onto_the_input_volume(tmp_path):
    """slicer-core's own storage node: each segment exported onto the input volume equals the mask at
    its place in the full grid, and the terminology reaches the segment."""
    slicer = pytest.importorskip("slicer")
    import vtk
    import slicer.util

    from DiffSegUncertaintyLib.scene.app import create_headless_app
    headless = create_headless_app()  # real MRML: Slicer's colour, volumes and segmentations logics
    scene, logics = headless.scene, {"Volumes": headless.volumes, "Segmentations": headless.segmentations}

    path, geometry, start, stop, masks, segs = _case(tmp_path)
    out = tmp_path / "h.seg.nrrd"
    write_seg(segs, geometry, start, out, {"nodule": NODULE})
    volume = logics["Volumes"].AddArchetypeVolume(str(path), "ct", 0, vtk.vtkStringArray())
    node = logics["Segmentations"].LoadSegmentationFromFile(str(out), False, "hyp")
    assert node is not None
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 3
    tag = vtk.mutable("")
    assert seg.GetSegment("hypothesis_01").GetTag("TerminologyEntry", tag) and "27925004" in str(tag)
    full, _ = read_layers(out, geometry)
    for n in range(3):
        names = vtk.vtkStringArray()
        names.InsertNextValue(f"hypothesis_{n + 1:02d}")
        label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert logics["Segmentations"].ExportSegmentsToLabelmapNode(node, names, label, volume)
        got = slicer.util.arrayFromVolume(label)
        assert got.shape == full.shape[1:] and np.array_equal(got > 0, full[n] > 0), n
    assert full[0].any()
    assert sitk.ReadImage(str(path)).GetSize() == (24, 20, 12)
