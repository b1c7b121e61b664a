"""The COCO reader on the real exports (skipped when absent) and on small
generated files: classes, splits, RLE, negatives, and image decoding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from hemoseg.data.coco import ClassList, class_list, find_split_files, load_dataset, load_split
from hemoseg.data.images import image_size, load_gray_uint8
from hemoseg.data.rasterize import annotation_mask, rasterize
from hemoseg.errors import HemosegError

BHSD_CLASSES = ("Epidural hemorrhage", "Intraparenchymal hemorrhage", "Intraventricular hemorrhage",
                "Subarachnoid hemorrhage", "Subdural hemorrhage")


# --- real data ---------------------------------------------------------------

def _real(shared_data, name):
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent")
    return path


def test_bhsd_classes_splits_and_no_problems(shared_data):
    ds = load_dataset(_real(shared_data, "bhsd-mini-coco"))
    assert {k: len(s.images) for k, s in ds.splits.items()} == {"train": 24, "valid": 5, "test": 7}
    assert ds.classes == ClassList(BHSD_CLASSES, (1, 2, 3, 4, 5))  # placeholder id 0 left out
    assert all(s.classes == ds.classes for s in ds.splits.values())
    assert ds.problems == []
    for split in ds.splits.values():
        for rec in split.images:
            assert (rec.height, rec.width) == (512, 512)
            for ann in rec.annotations:
                assert isinstance(ann["segmentation"], list)  # polygons
                m = annotation_mask(ann["segmentation"], rec.height, rec.width)
                assert m.any()


def test_phe_classes_splits_and_ring_shaped_rle(shared_data):
    ds = load_dataset(_real(shared_data, "phe-dev-coco"))
    assert {k: len(s.images) for k, s in ds.splits.items()} == {"train": 540, "valid": 60}
    assert ds.classes == ClassList(("Perihematomal edema",), (1,))
    assert ds.problems == []
    for rec in ds.splits["valid"].images:  # RLE agrees with the export's own area and bbox
        for ann in rec.annotations:
            assert isinstance(ann["segmentation"]["counts"], str)  # compressed
            m = annotation_mask(ann["segmentation"], rec.height, rec.width)
            ys, xs = np.nonzero(m)
            assert m.sum() == ann["area"]
            assert [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1] == [int(v) for v in ann["bbox"]]
    # Edema surrounds the hematoma: the mask is a ring with the clot as a hole.
    rec = next(r for r in ds.splits["train"].images if r.file_name == "0002_19.jpg")
    ann = rec.annotations[0]
    m = annotation_mask(ann["segmentation"], rec.height, rec.width)
    x, y, w, h = (int(v) for v in ann["bbox"])
    crop = m[y:y + h, x:x + w]
    hole = ndimage.binary_fill_holes(crop) & ~crop
    assert ndimage.label(crop)[1] == 1 and hole.sum() > 300 and crop.sum() == ann["area"] == 395


def test_real_exports_check_clean(shared_data, capsys):
    from hemoseg.cli.main import main

    for name in ("bhsd-mini-coco", "phe-dev-coco"):
        assert main(["data", "check", str(_real(shared_data, name))]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[-1].endswith(", 0 errors, 0 warnings: clean")
        assert not any(line.startswith(("ERROR", "WARNING")) for line in out)


# --- layouts and classes -----------------------------------------------------

def test_find_split_files_layouts(tmp_path, tiny_export):
    root = tmp_path / "ds"
    tiny_export.split(root / "train")
    tiny_export.split(root / "val")  # alias
    files = find_split_files(root)
    assert files == {"train": root / "train" / "_annotations.coco.json",
                     "valid": root / "val" / "_annotations.coco.json"}
    assert find_split_files(root / "val") == {"valid": root / "val" / "_annotations.coco.json"}
    assert find_split_files(files["train"]) == {"train": files["train"]}
    with pytest.raises(HemosegError, match="dataset not found"):
        find_split_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HemosegError, match="no COCO annotations"):
        find_split_files(tmp_path / "empty")
    with pytest.raises(HemosegError, match="expected a dataset folder"):
        find_split_files(root / "train" / "img0.png")


def test_class_list_orders_by_id_and_drops_placeholder():
    cats = [{"id": 3, "name": "c", "supercategory": "lesions"},
            {"id": 0, "name": "lesions", "supercategory": "none"},
            {"id": 1, "name": "a", "supercategory": "lesions"}]
    assert class_list(cats) == ClassList(("a", "c"), (1, 3))
    # without a supercategory tree, id 0 with no supercategory is still the placeholder
    assert class_list([{"id": 0, "name": "x"}, {"id": 1, "name": "y"}]).names == ("y",)
    cl = ClassList(("a", "c"), (1, 3))
    assert ClassList.from_dict(cl.to_dict()) == cl and cl.index_of(3) == 1


def test_image_without_annotations_is_kept_as_negative(tmp_path, tiny_export):
    doc = tiny_export.split(tmp_path / "train", n_images=3)
    doc["annotations"] = doc["annotations"][:1]
    split = load_split(tiny_export.save(tmp_path / "train", doc), "train")
    assert split.problems == []
    assert [len(r.annotations) for r in split.images] == [1, 0, 0]
    neg = split.images[1]
    for mode in ("binary", "multiclass"):
        assert not rasterize(neg, split.classes, mode).any()
    assert rasterize(neg, split.classes, "multilabel").shape == (2, 32, 32)


def test_placeholder_category_is_not_a_class(tmp_path, tiny_export):
    doc = tiny_export.split(tmp_path / "train")
    doc["annotations"][0]["category_id"] = 0
    split = load_split(tiny_export.save(tmp_path / "train", doc), "train")
    assert split.classes.names == ("bleed", "edema")
    assert [str(p).split(": ", 2)[-1] for p in split.problems] == [
        "uses the placeholder supercategory 0, not a class"]
    assert [len(r.annotations) for r in split.images] == [0, 1]


def test_iscrowd_rle_annotation_is_read_and_rasterised(tmp_path, tiny_export):
    doc = tiny_export.split(tmp_path / "train", n_images=1)
    # column-major runs on 32x32: 32*3 background, then 5 foreground in column 3
    doc["annotations"][0].update(iscrowd=1, segmentation={"size": [32, 32], "counts": [96, 5, 1024 - 101]})
    split = load_split(tiny_export.save(tmp_path / "train", doc), "train")
    assert split.problems == []
    m = rasterize(split.images[0], split.classes, "binary")
    expected = np.zeros((32, 32), np.uint8)
    expected[0:5, 3] = 1
    np.testing.assert_array_equal(m, expected)


# --- image decoding ----------------------------------------------------------

def test_grayscale_rgb_and_16bit_png(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_gray_uint8(tmp_path / "g.png"), gray)

    rgb = np.repeat(gray[..., None], 3, axis=2)  # Roboflow stores gray CT as RGB
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_gray_uint8(tmp_path / "rgb.png"), gray)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 1] = 200  # pure green -> ITU-R 601 luma 0.587 * 200
    Image.fromarray(colour).save(tmp_path / "c.png")
    assert (load_gray_uint8(tmp_path / "c.png") == 117).all()

    wide = np.array([[0, 257, 32896, 65535], [128, 129, 385, 65278]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    np.testing.assert_array_equal(load_gray_uint8(tmp_path / "w.png"),
                                  [[0, 1, 128, 255], [0, 1, 1, 254]])


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    stored = np.zeros((20, 40), np.uint8)  # landscape as stored ...
    stored[:, :10] = 255  # ... with a bright band on its left
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = load_gray_uint8(tmp_path / "r.jpg")
    assert shown.shape == (40, 20) and image_size(tmp_path / "r.jpg") == (40, 20)
    assert shown[:8].mean() > 240 and shown[12:].mean() < 15  # band now on top


def test_exif_rotated_jpeg_size_matches_json(tmp_path, tiny_export):
    """Roboflow's width/height are the displayed ones, so no size mismatch."""
    doc = tiny_export.split(tmp_path / "train", n_images=1)
    im = Image.fromarray(np.zeros((32, 48), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(tmp_path / "train" / "r.jpg", exif=exif)
    doc["images"][0].update(file_name="r.jpg", height=48, width=32)
    split = load_split(tiny_export.save(tmp_path / "train", doc), "train")
    assert split.problems == [] and (split.images[0].height, split.images[0].width) == (48, 32)


def test_undecodable_image_is_a_one_line_hemoseg_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(HemosegError) as info:
        load_gray_uint8(tmp_path / "x.png")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(tmp_path / "x.png"))
    with pytest.raises(HemosegError, match="not found"):
        load_gray_uint8(tmp_path / "missing.png")
