"""Segmentation metrics, all derived from per-image, per-class pixel counts.

Definitions (see docs/metrics.md):
- Dice = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN).
- pooled: counts summed over every pixel of the split, per class, then the
  ratio. A large lesion weighs more than a small one.
- per image: the ratio per (image, class), then the mean over pairs where the
  class is present in the ground truth OR the prediction. A pair empty in both
  is left out (it says nothing about segmentation quality); a false positive
  on a lesion-free image scores 0.
- paper style: binary "any lesion" Dice per image with +1 smoothing in
  numerator and denominator, so an image empty in both scores 1; comparable
  to how the study's 0.6696 is usually computed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from hemoseg.errors import HemosegError
from hemoseg.models.heads import channel_argmax, probabilities


def to_onehot(labels_or_probs: torch.Tensor, mode: str, num_classes: int, threshold: float = 0.5) -> torch.Tensor:
    """Network output or target -> bool (B, K, H, W) per foreground class.

    Accepts: multiclass logits (B,K+1,H,W) or label map (B,H,W); binary /
    multilabel logits (B,K,H,W) or 0/1 targets of the same shape.
    """
    x = labels_or_probs
    if mode == "multiclass":
        labels = channel_argmax(x) if x.dim() == 4 else x
        return torch.stack([labels == k + 1 for k in range(num_classes)], dim=1)
    if x.dtype.is_floating_point and (x.min() < 0 or x.max() > 1):  # logits
        return torch.sigmoid(x) > threshold
    return x > threshold


def batch_confusion(logits: torch.Tensor, target: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor:
    """Logits vs the loss's target -> int64 (B, K, 3) TP, FP, FN per image and class.

    A target grid finer than the logits (a pooling stem, ModelConfig.stem) is scored
    where the labels live: probabilities are upsampled the way `hemoseg
    predict` does it (bilinear, align_corners=False)."""
    logits = logits.detach().float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = torch.nn.functional.interpolate(probabilities(logits, mode), size=tuple(target.shape[-2:]),
                                                 mode="bilinear", align_corners=False)
    if mode != "multiclass":
        return confusion(to_onehot(logits, mode, num_classes), to_onehot(target, mode, num_classes))
    # One bincount over (image, predicted, true) triples instead of 3K full-size boolean maps.
    c = num_classes + 1
    b = len(target)
    pair = channel_argmax(logits) * c + target.long()
    pair += torch.arange(b, device=pair.device).view(b, 1, 1) * (c * c)
    m = torch.bincount(pair.flatten(), minlength=b * c * c).view(b, c, c)  # [image, pred, true]
    tp = m.diagonal(dim1=1, dim2=2)
    fp = m.sum(2) - tp
    fn = m.sum(1) - tp
    return torch.stack([tp, fp, fn], dim=-1)[:, 1:].long()


def confusion(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """bool (B,K,H,W) pair -> int64 (B, K, 3) with TP, FP, FN."""
    tp = (pred & gt).flatten(2).sum(-1)
    fp = (pred & ~gt).flatten(2).sum(-1)
    fn = (~pred & gt).flatten(2).sum(-1)
    return torch.stack([tp, fp, fn], dim=-1).long()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def summarize(counts: np.ndarray, class_names: list[str]) -> dict:
    """counts: (N, K, 3) TP/FP/FN per image and class -> metric dict."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    per_image_dice = _ratio(2 * tp, 2 * tp + fp + fn)  # NaN where empty in both
    ptp, pfp, pfn = tp.sum(0), fp.sum(0), fn.sum(0)
    per_class = {}
    for k, name in enumerate(class_names):
        present = int((tp[:, k] + fn[:, k] > 0).sum())
        per_class[name] = {
            "dice": _nan_to_none(_ratio(2 * ptp[k], 2 * ptp[k] + pfp[k] + pfn[k])),
            "iou": _nan_to_none(_ratio(ptp[k], ptp[k] + pfp[k] + pfn[k])),
            "precision": _nan_to_none(_ratio(ptp[k], ptp[k] + pfp[k])),
            "recall": _nan_to_none(_ratio(ptp[k], ptp[k] + pfn[k])),
            "dice_per_image": _nan_to_none(np.nanmean(per_image_dice[:, k]) if np.isfinite(per_image_dice[:, k]).any() else np.nan),
            "images_with_class": present,
        }
    # Classes absent from both ground truth and prediction are not averaged in.
    scored = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    # Image-level detection of "any lesion".
    gt_any = (tp + fn).sum(1) > 0
    pred_any = (tp + fp).sum(1) > 0
    any_tp, any_fp, any_fn = tp.sum(1), fp.sum(1), fn.sum(1)
    paper = (2 * any_tp + 1) / (2 * any_tp + any_fp + any_fn + 1)
    finite = per_image_dice[np.isfinite(per_image_dice)]
    return {
        "dice_pooled_mean": _nan_to_none(np.mean(scored) if scored else np.nan),
        "dice_per_image": _nan_to_none(finite.mean() if finite.size else np.nan),
        "dice_paper_style": _nan_to_none(paper.mean() if paper.size else np.nan),
        "iou_pooled_mean": _mean_of(per_class, "iou"),
        "precision_pooled_mean": _mean_of(per_class, "precision"),
        "recall_pooled_mean": _mean_of(per_class, "recall"),
        "detection": {
            "sensitivity": _nan_to_none(_ratio((gt_any & pred_any).sum(), gt_any.sum())),
            "specificity": _nan_to_none(_ratio((~gt_any & ~pred_any).sum(), (~gt_any).sum())),
            "images_with_lesion": int(gt_any.sum()),
            "images_without_lesion": int((~gt_any).sum()),
        },
        "per_class": per_class,
        "num_images": int(counts.shape[0]),
    }


