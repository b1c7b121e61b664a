"""Pixel-exact rasterisation of hand-made annotations, and the mode rules.

pycocotools fills a pixel when its centre lies inside the polygon, with
integer coordinates on pixel corners: the square (2,2)-(6,6) covers exactly
pixels 2..5 in x and y, 16 pixels, equal to its geometric area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hemoseg.data.coco import ClassList, ImageRecord, _compressed_rle_runs
from hemoseg.data.rasterize import annotation_mask, num_outputs, rasterize

CLASSES = ClassList(("bleed", "edema", "other"), (1, 2, 3))


def grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


def record(anns: list[tuple[int, list]], h: int = 10, w: int = 10) -> ImageRecord:
    annotations = [{"id": k, "category_id": cid, "segmentation": seg} for k, (cid, seg) in enumerate(anns)]
    return ImageRecord(0, "x.png", Path("x.png"), h, w, annotations)


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_square_polygon_exact_pixels():
    m = annotation_mask([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, grid([
        "..........",
        "..........",
        "..####....",
        "..####....",
        "..####....",
        "..####....",
        "..........",
        "..........",
        "..........",
        "..........",
    ]))


def test_half_pixel_offset_square_shifts_by_one():
    m = annotation_mask(square(2.5, 2.5, 6.5, 6.5), 10, 10)
    expected = np.zeros((10, 10), bool)
    expected[3:7, 3:7] = True
    np.testing.assert_array_equal(m, expected)


def test_two_part_polygon_is_the_union():
    m = annotation_mask([[1, 1, 3, 1, 3, 3, 1, 3], [6, 5, 9, 5, 9, 8]], 10, 10)
    np.testing.assert_array_equal(m, grid([
        "..........",
        ".##.......",
        ".##.......",
        "..........",
        "..........",
        ".......##.",
        "........#.",
        "..........",
        "..........",
        "..........",
    ]))


def test_uncompressed_and_compressed_rle_agree():
    # 4 rows x 5 columns, runs in column-major order: background 5, fg 3, bg 12
    counts = [5, 3, 12]
    expected = np.zeros((4, 5), bool)
    expected[1:4, 1] = True  # column 1 rows 1..3 (pixels 5,6,7 in column order)
    m_plain = annotation_mask({"size": [4, 5], "counts": counts}, 4, 5)
    np.testing.assert_array_equal(m_plain, expected)

    packed = mask_utils.frPyObjects({"size": [4, 5], "counts": counts}, 4, 5)["counts"].decode("ascii")
    assert _compressed_rle_runs(packed) == counts  # the reader's validator parses the same runs
    m_packed = annotation_mask({"size": [4, 5], "counts": packed}, 4, 5)
    np.testing.assert_array_equal(m_packed, expected)


def test_compressed_rle_runs_roundtrip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(1, 40, 2)
        m = np.asfortranarray(rng.random((h, w)) < rng.random(), dtype=np.uint8)
        counts = mask_utils.encode(m)["counts"].decode("ascii")
        runs = _compressed_rle_runs(counts)
        assert sum(runs) == h * w
        np.testing.assert_array_equal(np.repeat(np.arange(len(runs)) % 2, runs).reshape(w, h).T, m)
    assert _compressed_rle_runs("zz") is None  # characters outside the alphabet
    assert _compressed_rle_runs("0\\") is None  # ends while a "more follows" bit is set


def test_binary_is_the_union():
    rec = record([(1, square(1, 1, 4, 4)), (2, square(3, 3, 6, 6))])
    out = rasterize(rec, CLASSES, "binary")
    assert out.dtype == np.uint8 and out.shape == (10, 10)
    assert out.sum() == 9 + 9 - 1 and set(np.unique(out)) == {0, 1}


@pytest.mark.parametrize("big, small", [(1, 2), (2, 1), (3, 1)])
def test_multiclass_smaller_annotation_wins(big, small):
    # order in the file must not matter: try the small one first and last
    for anns in ([(big, square(0, 0, 8, 8)), (small, square(2, 2, 4, 4))],
                 [(small, square(2, 2, 4, 4)), (big, square(0, 0, 8, 8))]):
        out = rasterize(record(anns), CLASSES, "multiclass")
        expected = np.zeros((10, 10), np.uint8)
        expected[0:8, 0:8] = CLASSES.index_of(big) + 1
        expected[2:4, 2:4] = CLASSES.index_of(small) + 1
        np.testing.assert_array_equal(out, expected)


def test_multiclass_equal_areas_higher_class_wins():
    anns = [(2, square(0, 0, 4, 4)), (1, square(2, 2, 6, 6))]
    out = rasterize(record(anns), CLASSES, "multiclass")
    assert out[3, 3] == 2  # overlap goes to class index 1 (coco id 2) over index 0
    assert out[0, 0] == 2 and out[5, 5] == 1


def test_multilabel_keeps_overlaps():
    anns = [(1, square(0, 0, 8, 8)), (2, square(2, 2, 4, 4)), (1, square(6, 6, 10, 10))]
    out = rasterize(record(anns), CLASSES, "multilabel")
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8
    big = np.zeros((10, 10), np.uint8)
    big[0:8, 0:8] = 1
    big[6:10, 6:10] = 1
    small = np.zeros((10, 10), np.uint8)
    small[2:4, 2:4] = 1
    np.testing.assert_array_equal(out[0], big)
    np.testing.assert_array_equal(out[1], small)  # still there under class 0
    assert not out[2].any()
    assert (out[0] & out[1]).sum() == 4


def test_unknown_mode_and_head_sizes():
    with pytest.raises(ValueError):
        rasterize(record([]), CLASSES, "semantic")
    assert [num_outputs(m, 3) for m in ("binary", "multiclass", "multilabel")] == [1, 4, 3]
