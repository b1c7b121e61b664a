"""Per-class logit offsets fitted on validation data after training.

Why: a network's decision rule is tuned to its training loss, not to the
metric. Class-weighted CE in particular shifts every rare class's logits up by
about log(weight) (the weighted optimum is p_c * w_c, renormalised), so thin
classes are over-called; unweighted CE on a rare class often under-calls it.
Either way predicted volume != true volume, which is what a clinician reads.
Adding one constant per class to the logits moves each class's decision
boundary without touching what the network learned; the constants are chosen
to maximise validation Dice, then folded into the 1x1 head's bias, so every
backend (PyTorch, ONNX, int8) applies them with no extra code.

Only classes present in at least MIN_IMAGES validation images get an offset;
the others keep 0. On bhsd-mini-coco one validation image with a subdural bleed
pulled its offset to the end of the grid, which is fitting noise, not a bias.
The search grid includes 0 and a change is kept only if it raises the
objective, so the result is never worse on validation than the plain model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRID = torch.arange(-4.0, 4.0001, 0.25)
MIN_IMAGES = 3


@dataclass(frozen=True)
class Offsets:
    values: list[float]
    """One per output channel (multiclass: index 0 is background, always 0)."""
    dice_before: float
    dice_after: float


def _dice(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def fit_offsets(logits: torch.Tensor, target: torch.Tensor, mode: str, k: int) -> Offsets:
    """Offsets maximising pooled mean Dice over the classes present (the selection metric).

    Softmax offsets interact (one class's border is another's), so the coordinate
    search repeats until a full round moves nothing: stopping after two rounds cost
    0.007 of validation Dice on the demo model (docs/recipe.md, experiment 30).

    logits: (N, C, H, W); target: what the loss takes (a label map, or 0/1 maps
    for sigmoid heads). Pixels whose decision no offset in the grid can flip
    are counted once, so the search touches only the ambiguous few.
    """
    if mode == "multiclass":
        return _fit_softmax(logits.float(), target.long(), k)
    return _fit_sigmoid(logits.float(), target.bool(), k)


def _fit_sigmoid(logits: torch.Tensor, target: torch.Tensor, k: int) -> Offsets:
    """Independent channels: each class's Dice depends on its own offset only."""
    off = torch.zeros(k)
    before, after = [], []
    reach = float(GRID.abs().max())
    for c in range(k):
        images = int(target[:, c].flatten(1).any(1).sum())
        if images == 0:
            continue
        z, t = logits[:, c].flatten(), target[:, c].flatten()
        amb = z.abs() <= reach
        z_sure, t_sure = z[~amb] > 0, t[~amb]
        base = torch.stack([(z_sure & t_sure).sum(), (z_sure & ~t_sure).sum(), (~z_sure & t_sure).sum()]).double()
        za, ta = z[amb], t[amb]

        def score(g: float) -> float:
            p = za + g > 0
            extra = torch.stack([(p & ta).sum(), (p & ~ta).sum(), (~p & ta).sum()]).double()
            return float(_dice(*(base + extra)))

        d0 = best = score(0.0)
        for g in GRID.tolist() if images >= MIN_IMAGES else []:
            s = score(g)
            if s > best + 1e-4:
                best, off[c] = s, g
        before.append(d0)
        after.append(best)
    if not before:
        return Offsets(off.tolist(), float("nan"), float("nan"))
    return Offsets([round(v, 4) for v in off.tolist()], sum(before) / len(before), sum(after) / len(after))


def _fit_softmax(logits: torch.Tensor, target: torch.Tensor, k: int) -> Offsets:
    c = logits.shape[1]
    images_with = torch.stack([(target == j).flatten(1).any(1).sum() for j in range(1, c)])
    z = logits.permute(0, 2, 3, 1).reshape(-1, c)
    t = target.reshape(-1)
    present = images_with > 0
    off = torch.zeros(c)
    if not bool(present.any()):
        return Offsets(off.tolist(), float("nan"), float("nan"))
    fitted = torch.nonzero(images_with >= MIN_IMAGES).flatten() + 1  # channels with enough evidence
    # Offsets differ by at most 2 * max|g|: a wider top-2 margin never flips.
    top2 = z.topk(2, dim=1).values
    amb = (top2[:, 0] - top2[:, 1]) <= 2 * float(GRID.abs().max())
    sure = _counts(z[~amb].argmax(1), t[~amb], c)
    za, ta = z[amb], t[amb]

    def score(o: torch.Tensor) -> float:
        tp, fp, fn = (sure + _counts((za + o).argmax(1), ta, c))[1:].unbind(-1)
        return float(_dice(tp, fp, fn)[present].mean())

    before = best = score(off)
    changed = True
    while changed:  # every accepted move gains > 1e-4 of a score <= 1, so this ends
        changed = False
        for ch in fitted.tolist():
            for g in GRID.tolist():
                trial = off.clone()
                trial[ch] = g
                s = score(trial)
                if s > best + 1e-4:
                    best, off, changed = s, trial, True
    return Offsets([round(v, 4) for v in off.tolist()], before, best)


def _counts(pred: torch.Tensor, t: torch.Tensor, c: int) -> torch.Tensor:
    """(C, 3) TP, FP, FN per label value from two label vectors (one bincount of the pairs)."""
    m = torch.bincount(pred * c + t, minlength=c * c).view(c, c).double()  # [pred, true]
    tp = m.diagonal()
    return torch.stack([tp, m.sum(1) - tp, m.sum(0) - tp], 1)
