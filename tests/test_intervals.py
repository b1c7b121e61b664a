"""Bootstrap intervals of pooled Dice (evaluate) and paired differences (compare)."""

from __future__ import annotations

import numpy as np
import pytest

from hemoseg.errors import HemosegError
from hemoseg.evaluation.metrics import bootstrap_dice, group_keys, paired_difference, summarize


def _counts(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2, 3) TP/FP/FN for two classes, varying from image to image."""
    rng = np.random.default_rng(seed)
    tp = rng.integers(0, 400, (n, 2))
    return np.stack([tp, rng.integers(0, 120, (n, 2)), rng.integers(0, 120, (n, 2))], axis=-1)


def test_interval_holds_the_estimate_and_is_reproducible():
    c = _counts(80)
    ci = bootstrap_dice(c, ["a", "b"])
    point = summarize(c, ["a", "b"])
    lo, hi = ci["dice_pooled_mean"]
    assert lo < point["dice_pooled_mean"] < hi and hi - lo < 0.2
    for name in ("a", "b"):
        assert ci["per_class"][name][0] < point["per_class"][name]["dice"] < ci["per_class"][name][1]
    assert bootstrap_dice(c, ["a", "b"]) == ci  # seeded
    assert ci["unit"] == "image" and ci["units"] == 80


def test_slices_of_one_patient_are_resampled_together():
    """Five identical slices per patient carry the information of one: resampling slices
    would pretend there are five times as many, and give too narrow an interval."""
    patients = _counts(16, seed=1)
    slices = np.repeat(patients, 5, axis=0)
    keys = [f"{i // 5:04d}_{i % 5:02d}.jpg" for i in range(len(slices))]
    by_slice = bootstrap_dice(slices, ["a", "b"])["dice_pooled_mean"]
    by_patient = bootstrap_dice(slices, ["a", "b"], group_keys(keys, r"^(\d+)_"))
    assert by_patient["unit"] == "group" and by_patient["units"] == 16
    lo, hi = by_patient["dice_pooled_mean"]
    assert hi - lo > 1.5 * (by_slice[1] - by_slice[0])


def test_paired_difference():
    a = _counts(60, seed=2)
    same = paired_difference(a, a)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0]}
    better = a.copy()
    better[..., 1] //= 2  # half the false positives on every image
    d = paired_difference(a, better)
    assert d["difference"] > 0 and d["ci95"][0] > 0  # a consistent gain: the interval excludes 0
    flipped = paired_difference(better, a)
    assert flipped["difference"] == pytest.approx(-d["difference"]) and flipped["ci95"][1] < 0


def test_group_pattern_errors_are_one_line():
    assert group_keys(["0016_15.jpg", "0016_16.jpg", "0023_08.jpg"], r"^(\d+)_") == ["0016", "0016", "0023"]
    assert group_keys(["x.jpg"], None) is None
    with pytest.raises(HemosegError, match=r"does not match the file name 'scan.jpg'"):
        group_keys(["0016_15.jpg", "scan.jpg"], r"^(\d+)_")
    with pytest.raises(HemosegError, match="is not a regular expression"):
        group_keys(["a"], "(")


def test_detection_intervals():
    """Any-lesion sensitivity and specificity get intervals too; a split without
    lesion-free images has no specificity to bound."""
    c = _counts(40, seed=3)
    c[:10] = 0  # ten lesion-free images without a prediction: true negatives
    c[10:14, :, 0] = 0
    c[10:14, :, 2] = 0  # four lesion-free images with false positives
    c[14:18, :, 0] = 0
    c[14:18, :, 1] = 0  # four lesions missed entirely
    point = summarize(c, ["a", "b"])["detection"]
    ci = bootstrap_dice(c, ["a", "b"])["detection"]
    for key in ("sensitivity", "specificity"):
        assert ci[key][0] <= point[key] <= ci[key][1] and ci[key][0] < ci[key][1]
    assert point["specificity"] == pytest.approx(10 / 14) and point["sensitivity"] == pytest.approx(22 / 26)
    assert bootstrap_dice(_counts(20), ["a", "b"])["detection"]["specificity"] is None
