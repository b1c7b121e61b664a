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

import numpy as np
import torch

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
