"""`hemoseg train --init RUN`: weights carry over, classes are matched by name."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from blob_data import make_blob_export
from hemoseg.cli.main import main
from hemoseg.training.checkpoint import load_checkpoint
from hemoseg.training.transfer import channel_map


def test_channels_are_matched_by_name_across_heads():
    # softmax -> softmax, classes reordered and one unknown
    assert channel_map("multiclass", ["a", "b"], "multiclass", ["b", "c"]) == [[(0, 1.0)], [(2, 1.0)], []]
    # softmax -> sigmoid: the logit against background
    assert channel_map("multiclass", ["a", "b"], "binary", ["b"]) == [[(2, 1.0), (0, -1.0)]]
    assert channel_map("multiclass", ["a", "b"], "multilabel", ["a", "b"]) == [[(1, 1.0), (0, -1.0)],
                                                                              [(2, 1.0), (0, -1.0)]]
    # sigmoid -> softmax: background has no counterpart and starts fresh
    assert channel_map("multilabel", ["a", "b"], "multiclass", ["b"]) == [[], [(1, 1.0)]]
    # a binary head over several classes is "lesion", which no named class matches
    assert channel_map("multiclass", ["a"], "binary", ["a", "b"]) == [[]]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A model that has learned the blob task (class name "bleed")."""
    root = tmp_path_factory.mktemp("transfer")
    data = make_blob_export(root / "data")
    run = root / "src"
    assert main(["train", str(data), "--out", str(run), "--size", "64", "--width", "8", "--epochs", "8",
                 "--batch-size", "8", "--stem", "1", "--quiet"]) == 0
    return data, run


def _first_epoch_dice(run) -> float:
    return float(next(csv.DictReader(open(run / "history.csv")))["val_dice"])


def _train_from(source_run, data, out, *extra) -> int:
    # A learning rate too small to learn anything in one epoch: what epoch 1 scores is what was loaded.
    return main(["train", str(data), "--out", str(out), "--size", "64", "--epochs", "1", "--batch-size", "8",
                 "--stem", "1", "--lr", "1e-6", "--no-calibrate", "--quiet", "--init", str(source_run), *extra])


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_init_starts_from_the_learned_detector(source, tmp_path, mode, one_thread):
    data, src = source
    learned = load_checkpoint(src).meta["best_val_dice"]
    assert learned > 0.8
    assert _train_from(src, data, tmp_path / "init", "--mode", mode) == 0
    assert _first_epoch_dice(tmp_path / "init") > learned - 0.1
    ckpt = load_checkpoint(tmp_path / "init")
    assert ckpt.model_config.width == 8  # the architecture came from the source run
    assert ckpt.meta["train_config"]["init"] == str(src)
    assert ckpt.preprocessing.mean == load_checkpoint(src).preprocessing.mean
    # control: the same one epoch from scratch has learned nothing
    assert main(["train", str(data), "--out", str(tmp_path / "fresh"), "--size", "64", "--epochs", "1",
                 "--batch-size", "8", "--stem", "1", "--lr", "1e-6", "--width", "8", "--no-calibrate", "--quiet",
                 "--mode", mode]) == 0
    assert _first_epoch_dice(tmp_path / "fresh") < 0.5


def test_unknown_class_gets_a_fresh_head_but_the_learned_body(source, tmp_path, one_thread):
    data, src = source
    doc = json.loads((data / "train" / "_annotations.coco.json").read_text())
    renamed = tmp_path / "renamed"
    for split in ("train", "valid", "test"):
        (renamed / split).mkdir(parents=True)
        d = json.loads((data / split / "_annotations.coco.json").read_text())
        d["categories"][1]["name"] = "clot"
        (renamed / split / "_annotations.coco.json").write_text(json.dumps(d))
        for img in d["images"]:
            (renamed / split / img["file_name"]).write_bytes((data / split / img["file_name"]).read_bytes())
    assert doc["categories"][1]["name"] == "bleed"
    assert _train_from(src, renamed, tmp_path / "run") == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "learned detectors kept for: none" in log
    got, want = load_checkpoint(tmp_path / "run").model_state, load_checkpoint(src).model_state
    convs = [k for k in want if want[k].dim() == 4 and want[k].shape[-1] == 3]
    assert convs and all(torch.allclose(got[k], want[k], atol=1e-3) for k in convs)  # lr 1e-6: barely moved
    # the head: background keeps its learned row, the unknown class starts fresh
    assert torch.allclose(got["head.weight"][0], want["head.weight"][0], atol=1e-3)
    assert not torch.allclose(got["head.weight"][1], want["head.weight"][1], atol=1e-3)


def test_init_refuses_what_does_not_fit(source, tmp_path, capsys):
    data, src = source
    assert _train_from(src, data, tmp_path / "a", "--width", "16") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--width contradicts the --init model (width 8" in err[0] and str(src) in err[0]
    assert _train_from(data / "train" / "_annotations.coco.json", data, tmp_path / "b") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable checkpoint" in err[0]
