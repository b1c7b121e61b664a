"""`hemoseg data stats` on a tiny generated export, and the class palette."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hemoseg.cli.main import main
from hemoseg.data.figures import FIGURE_FILES, class_colors, overlay_masks


@pytest.fixture
def dataset(tmp_path, tiny_export):
    """train: img0 bleed+edema (overlapping), img1 edema, img2 negative; valid: img0 bleed."""
    root = tmp_path / "ds"
    doc = tiny_export.split(root / "train", n_images=3)
    doc["annotations"] = doc["annotations"][:2] + [
        {"id": 7, "image_id": 0, "category_id": 2, "iscrowd": 0,
         "segmentation": tiny_export.square(8, 8, 20, 20), "area": 144.0, "bbox": [8, 8, 12, 12]}]
    tiny_export.save(root / "train", doc)
    tiny_export.split(root / "valid", n_images=1)
    return root


TABLE = """\
class                        train      valid      total
                            ann  img   ann  img   ann  img
----------------------------------------------------------
bleed                         1    1     1    1     2    2
edema                         2    2     0    0     2    2
negatives (no annotation)     -    1     -    0     -    1
all                           3    3     1    1     4    4
"""


def test_stats_prints_table_and_writes_figures(dataset, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["data", "stats", str(dataset), "--out", str(out), "--seed", "3"]) == 0
    stdout, err = capsys.readouterr()
    assert err == ""
    assert stdout == TABLE + f"wrote {', '.join(FIGURE_FILES)} to {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURE_FILES)
    for name in FIGURE_FILES[:3]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200

    stats = json.loads((out / "stats.json").read_text())
    assert stats["classes"] == [{"name": "bleed", "coco_id": 1}, {"name": "edema", "coco_id": 2}]
    assert list(stats["splits"]) == ["train", "valid"]
    assert stats["splits"]["train"] == {
        "images": 3, "negatives": 1, "annotations": 3,
        "classes": {"bleed": {"annotations": 1, "images": 1}, "edema": {"annotations": 2, "images": 2}}}
    assert stats["total"]["classes"]["bleed"] == {"annotations": 2, "images": 2}
    assert stats["problems"] == {"errors": 0, "warnings": 0}
    assert stats["figures"] == {"seed": 3, "samples": 12, "log_scale": False}


def test_stats_is_repeatable_and_overwrites(dataset, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["data", "stats", str(dataset), "--out", str(out), "--seed", "1", "--samples", "2"]) == 0
    first = (out / "augmentations.png").read_bytes()
    assert main(["data", "stats", str(dataset), "--out", str(out), "--seed", "1", "--samples", "2"]) == 0
    assert (out / "augmentations.png").read_bytes() == first


def test_stats_without_out_only_prints(dataset, capsys):
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    assert main(["data", "stats", str(dataset), "--scale", "log"]) == 0
    assert capsys.readouterr().out == TABLE
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_stats_refuses_to_write_into_the_dataset(dataset, capsys):
    assert main(["data", "stats", str(dataset), "--out", str(dataset / "figs")]) == 2
    assert "--out must not be inside the dataset folder" in capsys.readouterr().err
    assert not (dataset / "figs").exists()


def test_stats_notes_problems_and_counts_usable_items(dataset, tiny_export, tmp_path, capsys):
    (dataset / "valid" / "img0.png").unlink()
    assert main(["data", "stats", str(dataset)]) == 0
    out, err = capsys.readouterr()
    assert "all                           3    3     0    0     3    3" in out
    assert err == (f"note: 2 errors and 0 warnings in the export; items with errors are not counted "
                   f"(see 'hemoseg data check {dataset}')\n")


def test_class_colors_are_fixed_and_distinct():
    c5 = class_colors(5)
    assert c5.shape == (5, 3) and c5.dtype == np.uint8
    np.testing.assert_array_equal(class_colors(12)[:5], c5)  # class k keeps its colour
    many = class_colors(20)
    assert len({tuple(c) for c in many}) == 20
    assert class_colors(0).shape == (0, 3)
    # never gray: the colour must stand out on a grayscale CT
    assert (many.max(axis=1).astype(int) - many.min(axis=1) > 60).all()


def test_overlay_blends_overlaps_and_outlines():
    gray = np.full((12, 12), 100, np.uint8)
    masks = np.zeros((2, 12, 12), np.uint8)
    masks[0, 2:8, 2:8] = 1
    masks[1, 5:11, 5:11] = 1
    colors = class_colors(2)
    rgb = overlay_masks(gray, masks, colors, outline=False)
    assert rgb.shape == (12, 12, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 100).all()
    only0, only1, both = rgb[3, 3], rgb[9, 9], rgb[6, 6]
    assert not (only0 == only1).all() and not (both == only0).all() and not (both == only1).all()
    outlined = overlay_masks(gray, masks, colors, fill=False)
    np.testing.assert_array_equal(outlined[2, 2], colors[0])  # border pixel takes the class colour
    assert (outlined[4, 4] == 100).all()  # interior untouched without fill