def _mean_of(per_class: dict, key: str):
    vals = [v[key] for v in per_class.values() if v[key] is not None]
    return float(np.mean(vals)) if vals else None


def _nan_to_none(x):
    x = float(x)
    return None if math.isnan(x) else x


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float | None:
    """95th percentile symmetric Hausdorff distance between mask boundaries.

    None when either mask is empty (undefined); distances in units of `spacing`.
    """
    from scipy import ndimage

    if not pred.any() or not gt.any():
        return None
    def border(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)
    bp, bg = border(pred), border(gt)
    dt_g = ndimage.distance_transform_edt(~bg, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    d = np.concatenate([dt_g[bp], dt_p[bg]])
    return float(np.percentile(d, 95))


# --------------------------------------------------------------------------
# uncertainty: bootstrap over images (or patients)
# --------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 2000


def _pooled_dice_rows(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sums (B, K, 3) of TP/FP/FN -> (per-class pooled Dice (B, K), their mean over the
    classes present in each resample (B,)), with the rules of `summarize`."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    with warnings.catch_warnings():  # a resample where no class is present: NaN, dropped later
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(dice, axis=1)
    return dice, mean


def _resample_weights(groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, N) multiplicity of each image in each resample. Images are drawn by group:
    slices of one patient are not independent, so a patient-level interval resamples
    patients and keeps each one's slices together."""
    rng = np.random.default_rng(seed)
    _, idx = np.unique(groups, return_inverse=True)
    g = idx.max() + 1
    per_group = rng.multinomial(g, np.full(g, 1.0 / g), size=n)  # (n, G)
    return per_group[:, idx].astype(np.float64)


def group_keys(file_names: list[str], pattern: str | None) -> list[str] | None:
    """One key per image from `pattern` (a regular expression searched in the file name;
    its first group if it has one), e.g. '^(\\d+)_' for files named <patient>_<slice>.
    None without a pattern: every image is its own unit."""
    if not pattern:
        return None
    import re

    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise HemosegError(f"--group {pattern!r} is not a regular expression ({exc})") from None
    keys = []
    for name in file_names:
        m = rx.search(name)
        if m is None:
            raise HemosegError(f"--group {pattern!r} does not match the file name {name!r}")
        keys.append(m.group(1) if rx.groups else m.group(0))
    return keys


def _resampled_sums(counts: np.ndarray, groups, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(resample weights (n, N), TP/FP/FN summed per resample (n, K, 3))."""
    w = _resample_weights(np.arange(len(counts)) if groups is None else np.asarray(groups), n, seed)
    return w, np.einsum("bn,nkc->bkc", w, counts)


def _interval(x: np.ndarray) -> list[float] | None:
    """2.5th and 97.5th percentiles of the finite resampled values."""
    x = x[np.isfinite(x)]
    return None if not x.size else [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def bootstrap_dice(counts: np.ndarray, class_names: list[str], groups=None,
                   n: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """95% percentile intervals of the pooled Dice (mean and per class) and of any-lesion
    sensitivity and specificity, over resampled images, or over resampled groups
    (patients) when `groups` gives one key per image."""
    counts = np.asarray(counts, dtype=np.float64)
    w, sums = _resampled_sums(counts, groups, n, seed)
    dice, mean = _pooled_dice_rows(sums)
    gt_any = (counts[..., 0] + counts[..., 2]).sum(1) > 0  # as in `summarize`
    pred_any = (counts[..., 0] + counts[..., 1]).sum(1) > 0
    sensitivity = _ratio(w @ (gt_any & pred_any), w @ gt_any)
    specificity = _ratio(w @ (~gt_any & ~pred_any), w @ ~gt_any)
    units = len(counts) if groups is None else len(set(groups))
    return {"dice_pooled_mean": _interval(mean),
            "per_class": {name: _interval(dice[:, k]) for k, name in enumerate(class_names)},
            "detection": {"sensitivity": _interval(sensitivity), "specificity": _interval(specificity)},
            "resamples": n, "unit": "image" if units == len(counts) else "group", "units": units}


def paired_difference(counts_a: np.ndarray, counts_b: np.ndarray, groups=None,
                      n: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Pooled Dice (mean over classes) of b minus a on the same images, with a 95% paired
    bootstrap interval: both runs are scored on each resample, so image difficulty,
    which they share, cancels out."""
    a, b = np.asarray(counts_a, np.float64), np.asarray(counts_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"count arrays differ in shape: {a.shape} and {b.shape}")
    _, ma = _pooled_dice_rows(_resampled_sums(a, groups, n, seed)[1])
    _, mb = _pooled_dice_rows(_resampled_sums(b, groups, n, seed)[1])  # same seed: the same draws
    point = _pooled_dice_rows(b.sum(0)[None])[1][0] - _pooled_dice_rows(a.sum(0)[None])[1][0]
    return {"difference": float(point), "ci95": _interval(mb - ma)}
