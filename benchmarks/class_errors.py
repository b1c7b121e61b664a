#!/usr/bin/env python
"""Where one class's wrong pixels lie, on a dataset split, as `evaluate --tta` predicts it.

A Dice below target has different cures depending on the error: whole lesions missed
or invented (detection), or borders drawn a pixel or two off (resolution, label noise,
contrast). This splits a class's false negatives and false positives into those within
--band pixels of the true border and those in components with no overlap at all, says
what the other classes took or gave, and prints the Dice each kind of error costs.

    python benchmarks/class_errors.py demo/run demo/data/coco "Perihematomal edema"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from hemoseg.data.coco import load_dataset
from hemoseg.data.images import load_display
from hemoseg.data.rasterize import rasterize
from hemoseg.inference.predictor import Predictor, resampled_labels


def isolated(mask: np.ndarray, other: np.ndarray) -> int:
    """Pixels of `mask` in connected components that do not touch `other`."""
    n, comps = cv2.connectedComponents(mask.astype(np.uint8))
    hit = np.unique(comps[other & mask])
    return int(np.isin(comps, np.setdiff1d(np.arange(1, n), hit)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("cls", metavar="CLASS", help="class name as in the dataset")
    ap.add_argument("--split", default="test")
    ap.add_argument("--band", type=int, default=2, help="border band half-width in pixels (default 2)")
    args = ap.parse_args()

    pred = Predictor.from_run(args.run)  # auto: the exported ONNX model when there is one, as evaluate --backend auto
    sp = load_dataset(args.dataset).splits[args.split]
    names = list(sp.classes.names)
    if pred.mode != "multiclass" or args.cls not in names:
        raise SystemExit(f"class_errors: needs a multiclass run and one of {names}")
    k = names.index(args.cls) + 1
    kernel = np.ones((2 * args.band + 1,) * 2, np.uint8)
    n = dict(tp=0, fp=0, fn=0, fp_in_band=0, fn_in_band=0, fp_isolated=0, fn_isolated=0)
    took, gave = np.zeros(len(names) + 1, np.int64), np.zeros(len(names) + 1, np.int64)
    for rec in sp.images:
        img = load_display(rec.path, pred.preprocessing.channels)
        gt = rasterize(rec, sp.classes, "multiclass")
        probs = pred.probabilities(pred.preprocessing.resize_image(img)[None], tta=True)
        lab = resampled_labels(probs, "multiclass", *img.shape[:2])[0]
        g, p = gt == k, lab == k
        fp, fn = p & ~g, g & ~p
        g8 = g.astype(np.uint8)
        band = cv2.dilate(g8, kernel).astype(bool) & ~cv2.erode(g8, kernel).astype(bool)
        n["tp"] += int((g & p).sum())
        n["fp"] += int(fp.sum())
        n["fn"] += int(fn.sum())
        n["fp_in_band"] += int((fp & band).sum())
        n["fn_in_band"] += int((fn & band).sum())
        n["fp_isolated"] += isolated(p, g)
        n["fn_isolated"] += isolated(g, p)
        took += np.bincount(lab[fn], minlength=len(names) + 1)
        gave += np.bincount(gt[fp], minlength=len(names) + 1)

    def dice(tp, fp, fn):
        return round(2 * tp / max(2 * tp + fp + fn, 1), 4)

    tp, fp, fn = n["tp"], n["fp"], n["fn"]
    labels = ["background"] + names
    print(json.dumps({
        "run": str(args.run), "split": args.split, "class": args.cls, "band_px": args.band,
        "pixels": n, "dice": dice(tp, fp, fn),
        "dice_without": {
            "fn_in_band": dice(tp + n["fn_in_band"], fp, fn - n["fn_in_band"]),
            "fp_in_band": dice(tp, fp - n["fp_in_band"], fn),
            "fn_isolated": dice(tp + n["fn_isolated"], fp, fn - n["fn_isolated"]),
            "fp_isolated": dice(tp, fp - n["fp_isolated"], fn)},
        "missed_pixels_predicted_as": {labels[i]: int(v) for i, v in enumerate(took) if v},
        "false_pixels_truly": {labels[i]: int(v) for i, v in enumerate(gave) if v},
    }, indent=2))


if __name__ == "__main__":
    main()
