"""COCO annotations -> pixel masks, in the three target modes.

Modes
-----
binary      one channel, 1 where any lesion is (the paper's setting).
multiclass  an index map: 0 background, k+1 for class k. Where annotations
            overlap, the annotation with the SMALLER area wins (annotations are
            painted largest first). Small lesions are the hard, clinically
            important ones, so a large neighbour never erases them; ties are
            broken by the higher class index, then by annotation order.
multilabel  one channel per class, overlaps kept.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pycocotools import mask as mask_utils

from hemoseg.data.coco import ClassList, ImageRecord

Mode = Literal["binary", "multiclass", "multilabel"]
MODES = ("binary", "multiclass", "multilabel")


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> compressed COCO RLE, JSON-ready: exact for any shape (rings, holes)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, width, height] of a non-empty (H, W) mask, in whole pixels."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) bool for a polygon list or an RLE (compressed or not)."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": segmentation["size"],
                   "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.decode(rle).astype(bool)


def rasterize(record: ImageRecord, classes: ClassList, mode: Mode) -> np.ndarray:
    """binary -> (H,W) uint8; multiclass -> (H,W) uint8 index; multilabel -> (K,H,W) uint8."""
    h, w = record.height, record.width
    if mode == "multilabel":
        out = np.zeros((len(classes), h, w), np.uint8)
        for ann in record.annotations:
            out[classes.index_of(ann["category_id"])] |= annotation_mask(ann["segmentation"], h, w)
        return out
    out = np.zeros((h, w), np.uint8)
    if mode == "binary":
        for ann in record.annotations:
            out |= annotation_mask(ann["segmentation"], h, w)
        return out
    if mode != "multiclass":
        raise ValueError(f"unknown mode {mode!r}")
    masks = []
    for order, ann in enumerate(record.annotations):
        m = annotation_mask(ann["segmentation"], h, w)
        masks.append((int(m.sum()), classes.index_of(ann["category_id"]), order, m))
    masks.sort(key=lambda t: (-t[0], t[1], t[2]))  # largest first, so smaller ones paint over
    for _, k, _, m in masks:
        out[m] = k + 1
    return out


def num_outputs(mode: Mode, num_classes: int) -> int:
    """Channels of the network head for a mode."""
    return {"binary": 1, "multiclass": num_classes + 1, "multilabel": num_classes}[mode]
