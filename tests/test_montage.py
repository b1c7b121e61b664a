"""The montage shows the lesion slices, a legend swatch per class and the
research notice, all inside the image, without matplotlib."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from hemoseg.inference.outputs import class_color, montage_slices, write_montage

NAMES = ["Epidural hemorrhage", "Intraparenchymal hemorrhage", "Intraventricular hemorrhage",
         "Subarachnoid hemorrhage", "Subdural hemorrhage", "Perihematomal edema"]


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_panels_legend_and_notice(tmp_path):
    display = np.full((6, 64, 64), 90, np.uint8)
    labels = np.zeros((6, 64, 64), np.uint8)
    labels[1:4, 20:40, 20:40] = 2
    shown = write_montage(display, labels, NAMES, tmp_path / "m.png", "study")
    assert shown == montage_slices(labels) == [1, 2, 3]
    img = _rgb(tmp_path / "m.png")
    assert img.shape[1] == 900  # three 300 px cells
    top, body = 40, 300
    legend = img[top + body:]
    for k in range(1, len(NAMES) + 1):  # every class has its exact swatch colour in the legend band
        assert (legend == class_color(k)).all(axis=-1).sum() >= 100, NAMES[k - 1]
    red = (legend[..., 0] > 120) & (legend[..., 1] < 60) & (legend[..., 2] < 60)
    assert red.sum() > 200  # the research notice
    panels = img[top:top + body]
    assert (np.abs(panels.astype(int) - class_color(2)).sum(-1) < 60).sum() > 200  # the lesion is drawn


def test_small_montage_wraps_the_notice_inside_the_image(tmp_path):
    display = np.full((1, 32, 32), 90, np.uint8)
    labels = np.zeros((1, 32, 32), np.uint8)
    write_montage(display, labels, NAMES, tmp_path / "m.png", "empty")
    img = _rgb(tmp_path / "m.png")
    assert img.shape[1] == 600
    red = (img[..., 0] > 120) & (img[..., 1] < 60) & (img[..., 2] < 60)
    rows = np.flatnonzero(red.any(axis=1))
    assert rows.size and np.ptp(rows) > 16  # two lines: it did not fit on one
    cols = np.flatnonzero(red.any(axis=0))
    assert cols.min() > 0 and cols.max() < img.shape[1] - 1


def test_montage_does_not_import_matplotlib(tmp_path):
    """matplotlib's import cost about a second of every `hemoseg predict`."""
    code = ("import sys, numpy as np; from hemoseg.inference.outputs import write_montage; "
            "lab = np.zeros((2, 32, 32), np.uint8); lab[0, 5:9, 5:9] = 1; "
            f"write_montage(np.zeros((2, 32, 32), np.uint8), lab, ['a', 'b'], __import__('pathlib').Path(r'{tmp_path}') / 'm.png', 't'); "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
