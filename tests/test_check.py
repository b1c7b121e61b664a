"""`hemoseg data check` on a corpus of deliberately broken exports.

Every case asserts the exact report and exit status, and that the export is
byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemoseg.cli.main import main

CLEAN_TRAIN = "split train: 2 images, 2 annotations, 0 errors, 0 warnings"


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def run_check(target: Path, capsys, root: Path | None = None) -> tuple[int, list[str], str]:
    root = root or target
    before = snapshot(root)
    code = main(["data", "check", str(target)])
    out, err = capsys.readouterr()
    assert snapshot(root) == before, "data check modified the dataset"
    assert "Traceback" not in out + err
    return code, out.splitlines(), err


@pytest.fixture
def export(tmp_path, tiny_export):
    """A clean one-split export: (root, annotation doc, train JSON path as str)."""
    root = tmp_path / "ds"
    doc = tiny_export.split(root / "train", n_images=2)
    return root, doc, str(root / "train" / "_annotations.coco.json")


def noise_image(path: Path, size: int = 32) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def test_clean_export_exits_0(export, capsys):
    root, _, _ = export
    code, lines, err = run_check(root, capsys)
    assert (code, err) == (0, "")
    assert lines == [CLEAN_TRAIN, "summary: 1 split, 2 images, 2 annotations, 0 errors, 0 warnings: clean"]


def test_json_file_and_single_folder_layouts(export, capsys):
    root, _, j = export
    for target in (Path(j), root / "train"):
        code, lines, _ = run_check(target, capsys, root)
        assert code == 0 and lines[0] == CLEAN_TRAIN


def test_missing_image_file(export, capsys):
    root, _, j = export
    (root / "train" / "img1.png").unlink()
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [image 1]: image file missing: img1.png",
        "split train: 1 image, 1 annotation, 1 error, 0 warnings",
        "summary: 1 split, 1 image, 1 annotation, 1 error, 0 warnings: errors found",
    ]


def test_unidentifiable_image_file(export, capsys):
    root, _, j = export
    (root / "train" / "img1.png").write_bytes(b"this is not an image")
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines[0] == f"ERROR: {j} [image 1]: corrupt image file: img1.png"
    assert lines[1] == "split train: 1 image, 1 annotation, 1 error, 0 warnings"


def test_truncated_png_is_caught_by_full_decode(export, capsys):
    root, _, j = export
    path = root / "train" / "img1.png"
    data = noise_image(path)
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [image 1]: corrupt image file: img1.png (image file is truncated)",
        "split train: 1 image, 1 annotation, 1 error, 0 warnings",
        "summary: 1 split, 1 image, 1 annotation, 1 error, 0 warnings: errors found",
    ]


def test_truncated_jpeg(export, tiny_export, capsys):
    root, doc, j = export
    path = root / "train" / "img1.jpg"
    data = noise_image(path)
    path.write_bytes(data[: len(data) // 2])
    doc["images"][1]["file_name"] = "img1.jpg"
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines[0] == (f"ERROR: {j} [image 1]: corrupt image file: img1.jpg "
                        "(image file is truncated (13 bytes not processed))")


def test_png_without_end_chunk_is_a_warning(export, capsys):
    root, _, j = export
    path = root / "train" / "img1.png"
    path.write_bytes(path.read_bytes()[:-12])  # IEND gone; pixels still decode
    code, lines, _ = run_check(root, capsys)
    assert code == 1
    assert lines == [
        f"WARNING: {j} [image 1]: damaged image file: img1.png decodes but fails verification "
        "(truncated PNG file)",
        "split train: 2 images, 2 annotations, 0 errors, 1 warning",
        "summary: 1 split, 2 images, 2 annotations, 0 errors, 1 warning: warnings only",
    ]


@pytest.mark.parametrize("segmentation, line", [
    ([[4, 4, 12, 12]], "ERROR: {j} [annotation 1]: polygon part 0 has 2 points (needs >= 3)"),
    ([[4, 4, 12, 4, 12]], "ERROR: {j} [annotation 1]: polygon part 0 has 2 points (needs >= 3)"),
    ([], "ERROR: {j} [annotation 1]: no segmentation (empty or missing)"),
    ([[4, "a", 12, 4, 12, 12]], "ERROR: {j} [annotation 1]: polygon part 0 is not a list of numbers"),
    ([[4, float("nan"), 12, 4, 12, 12]], "ERROR: {j} [annotation 1]: polygon part 0 is not a list of numbers"),
    ({"size": [32, 32], "counts": [1030, -6]},
     "ERROR: {j} [annotation 1]: malformed uncompressed RLE (counts must be non-negative integers)"),
    ({"size": ["a", 32], "counts": [1024]}, "ERROR: {j} [annotation 1]: malformed RLE size ['a', 32]"),
    ({"size": [32, 32], "counts": "zz"}, "ERROR: {j} [annotation 1]: malformed compressed RLE string"),
    ({"size": [32, 32], "counts": "52"},
     "ERROR: {j} [annotation 1]: compressed RLE covers 7 pixels, image has 1024"),
    ({"size": [32, 32], "counts": [5, 2]},
     "ERROR: {j} [annotation 1]: uncompressed RLE covers 7 pixels, image has 1024"),
    ({"size": [16, 16], "counts": [256]},
     "ERROR: {j} [annotation 1]: RLE size [16, 16] disagrees with image 32x32"),
    ({"counts": [1024]}, "ERROR: {j} [annotation 1]: malformed RLE (needs 'size' and 'counts')"),
])
def test_bad_segmentation_is_an_error(export, tiny_export, capsys, segmentation, line):
    root, doc, j = export
    doc["annotations"][1]["segmentation"] = segmentation
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        line.format(j=j),
        "split train: 2 images, 1 annotation, 1 error, 0 warnings",
        "summary: 1 split, 2 images, 1 annotation, 1 error, 0 warnings: errors found",
    ]


def test_coordinates_outside_image_warn_only(export, tiny_export, capsys):
    root, doc, j = export
    doc["annotations"][1]["segmentation"] = [[4, 4, 40, 4, 40, 12, 4, 12]]
    doc["annotations"][0]["segmentation"] = [[-3, -3, 8, -3, 8, 8]]
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 1
    assert lines == [
        f"WARNING: {j} [annotation 0]: polygon part 0 has coordinates outside the 32x32 image (clipped)",
        f"WARNING: {j} [annotation 1]: polygon part 0 has coordinates outside the 32x32 image (clipped)",
        "split train: 2 images, 2 annotations, 0 errors, 2 warnings",
        "summary: 1 split, 2 images, 2 annotations, 0 errors, 2 warnings: warnings only",
    ]


def test_edge_coordinates_within_rounding_are_fine(export, tiny_export, capsys):
    root, doc, _ = export
    doc["annotations"][1]["segmentation"] = [[0, 0, 32.5, 0, 32.5, 32.5, -0.5, 32.5]]
    tiny_export.save(root / "train", doc)
    assert run_check(root, capsys)[0] == 0


def test_zero_area_polygon_warns(export, tiny_export, capsys):
    root, doc, j = export
    doc["annotations"][1]["segmentation"] = [[2, 2, 4, 4, 6, 6]]  # collinear
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 1
    assert lines[0] == f"WARNING: {j} [annotation 1]: segmentation covers no pixels"


def test_annotation_with_unknown_image(export, tiny_export, capsys):
    root, doc, j = export
    doc["annotations"].append({**doc["annotations"][0], "id": 5, "image_id": 99})
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [annotation 5]: refers to unknown image id 99",
        "split train: 2 images, 2 annotations, 1 error, 0 warnings",
        "summary: 1 split, 2 images, 2 annotations, 1 error, 0 warnings: errors found",
    ]


def test_annotation_with_unknown_category(export, tiny_export, capsys):
    root, doc, j = export
    doc["annotations"][1]["category_id"] = 7
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [annotation 1]: refers to unknown category id 7",
        "split train: 2 images, 1 annotation, 1 error, 0 warnings",
        "summary: 1 split, 2 images, 1 annotation, 1 error, 0 warnings: errors found",
    ]


def test_annotation_with_placeholder_category(export, tiny_export, capsys):
    root, doc, j = export
    doc["annotations"][1]["category_id"] = 0
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines[0] == f"ERROR: {j} [annotation 1]: uses the placeholder supercategory 0, not a class"


def test_duplicate_image_id(tmp_path, tiny_export, capsys):
    root = tmp_path / "ds"
    doc = tiny_export.split(root / "train", n_images=3)
    doc["images"][1]["id"] = 0
    j = str(tiny_export.save(root / "train", doc))
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [image 0]: duplicate image id (2 times); all left out",
        f"ERROR: {j} [annotation 1]: refers to unknown image id 1",
        "split train: 1 image, 1 annotation, 2 errors, 0 warnings",
        "summary: 1 split, 1 image, 1 annotation, 2 errors, 0 warnings: errors found",
    ]


def test_duplicate_annotation_id(export, tiny_export, capsys):
    root, doc, j = export
    doc["annotations"][1]["id"] = 0
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [annotation 0]: duplicate annotation id (2 times); all left out",
        "split train: 2 images, 0 annotations, 1 error, 0 warnings",
        "summary: 1 split, 2 images, 0 annotations, 1 error, 0 warnings: errors found",
    ]


def test_duplicate_category_id(export, tiny_export, capsys):
    root, doc, j = export
    doc["categories"].append({"id": 2, "name": "edema again", "supercategory": "lesions"})
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [category 2]: duplicate category id (2 times)",
        "split train: 2 images, 2 annotations, 1 error, 0 warnings",
        "summary: 1 split, 2 images, 2 annotations, 1 error, 0 warnings: errors found",
    ]


def test_json_size_disagrees_with_file(export, tiny_export, capsys):
    root, doc, j = export
    doc["images"][0]["width"] = 64
    tiny_export.save(root / "train", doc)
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [image 0]: JSON size 64x32 disagrees with file img0.png (32x32)",
        "split train: 1 image, 1 annotation, 1 error, 0 warnings",
        "summary: 1 split, 1 image, 1 annotation, 1 error, 0 warnings: errors found",
    ]


def test_empty_split(export, tiny_export, capsys):
    root, _, _ = export
    (root / "valid").mkdir()
    jv = str(tiny_export.save(root / "valid", {"images": [], "annotations": [],
                                                "categories": tiny_export.CATEGORIES}))
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {jv}: split 'valid' has no usable images",
        CLEAN_TRAIN,
        "split valid: 0 images, 0 annotations, 1 error, 0 warnings",
        "summary: 2 splits, 2 images, 2 annotations, 1 error, 0 warnings: errors found",
    ]


def test_split_folder_without_annotations_warns(export, capsys):
    root, _, _ = export
    (root / "test").mkdir()
    noise_image(root / "test" / "a.png")
    code, lines, _ = run_check(root, capsys)
    assert code == 1
    assert lines == [
        f"WARNING: {root / 'test'}: no _annotations.coco.json; split ignored",
        CLEAN_TRAIN,
        "summary: 1 split, 2 images, 2 annotations, 0 errors, 1 warning: warnings only",
    ]


@pytest.mark.parametrize("text, message", [
    ('{"images": [', "unreadable annotation file (Expecting value: line 1 column 13 (char 12))"),
    ("[]", "not a COCO file: no 'images' list"),
    ('{"annotations": []}', "not a COCO file: no 'images' list"),
])
def test_invalid_json(export, capsys, text, message):
    root, _, j = export
    Path(j).write_text(text, encoding="utf-8")
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j}: {message}",
        "split train: 0 images, 0 annotations, 1 error, 0 warnings",
        "summary: 1 split, 0 images, 0 annotations, 1 error, 0 warnings: errors found",
    ]


def test_non_utf8_json(export, capsys):
    root, _, j = export
    Path(j).write_bytes(b'{"images": "\xff\xfe"}')
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines[0].startswith(f"ERROR: {j}: unreadable annotation file (")


def test_unforeseen_json_shape_is_one_line_not_a_traceback(export, tiny_export, capsys):
    root, doc, j = export
    doc["images"][0]["id"] = [0]  # unhashable id
    tiny_export.save(root / "train", doc)
    code, lines, err = run_check(root, capsys)
    assert (code, err) == (2, "")
    assert lines[0] == f"ERROR: {j}: cannot read annotations (TypeError: unhashable type: 'list')"


def test_missing_dataset_is_one_line_on_stderr(tmp_path, capsys):
    code = main(["data", "check", str(tmp_path / "nope")])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == f"hemoseg: error: {tmp_path / 'nope'}: dataset not found\n"


def test_folder_without_any_annotations(tmp_path, capsys):
    code = main(["data", "check", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no COCO annotations found" in err


def test_problems_in_several_splits_are_counted_per_split(export, tiny_export, capsys):
    root, _, j = export
    doc = tiny_export.split(root / "valid", n_images=1)
    doc["annotations"][0]["segmentation"] = [[0, 0, 50, 0, 50, 50]]
    jv = str(tiny_export.save(root / "valid", doc))
    (root / "train" / "img0.png").unlink()
    code, lines, _ = run_check(root, capsys)
    assert code == 2
    assert lines == [
        f"ERROR: {j} [image 0]: image file missing: img0.png",
        f"WARNING: {jv} [annotation 0]: polygon part 0 has coordinates outside the 32x32 image (clipped)",
        "split train: 1 image, 1 annotation, 1 error, 0 warnings",
        "split valid: 1 image, 1 annotation, 0 errors, 1 warning",
        "summary: 2 splits, 2 images, 2 annotations, 1 error, 1 warning: errors found",
    ]


def test_check_report_matches_what_the_reader_keeps(export, tiny_export):
    """The check counts exactly what training would load (same reader)."""
    from hemoseg.data.check import check_dataset
    from hemoseg.data.coco import load_dataset

    root, doc, _ = export
    doc["annotations"][1]["category_id"] = 9
    tiny_export.save(root / "train", doc)
    report, ds = check_dataset(root), load_dataset(root)
    split = ds.splits["train"]
    assert report.splits[0].images == len(split.images)
    assert report.splits[0].annotations == sum(len(r.annotations) for r in split.images)
    assert [str(p) for p in report.problems] == [str(p) for p in ds.problems]
    assert json.loads(Path(split.json_path).read_text())["annotations"][1]["category_id"] == 9
