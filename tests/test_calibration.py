"""Per-class logit offsets: the search finds a known bias, never makes validation
worse, leaves absent classes alone, and lands in the checkpoint's head."""

from __future__ import annotations

import json

import pytest
import torch

from blob_data import make_blob_export
from hemoseg.cli.main import main
from hemoseg.evaluation.metrics import confusion, to_onehot
from hemoseg.training.calibration import fit_offsets
from hemoseg.training.checkpoint import load_checkpoint


def pooled_dice(logits, target, mode, k, offsets):
    pred = to_onehot(logits + torch.tensor(offsets).view(1, -1, 1, 1), mode, k)
    tp, fp, fn = confusion(pred, to_onehot(target, mode, k)).sum(0).double().unbind(-1)
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def biased_softmax_case(seed=0):
    """Three classes in disjoint squares; logits favour the truth by a noisy margin,
    then class 2's logit is pushed down by 1.5 so it is under-called."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(6, 32, 32, dtype=torch.long)
    target[:, 4:14, 4:14] = 1
    target[:, 18:28, 18:28] = 2
    logits = torch.randn(6, 4, 32, 32, generator=g) * 1.0
    logits += 2.0 * torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2)
    logits[:, 2] -= 1.5
    return logits, target


def test_softmax_offsets_undo_a_known_bias_and_never_hurt():
    logits, target = biased_softmax_case()
    off = fit_offsets(logits, target, "multiclass", 3)
    assert off.values[0] == 0.0 and off.values[3] == 0.0  # background fixed; class 3 absent: nothing to fit
    assert 0.75 <= off.values[2] <= 2.25  # roughly gives back the 1.5 taken away
    assert off.dice_after > off.dice_before + 0.05
    # The reported numbers are the Dice the offsets really give (classes present only).
    d0 = pooled_dice(logits, target, "multiclass", 3, [0.0] * 4)[:2].mean()
    d1 = pooled_dice(logits, target, "multiclass", 3, off.values)[:2].mean()
    assert off.dice_before == pytest.approx(float(d0)) and off.dice_after == pytest.approx(float(d1))


def test_classes_seen_in_too_few_validation_images_keep_offset_zero():
    logits, target = biased_softmax_case()
    target[2:, target[0] == 2] = 0  # class 2 now in only two images: too little to fit a bias on
    off = fit_offsets(logits, target, "multiclass", 3)
    assert off.values[2] == 0.0
    sig_target = torch.stack([target == 1, target == 2], 1)
    off = fit_offsets(logits[:, 1:3], sig_target, "multilabel", 2)
    assert off.values[1] == 0.0


def test_softmax_offsets_stay_zero_when_the_model_is_already_right():
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 2:8, 2:8] = 1
    logits = 10.0 * torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    off = fit_offsets(logits, target, "multiclass", 1)
    assert off.values == [0.0, 0.0] and off.dice_before == off.dice_after == 1.0


def test_sigmoid_offsets_move_each_threshold_on_its_own():
    g = torch.Generator().manual_seed(1)
    target = torch.zeros(4, 2, 32, 32)
    target[:, 0, 5:20, 5:20] = 1
    target[:, 1, 10:30, 2:12] = 1
    logits = torch.randn(4, 2, 32, 32, generator=g) + (target * 4 - 2)
    logits[:, 0] += 1.25  # class 0 over-called
    off = fit_offsets(logits, target, "multilabel", 2)
    assert -2.0 <= off.values[0] <= -0.5 and abs(off.values[1]) <= 0.5
    assert off.dice_after >= off.dice_before


def test_training_folds_the_offsets_into_the_best_checkpoint(tmp_path, one_thread):
    """one_thread: the two runs below train bit for bit alike."""
    data = make_blob_export(tmp_path / "blobs")
    # Deep supervision off: with it, 5 epochs fit these blobs so well that no offset helps,
    # and the test needs a model whose boundary calibration moves. No augmentation: with
    # the default policy one CPU (Intel Xeon) ended these 5 epochs at validation Dice 0,
    # where no offset in the grid helps either.
    args = ["--size", "64", "--width", "8", "--epochs", "5", "--batch-size", "8", "--seed", "0", "--no-class-weighting",
            "--deep-supervision", "0", "--augmentation", "none", "--quiet"]
    assert main(["train", str(data), "--out", str(tmp_path / "cal"), *args]) == 0
    assert main(["train", str(data), "--out", str(tmp_path / "plain"), *args, "--no-calibrate"]) == 0
    cal, plain = load_checkpoint(tmp_path / "cal"), load_checkpoint(tmp_path / "plain")
    assert "logit_offsets" not in plain.meta
    offsets = cal.meta["logit_offsets"]
    assert len(offsets) == 2 and offsets[0] == 0.0 and offsets[1] != 0.0  # background + "bleed"
    delta = cal.model_state["head.bias"] - plain.model_state["head.bias"]
    assert torch.allclose(delta, torch.tensor(offsets), atol=1e-6)
    for key, v in cal.model_state.items():
        if key != "head.bias":
            assert torch.equal(v, plain.model_state[key]), key
    assert cal.meta["val_dice_calibrated"] > cal.meta["best_val_dice"]


def test_lesion_free_validation_skips_calibration_and_keeps_json_strict(tmp_path):
    data = make_blob_export(tmp_path / "blobs", n={"train": 10, "valid": 1, "test": 1})  # valid0 is a negative
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--size", "32", "--coarse", "0", "--width", "4", "--epochs", "1",
                 "--batch-size", "4", "--quiet"]) == 0
    assert "logit_offsets" not in load_checkpoint(run).meta
    summary = json.loads((run / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert "val_dice_calibrated" not in summary
    assert "calibration skipped" in (run / "train.log").read_text()


def test_softmax_search_ends_where_no_single_offset_move_helps():
    """Softmax offsets interact, so the coordinate search must run to a fixed point."""
    from hemoseg.training.calibration import GRID, _counts, _dice

    g = torch.Generator().manual_seed(3)
    target = torch.zeros(6, 40, 40, dtype=torch.long)
    for c, (a, b) in enumerate([(4, 20), (14, 30), (22, 38)], start=1):  # overlapping bands: shared borders
        target[:, a:b, a // 2:b] = c
    logits = 3.0 * torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    logits += 2.5 * torch.randn(logits.shape, generator=g) + torch.tensor([0.0, 1.5, -1.0, 2.0]).view(1, 4, 1, 1)
    off = fit_offsets(logits, target, "multiclass", 3)
    z, t = logits.permute(0, 2, 3, 1).reshape(-1, 4), target.reshape(-1)

    def score(o):
        tp, fp, fn = _counts((z + torch.tensor(o)).argmax(1), t, 4)[1:].unbind(-1)
        return float(_dice(tp, fp, fn).mean())

    best = score(off.values)
    assert abs(best - off.dice_after) < 1e-9
    for ch in (1, 2, 3):
        for v in GRID.tolist():
            trial = list(off.values)
            trial[ch] = v
            assert score(trial) <= best + 1e-4, (ch, v)


def _reference_softmax_fit(logits, target, c):
    """The search done one grid value at a time, as it was before the one-pass sweep."""
    from hemoseg.training.calibration import GRID, MIN_IMAGES, _counts, _dice

    z, t = logits.permute(0, 2, 3, 1).reshape(-1, c), target.reshape(-1)
    images_with = torch.stack([(target == j).flatten(1).any(1).sum() for j in range(1, c)])
    present = images_with > 0
    fitted = (torch.nonzero(images_with >= MIN_IMAGES).flatten() + 1).tolist()

    def score(o):
        tp, fp, fn = _counts((z + o).argmax(1), t, c)[1:].unbind(-1)
        return float(_dice(tp, fp, fn)[present].mean())

    off = torch.zeros(c)
    best = score(off)
    changed = True
    while changed:
        changed = False
        for ch in fitted:
            for g in GRID.tolist():
                trial = off.clone()
                trial[ch] = g
                s = score(trial)
                if s > best + 1e-4:
                    best, off, changed = s, trial, True
    return off.tolist(), best


@pytest.mark.parametrize("seed,noise", [(0, 1.0), (1, 2.5), (2, 6.0)])
def test_one_pass_sweep_finds_what_the_grid_value_by_value_search_finds(seed, noise):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(8, 32, 32, dtype=torch.long)
    for c, (a, b) in enumerate([(2, 12), (8, 20), (16, 30), (24, 31)], start=1):
        target[:, a:b, a // 2:b] = c
    target[5] = 0  # an image without lesions
    logits = 2.0 * torch.nn.functional.one_hot(target, 5).permute(0, 3, 1, 2).float()
    logits += noise * torch.randn(logits.shape, generator=g) + torch.tensor([1.0, 0.5, -1.0, 2.0, -0.5]).view(1, 5, 1, 1)
    want_off, want_dice = _reference_softmax_fit(logits, target, 5)
    got = fit_offsets(logits, target, "multiclass", 4)
    assert got.values == [round(v, 4) for v in want_off]
    assert abs(got.dice_after - want_dice) < 1e-9
