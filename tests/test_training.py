"""Training end to end on tiny synthetic data: it must actually learn, and
bad datasets must be refused with one line."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from blob_data import make_blob_export
from hemoseg.cli.main import main
from hemoseg.data.synth import generate
from hemoseg.models.attention_unet import build_model, count_parameters
from hemoseg.models.config import ModelConfig
from hemoseg.training.checkpoint import load_checkpoint
from hemoseg.training.config import PRESETS
from hemoseg.training.trainer import lr_factor


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=3, train=48, valid=12, test=12, size=64, studies=0)
    return out / "coco"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return make_blob_export(tmp_path_factory.mktemp("blobs"))


def last_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_default_recipe_learns_and_writes_a_complete_run(blobs, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    rc = main(["train", str(blobs), "--out", str(run), "--size", "64", "--width", "8", "--epochs", "8",
               "--batch-size", "8", "--seed", "0", "--quiet"])
    assert rc == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    first, best = float(rows[0]["val_dice"]), max(float(r["val_dice"]) for r in rows)
    # An untrained network scores ~0 here; a working loop reaches > 0.9 in 8 short epochs.
    assert best > 0.8 and best > first + 0.5, (first, best)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in ("best.safetensors", "last.safetensors", "curves.png", "summary.json", "train.log"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run)
    assert ckpt.classes.names == ("bleed",) and ckpt.mode == "multiclass" and ckpt.preprocessing.size == 64
    assert 0 < ckpt.preprocessing.std[0] < 1 and ckpt.meta["best_val_dice"] == pytest.approx(best)
    summary = json.loads((run / "summary.json").read_text())
    # epoch 1 pays for decoding once, epoch 2 only indexes memory
    assert summary["epoch2_data_seconds"] < summary["epoch1_data_seconds"]
    # the precision that ran is on record, and the log says why
    assert summary["precision"] in ("fp32", "bf16") and ckpt.meta["precision"] == summary["precision"]
    assert "precision: " in (run / "train.log").read_text()

    # evaluate on the held-out test split writes every output, at a comparable score
    rc = main(["evaluate", str(run), str(blobs), "--split", "test", "--quiet"])
    assert rc == 0
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["num_images"] == 10 and set(metrics["per_class"]) == {"bleed"}
    assert metrics["dice_pooled_mean"] > 0.8
    assert metrics["detection"]["images_with_lesion"] == 8 and metrics["detection"]["images_without_lesion"] == 2
    assert (run / "eval-test" / "per_image.csv").is_file() and (run / "eval-test" / "worst_cases.png").is_file()
    # flip test-time augmentation: same outputs, recorded as such, still a working model
    assert main(["evaluate", str(run), str(blobs), "--split", "test", "--tta", "--out", str(tmp_path / "tta"),
                 "--quiet"]) == 0
    tta = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert tta["tta"] is True and metrics["tta"] is False and tta["dice_pooled_mean"] > 0.8


def test_patch_training_predicts_whole_images(blobs, tmp_path, one_thread):
    run = tmp_path / "patch"
    assert main(["train", str(blobs), "--out", str(run), "--size", "64", "--patch", "32", "--coarse", "0", "--width", "8",
                 "--epochs", "8", "--batch-size", "8", "--quiet"]) == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert max(float(r["val_dice"]) for r in rows) > 0.6  # validated on whole 64x64 images


def test_coarse_to_fine_switches_to_full_resolution_on_schedule(blobs, tmp_path, one_thread):
    run = tmp_path / "coarse"
    assert main(["train", str(blobs), "--out", str(run), "--size", "64", "--width", "8", "--epochs", "8",
                 "--batch-size", "8", "--coarse", "0.5", "--seed", "0", "--quiet"]) == 0
    log = (run / "train.log").read_text()
    assert "coarse-to-fine: full resolution from epoch 5," in log, log  # half of 8 epochs' steps
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert max(float(r["val_dice"]) for r in rows[4:]) > 0.8  # validated at full resolution throughout
    assert [float(r["coarse_share"]) for r in rows] == [1.0] * 4 + [0.0] * 4
    assert load_checkpoint(run).meta["train_config"]["coarse"] == 0.5
    assert PRESETS["paper"].coarse == 0 < PRESETS["default"].coarse  # the study trained at one resolution


def test_paper_preset_is_the_study_recipe():
    p = PRESETS["paper"]
    assert (p.mode, p.size, p.width, p.epochs, p.optimizer, p.lr, p.loss, p.schedule, p.augmentation) == (
        "binary", 256, 64, 20, "adam", 1e-4, "bce_dice", "constant", "paper")
    assert lr_factor(0.0, p) == lr_factor(0.9, p) == 1.0
    assert p.stem == 1 and PRESETS["default"].stem == 2  # the study's network sees its labels' grid
    assert p.deep_supervision == 0 < PRESETS["default"].deep_supervision  # one head, as in the study
    # paper width reproduces the study's scale (~31 M parameters); gates off is the U-Net baseline
    n_att = count_parameters(build_model(ModelConfig(width=64, out_channels=1)))
    n_plain = count_parameters(build_model(ModelConfig(width=64, out_channels=1, attention=False)))
    assert 30e6 < n_att < 33e6 and n_plain < n_att


def test_default_schedule_warms_up_then_anneals():
    d = PRESETS["default"]
    assert lr_factor(0.0, d) < 0.05 and lr_factor(d.warmup, d) == pytest.approx(1.0)
    assert lr_factor(1.0, d) == pytest.approx(0.01)


def test_binary_paper_preset_trains(synth, tmp_path, one_thread):
    run = tmp_path / "paper"
    assert main(["train", str(synth), "--out", str(run), "--preset", "paper", "--size", "32", "--width", "4",
                 "--epochs", "1", "--quiet"]) == 0
    ckpt = load_checkpoint(run)
    assert ckpt.mode == "binary" and ckpt.model_config.out_channels == 1


def test_no_attention_flag(synth, tmp_path, one_thread):
    run = tmp_path / "plain"
    assert main(["train", str(synth), "--out", str(run), "--no-attention", "--size", "32", "--coarse", "0", "--width", "4",
                 "--epochs", "1", "--quiet"]) == 0
    assert load_checkpoint(run).model_config.attention is False


def test_deep_supervision_heads_train_and_stay_out_of_inference(blobs, tmp_path, one_thread):
    import torch

    m = build_model(ModelConfig(out_channels=3, width=4, depth=4, stem=2, deep_supervision=2))
    outs = m.train()(torch.zeros(1, 1, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 32), (16, 16), (8, 8)]
    assert tuple(m.eval()(torch.zeros(1, 1, 64, 64)).shape) == (1, 3, 32, 32)
    run = tmp_path / "ds"
    assert main(["train", str(blobs), "--out", str(run), "--deep-supervision", "2", "--size", "64", "--width", "4",
                 "--epochs", "1", "--quiet"]) == 0
    ckpt = load_checkpoint(run)
    assert ckpt.model_config.deep_supervision == 2 and "aux_heads.1.weight" in ckpt.model_state
    assert main(["evaluate", str(run), str(blobs), "--split", "valid", "--quiet"]) == 0


def test_bad_items_are_skipped_and_counted(synth, tmp_path, one_thread):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    doc = json.loads((data / "train" / "_annotations.coco.json").read_text())
    (data / "train" / doc["images"][0]["file_name"]).unlink()
    (data / "train" / doc["images"][1]["file_name"]).write_bytes(b"\xff\xd8 truncated")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--size", "32", "--coarse", "0", "--width", "4", "--epochs", "1",
                 "--quiet"]) == 0
    log = (run / "train.log").read_text()
    assert "train: 46 images (2 items skipped: 1 x image file missing, 1 x corrupt image file)" in log


def test_no_usable_training_images(synth, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    for f in (data / "train").glob("*.jpg"):
        f.unlink()
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert last_line(capsys) == f"hemoseg: error: {data}: dataset has no usable training images"
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_class_in_valid_missing_from_train(synth, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    path = data / "train" / "_annotations.coco.json"
    doc = json.loads(path.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != 4]
    path.write_text(json.dumps(doc))
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    msg = last_line(capsys)
    assert msg.startswith("hemoseg: error: ") and "Subarachnoid hemorrhage appear in 'valid' but have no training annotation" in msg


def test_size_must_fit_the_network_depth(synth, tmp_path, capsys):
    assert main(["train", str(synth), "--out", str(tmp_path / "run"), "--size", "50", "--coarse", "0",
                 "--quiet"]) == 2
    assert "must be a multiple of 32 for depth 5 and stem 2" in last_line(capsys)
    assert main(["train", str(synth), "--out", str(tmp_path / "run1"), "--size", "40", "--stem", "1", "--coarse", "0", "--quiet"]) == 2
    assert "must be a multiple of 16 for depth 5" in last_line(capsys)
    # the coarse phase halves the input, so the input must survive one more halving
    assert main(["train", str(synth), "--out", str(tmp_path / "run2"), "--size", "32", "--quiet"]) == 2
    assert "must be a multiple of 64 for depth 5 and stem 2 with --coarse 0.4 (--coarse 0" in last_line(capsys)


@pytest.mark.parametrize("flag, value, words", [("--epochs", "0", "must be positive"),
                                                ("--workers", "-1", "must be zero or more"),
                                                ("--lr", "abc", "not a number"),
                                                ("--coarse", "1", "must be at least 0 and below 1")])
def test_impossible_numbers_are_refused_before_any_work(synth, tmp_path, capsys, flag, value, words):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", str(synth), "--out", str(run), flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: {words}" in last_line(capsys)
    assert not run.exists()


def test_class_weighting_is_the_default_and_the_flag_turns_it_off(blobs, tmp_path, one_thread):
    run = tmp_path / "run"
    assert main(["train", str(blobs), "--out", str(run), "--size", "32", "--coarse", "0", "--width", "4", "--epochs", "1",
                 "--batch-size", "8", "--no-class-weighting", "--quiet"]) == 0
    assert load_checkpoint(run).meta["train_config"]["class_weighting"] is False
    assert PRESETS["default"].class_weighting is True and PRESETS["paper"].class_weighting is False


def test_augmentation_flag_picks_a_policy_and_flip_only_flips(blobs, tmp_path, one_thread):
    import numpy as np

    from hemoseg.data.augment import build_augmentation

    run = tmp_path / "flip"
    assert main(["train", str(blobs), "--out", str(run), "--size", "32", "--coarse", "0", "--width", "4", "--epochs", "1",
                 "--batch-size", "8", "--augmentation", "flip", "--quiet"]) == 0
    assert load_checkpoint(run).meta["train_config"]["augmentation"] == "flip"
    assert PRESETS["default"].augmentation == "default"  # the flag changes a run, not the preset
    # the image either stays exactly as it was or is exactly mirrored: no warp, no intensity change
    aug = build_augmentation("flip", seed=0)
    assert [type(t).__name__ for t in aug.transforms] == ["HorizontalFlip"]
    img = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    mask = (img % 7 == 0).astype(np.uint8)
    seen = set()
    for _ in range(40):
        out = aug(image=img, mask=mask)
        flipped = np.array_equal(out["image"], img[:, ::-1]) and np.array_equal(out["mask"], mask[:, ::-1])
        assert flipped or (np.array_equal(out["image"], img) and np.array_equal(out["mask"], mask))
        seen.add(flipped)
    assert seen == {True, False}
