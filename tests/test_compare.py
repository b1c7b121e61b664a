"""`hemoseg compare`: evaluated runs side by side, from what train and evaluate wrote."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from blob_data import make_blob_export
from hemoseg.cli.main import main
from hemoseg.evaluation.compare import describe_recipe
from hemoseg.training.config import PRESETS

TINY = ["--size", "32", "--width", "4", "--epochs", "1", "--coarse", "0", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = make_blob_export(root / "blobs")
    gated, plain = root / "gated", root / "plain"
    assert main(["train", str(data), "--out", str(gated), *TINY]) == 0
    assert main(["train", str(data), "--out", str(plain), "--no-attention", *TINY]) == 0
    for run in (gated, plain):
        assert main(["evaluate", str(run), str(data), "--split", "test", "--quiet"]) == 0
    assert main(["evaluate", str(plain), str(data), "--split", "valid", "--quiet"]) == 0
    return data, gated, plain


def test_rows_carry_what_train_and_evaluate_wrote(runs, tmp_path, capsys):
    _, gated, plain = runs
    capsys.readouterr()
    assert main(["compare", str(gated), str(plain), "--csv", str(tmp_path / "t.csv")]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # same data, split and settings: nothing to warn about
    lines = out.strip().splitlines()
    assert lines[0].startswith("| run | recipe |") and len(lines) == 4
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["run"] for r in rows] == [str(gated), str(plain)]
    for run, row in zip((gated, plain), rows):
        m = json.loads((run / "eval-test" / "metrics.json").read_text())
        s = json.loads((run / "summary.json").read_text())
        assert row["Dice pooled"] == f"{m['dice_pooled_mean']:.3f}"
        assert row["Dice bleed"] == f"{m['per_class']['bleed']['dice']:.3f}"
        assert row["parameters"] == str(s["parameters"]) and row["split"] == "test"
    assert " attention=False" in rows[1]["recipe"] and "attention" not in rows[0]["recipe"]
    assert int(rows[1]["parameters"]) < int(rows[0]["parameters"])  # no gates, fewer weights


def test_an_evaluation_folder_can_be_given_and_a_mismatch_is_named(runs, capsys):
    _, gated, plain = runs
    capsys.readouterr()
    assert main(["compare", str(gated), str(plain / "eval-valid")]) == 0
    out, err = capsys.readouterr()
    assert "| valid |" in out.replace(" +TTA", "")
    assert err.strip().splitlines() == [
        'hemoseg: note: rows differ in split ("test", "valid"): their scores are not comparable']


def test_recipe_is_named_by_its_nearest_preset():
    assert describe_recipe(PRESETS["paper"].to_dict()) == "paper"
    assert describe_recipe(PRESETS["default"].override(seed=7, max_minutes=3).to_dict()) == "default"
    assert describe_recipe(PRESETS["default"].override(lr=1e-3, attention=False).to_dict()) == \
        "default attention=False lr=0.001"


@pytest.mark.parametrize("case, words", [
    ("missing", "is not a run or evaluation folder"),
    ("empty", "holds neither summary.json (a run) nor metrics.json"),
    ("unevaluated", "has no eval-test/metrics.json (run 'hemoseg evaluate"),
    ("corrupt", "metrics.json: is not a readable JSON file"),
])
def test_bad_folders_get_one_line(runs, tmp_path, capsys, case, words):
    _, gated, _ = runs
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "unevaluated":
        target.mkdir()
        shutil.copy(gated / "summary.json", target)
    elif case == "corrupt":
        shutil.copytree(gated / "eval-test", target)
        (target / "metrics.json").write_text('{"dice_pooled_mean": 0.5,')
    capsys.readouterr()
    assert main(["compare", str(gated), str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and words in err and str(target) in err


def test_intervals_and_the_paired_difference(runs, tmp_path, capsys):
    """per_image.csv keeps each image's counts, which reproduce the pooled Dice; compare
    pairs the rows on those images, and a run against itself differs by exactly 0."""
    import numpy as np

    data, gated, plain = runs
    m = json.loads((gated / "eval-test" / "metrics.json").read_text())
    rows = list(csv.DictReader(open(gated / "eval-test" / "per_image.csv")))
    tp, fp, fn = (sum(int(r[f"{k}[bleed]"]) for r in rows) for k in ("tp", "fp", "fn"))
    assert m["per_class"]["bleed"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    lo, hi = m["ci95"]["dice_pooled_mean"]
    assert lo <= m["dice_pooled_mean"] <= hi and m["ci95"]["unit"] == "image"

    capsys.readouterr()
    assert main(["compare", str(gated), str(plain), str(gated / "eval-test"), "--csv", str(tmp_path / "t.csv")]) == 0
    table = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["vs first [95% CI]"] for r in table][::2] == ["(reference)", "+0.000 [+0.000, +0.000]"]
    diff = table[1]["vs first [95% CI]"]
    expected = json.loads((plain / "eval-test" / "metrics.json").read_text())["dice_pooled_mean"] - m["dice_pooled_mean"]
    assert diff.startswith(f"{expected:+.3f} [")
    low, high = (float(x) for x in diff.split("[")[1].rstrip("]").split(", "))
    assert low <= expected <= high
    assert all(np.isfinite([float(x) for x in r["95% CI"].split("-")]).all() for r in table)

    # a patient pattern that misses a file name is one line, for evaluate and compare alike
    for cmd in (["evaluate", str(gated), str(data), "--split", "test", "--out", str(tmp_path / "e"), "--quiet"],
                ["compare", str(gated), str(plain)]):
        capsys.readouterr()
        assert main([*cmd, "--group", r"^patient(\d+)_"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not match the file name" in err
    assert not (tmp_path / "e").exists()


def test_binary_and_multiclass_pair_up_on_a_one_class_dataset(runs, tmp_path, capsys):
    """The paper's binary head against the default softmax on one class: the same mask,
    so compare pairs them instead of calling them incomparable."""
    data, gated, _ = runs
    binary = tmp_path / "binary"
    assert main(["train", str(data), "--out", str(binary), "--mode", "binary", *TINY]) == 0
    assert main(["evaluate", str(binary), str(data), "--split", "test", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", str(binary), str(gated), "--csv", str(tmp_path / "t.csv")]) == 0
    assert capsys.readouterr().err == ""
    versus = list(csv.DictReader(open(tmp_path / "t.csv")))[1]["vs first [95% CI]"]
    assert versus != "n/a" and versus.count("[") == 1
