"""Score a trained run on a dataset split, at each image's original resolution.

The network runs exactly as `hemoseg predict` runs it (resize to the model
size, predict, resample probabilities back), so evaluation numbers describe
what a user will get. The loss is computed at the model's input size, as in
training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hemoseg.data.coco import load_dataset
from hemoseg.data.images import load_display
from hemoseg.data.preprocessing import describe_windows
from hemoseg.data.rasterize import rasterize
from hemoseg.errors import HemosegError
from hemoseg.evaluation.metrics import bootstrap_dice, confusion, group_keys, hd95, summarize
from hemoseg.inference.predictor import Predictor, check_compatible
from hemoseg.models.heads import labels_from_probabilities
from hemoseg.training.losses import SegmentationLoss


def _onehot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.stack([labels == c + 1 for c in range(k)])


def evaluate(run: Path, dataset: Path, split: str, out: Path, backend: str = "torch",
             pixel_spacing: float | None = None, overlays: int = 4, quiet: bool = False, tta: bool = False,
             group: str | None = None) -> dict:
    """Score RUN on one split. `group`: a regular expression that picks the patient out of
    a file name, so the confidence intervals resample patients rather than slices."""
    pred = Predictor.from_run(run, backend)
    ds = load_dataset(dataset)
    if split not in ds.splits:
        raise HemosegError(f"no '{split}' split (found: {', '.join(ds.splits)})", dataset)
    sp = ds.splits[split]
    check_compatible(pred, list(sp.classes.names))
    if sp.windows != pred.preprocessing.windows:
        raise HemosegError(f"the model reads windows {describe_windows(pred.preprocessing.windows)}, but this "
                           f"split's images carry {describe_windows(sp.windows)}", sp.json_path)
    classes = sp.classes
    # Checked before the slow part: a pattern that misses a file is a typo, not a result.
    group_of = None if not group else dict(zip((r.file_name for r in sp.images),
                                               group_keys([r.file_name for r in sp.images], group)))
    k, mode, prep = len(classes), pred.mode, pred.preprocessing
    loss_fn = SegmentationLoss(mode, k)
    rows, counts, losses, cases = [], [], [], []
    skipped = [str(p) for p in sp.problems if p.severity == "error"]
    for rec in tqdm(sp.images, desc=f"evaluate {split}", disable=quiet, leave=False):
        try:
            img = load_display(rec.path, prep.channels)
        except HemosegError as exc:
            skipped.append(str(exc))
            continue
        # Ground truth per class (multilabel keeps overlaps; multiclass applies the overlap rule).
        if mode == "multilabel":
            gt = rasterize(rec, classes, "multilabel").astype(bool)
        elif mode == "binary":
            gt = rasterize(rec, classes, "binary")[None].astype(bool)
        else:
            gt = _onehot(rasterize(rec, classes, "multiclass"), k)
        small = prep.resize_image(img)[None]
        probs_small = pred.probabilities(small, tta)
        probs = torch.nn.functional.interpolate(torch.from_numpy(probs_small), size=img.shape[:2], mode="bilinear",
                                                align_corners=False)
        labels = labels_from_probabilities(probs, mode).numpy()[0]
        kk = 1 if mode == "binary" else k
        p_onehot = _onehot(labels, kk)
        counts.append(confusion(torch.from_numpy(p_onehot[None]), torch.from_numpy(gt[None]))[0].numpy())
        # loss at model resolution
        tgt_small = torch.from_numpy(np.stack([prep.resize_mask(g.astype(np.uint8)) for g in gt]).astype(np.float32))
        if mode == "multiclass":
            tgt = torch.from_numpy(prep.resize_mask(rasterize(rec, classes, "multiclass")).astype(np.int64))[None]
        else:
            tgt = tgt_small[None]
        logits = torch.from_numpy(np.log(np.clip(probs_small, 1e-7, 1)) if mode == "multiclass"
                                  else np.log(np.clip(probs_small, 1e-7, 1 - 1e-7) / np.clip(1 - probs_small, 1e-7, 1)))
        losses.append(float(loss_fn(logits, tgt)))
        row = {"file_name": rec.file_name, "loss": round(losses[-1], 5)}
        names = ["lesion"] if mode == "binary" else list(classes.names)
        img_dice = []
        for c, name in enumerate(names):
            tp, fp, fn = counts[-1][c]
            row[f"tp[{name}]"], row[f"fp[{name}]"], row[f"fn[{name}]"] = int(tp), int(fp), int(fn)
            d = None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            row[f"dice[{name}]"] = None if d is None else round(float(d), 5)
            h = hd95(p_onehot[c], gt[c])
            row[f"hd95_px[{name}]"] = None if h is None else round(h, 3)
            if pixel_spacing:
                hm = hd95(p_onehot[c], gt[c], (pixel_spacing, pixel_spacing))
                row[f"hd95_mm[{name}]"] = None if hm is None else round(hm, 3)
            if d is not None:
                img_dice.append(d)
        row["gt_lesion"] = bool(gt.any())
        row["pred_lesion"] = bool(p_onehot.any())
        rows.append(row)
        if gt.any():
            cases.append((float(np.mean(img_dice)) if img_dice else 0.0, rec, img[..., 0], labels, gt))
    if not rows:
        raise HemosegError(f"no usable images in split '{split}'", sp.json_path)
    names = ["lesion"] if mode == "binary" else list(classes.names)
    metrics = summarize(np.stack(counts), names)
    metrics["ci95"] = bootstrap_dice(np.stack(counts), names,
                                     None if group_of is None else [group_of[r["file_name"]] for r in rows])
    metrics["ci95"]["group"] = group
    hd_px = [r[f"hd95_px[{n}]"] for r in rows for n in names if r[f"hd95_px[{n}]"] is not None]
    metrics.update({
        "loss": float(np.mean(losses)),
        "hd95_px_mean": float(np.mean(hd_px)) if hd_px else None,
        "hd95_mm_mean": (float(np.mean([r[f"hd95_mm[{n}]"] for r in rows for n in names
                                        if r.get(f"hd95_mm[{n}]") is not None] or [np.nan]))
                         if pixel_spacing else None),
        "split": split, "dataset": str(dataset), "run": str(run), "mode": mode,
        "skipped": skipped, "backend": pred.backend.name, "tta": tta,
    })
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "per_image.csv", "w", newline="") as f:
        fields = sorted({k2 for r in rows for k2 in r}, key=lambda s: (s != "file_name", s))
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    if cases and overlays:
        _save_cases(sorted(cases, key=lambda c: c[0]), out, names, overlays)
    return metrics


def _save_cases(cases, out: Path, names: list[str], n: int) -> None:
    from hemoseg.evaluation.overlays import save_case_grid

    save_case_grid(cases[-n:][::-1], out / "best_cases.png", names, "Best cases")
    save_case_grid(cases[:n], out / "worst_cases.png", names, "Worst cases")
