"""docs/screenshot.png: the module's panel after a real run, rendered by the Slicer stand-in (PySide6,
offscreen), beside the Red slice view rendered through MRML's own vtkMRMLSliceLogic (background = the CT,
foreground = the entropy map with the module's threshold and opacity; segmentations are drawn by Slicer's
displayable managers, which need a render window, so the consensus outline is not in this view).

    .venv/bin/python Testing/module/screenshot.py ../shared/data/lidc-ct/LIDC-IDRI-0001/ct.nrrd docs/screenshot.png

Not a test: the shipped HSRDiff model, 8 hypotheses, DDIM 10 steps, on the 4 slices (10 mm) of the
model-sized ROI around the nodule.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "scene")]

NODULE_LPS = (56.3, 86.4, -115.9)  # LIDC-IDRI-0001 readers' centre of mass (data README)


def main(ct: str, out: str) -> None:
    import numpy as np
    from vtk.util.numpy_support import vtk_to_numpy

    import standin
    from module_helpers import MODULE_FILE, add_slice_views
    from scene_helpers import load_volume

    from DiffSegUncertaintyLib.scene.app import create_headless_app

    work = Path(tempfile.mkdtemp(prefix="diffseg-shot-"))
    headless = create_headless_app(cache_dir=str(work / "cache"))
    slicer = standin.install(headless, str(work / "settings"))
    import qt
    views = add_slice_views(headless.scene)
    volume = load_volume(headless, Path(ct), "LIDC-IDRI-0001 CT")
    display = volume.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(1500, -600)  # lung window
    loaded = standin.load_module(MODULE_FILE)
    w = loaded.widget
    w.ui.modelSelector.setProperty("currentIndex", w.ui.modelSelector.findText("lidc-hsrdiff-small-cpu"))
    w.ui.inputVolumeSelector.setCurrentNode(volume)
    w.ui.deviceComboBox.setProperty("currentIndex", 2)
    ras = (-NODULE_LPS[0], -NODULE_LPS[1], NODULE_LPS[2])
    w.ui.placeRoiButton.click()
    w.placingPoint.AddControlPointWorld(list(ras))
    roi = w.ui.roiSelector.currentNode()
    size = list(roi.GetSize())
    roi.SetSize(size[0], size[1], 10.0)  # 4 slices around the centre: a minute on 2 CPU cores
    w.ui.samplesSpinBox.setProperty("value", 8)
    w.ui.stepsSpinBox.setProperty("value", 10)
    w.ui.sampleButton.click()
    start = time.monotonic()
    while w.logic.scene.busy:
        slicer.app.processEvents()
        time.sleep(0.1)
    print(f"run: {time.monotonic() - start:.0f} s; {w.ui.statusLabel.text() if callable(w.ui.statusLabel.text) else w.ui.statusLabel.text}")
    run = w.lastRun
    assert run is not None
    w.ui.consensusSpinBox.setProperty("value", 4)

    # the panel, as the stand-in draws it
    panel = loaded.parentWidget
    panel.resize(420, 1100)
    panel.show()
    slicer.app.processEvents()
    left = panel.grab().toImage()

    # the Red view through MRML's slice logic
    red, _ = views["Red"]
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(headless.app_logic)
    logic.SetMRMLScene(headless.scene)
    logic.SetSliceNode(red)
    red.SetDimensions(512, 512, 1)
    red.SetFieldOfView(70, 70, 1)
    red.JumpSliceByCentering(*ras)
    logic.UpdateImageData()
    connection = logic.GetImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    dims = image.GetDimensions()
    rgba = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[1], dims[0], -1)[::-1, :, :3]
    rgba = np.ascontiguousarray(rgba.astype(np.uint8))
    view = qt.QImage(rgba.data, dims[0], dims[1], 3 * dims[0], qt.QImage.Format_RGB888).copy()
    view = view.scaled(left.height(), left.height())

    canvas = qt.QImage(left.width() + view.width(), left.height(), qt.QImage.Format_RGB888)
    canvas.fill(qt.QColor("white"))
    painter = qt.QPainter(canvas)
    painter.drawImage(0, 0, left)
    painter.drawImage(left.width(), 0, view)
    painter.fillRect(left.width(), 0, view.width(), 28, qt.QColor(0, 0, 0))
    painter.setPen(qt.QColor("white"))
    threshold = run.maps["entropy"].GetDisplayNode().GetLowerThreshold()
    opacity = views["Red"][1].GetForegroundOpacity()
    painter.drawText(left.width() + 10, 19, f"Red slice view through vtkMRMLSliceLogic: CT (lung window) + entropy "
                     f"(Slicer's Inferno, hidden below {threshold:.3f}, opacity {opacity:.1f})")
    painter.end()
    canvas.save(out)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
