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
