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
    n_true = sure[:, 0] + sure[:, 2] + torch.bincount(ta, minlength=c).double()  # TP + FN = pixels of the class

    def mean_dice(tp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
        """Mean Dice over the present classes; the last axis is the class."""
        return _dice(tp, fp, n_true - tp)[..., 1:][..., present].mean(-1)

    counts = sure + _counts((za + off).argmax(1), ta, c)
    before = best = float(mean_dice(counts[:, 0], counts[:, 1]))
    changed = True
    while changed:  # every accepted move gains > 1e-4 of a score <= 1, so this ends
        changed = False
        for ch in fitted.tolist():
            scores = _sweep(za, ta, off, ch, sure, mean_dice)
            for g, s in zip(GRID.tolist(), scores.tolist()):  # the order a one-by-one search would take
                if s > best + 1e-4:
                    best, changed = s, True
                    off = off.clone()
                    off[ch] = g
    return Offsets([round(v, 4) for v in off.tolist()], before, best)


def _sweep(z: torch.Tensor, t: torch.Tensor, off: torch.Tensor, ch: int, sure: torch.Tensor, mean_dice) -> torch.Tensor:
    """Mean Dice for every grid value of channel `ch`'s offset, the others fixed, in one pass.

    With the other offsets fixed, a pixel is labelled `ch` exactly when its offset g
    beats d = max over the other channels of (z + offset) minus z[ch] (ties go to the
    lower index, as argmax does), and otherwise keeps the label `a` of that maximum.
    So each pixel switches from `a` to `ch` at one grid position, and the counts for
    all 33 grid values are cumulative sums of one histogram over (position, a, truth):
    one pass over the pixels instead of one per grid value (the search took 150 s on 2
    cores for a barely trained demo model, whose pixels are nearly all ambiguous)."""
    c = z.shape[1]
    others = z.double() + off.double()
    zc = z[:, ch].double()
    others[:, ch] = -torch.inf
    m, a = others.max(1)
    d = m - zc
    grid = GRID.double()
    first = torch.where(torch.tensor(ch) < a, torch.searchsorted(grid, d, right=False),
                        torch.searchsorted(grid, d, right=True))  # first grid index where ch wins
    n_grid = len(grid)
    hist = torch.bincount((first * c + a) * c + t, minlength=(n_grid + 1) * c * c).view(n_grid + 1, c, c)
    switched = hist[:n_grid].cumsum(0).double()  # [grid, a, truth]: pixels labelled ch instead of a
    base = sure + _counts(a, t, c)  # everything labelled as if ch never won
    tp = base[:, 0].expand(n_grid, c).clone()
    fp = base[:, 1].expand(n_grid, c).clone()
    idx = torch.arange(c)
    lost_tp = switched[:, idx, idx]  # pixels a == truth that went to ch
    lost_all = switched.sum(2)
    tp -= lost_tp
    fp -= lost_all - lost_tp
    tp[:, ch] += switched[:, :, ch].sum(1)
    fp[:, ch] += switched.sum((1, 2)) - switched[:, :, ch].sum(1)
    return mean_dice(tp, fp)


def _counts(pred: torch.Tensor, t: torch.Tensor, c: int) -> torch.Tensor:
    """(C, 3) TP, FP, FN per label value from two label vectors (one bincount of the pairs)."""
    m = torch.bincount(pred * c + t, minlength=c * c).view(c, c).double()  # [pred, true]
    tp = m.diagonal()
    return torch.stack([tp, m.sum(1) - tp, m.sum(0) - tp], 1)
