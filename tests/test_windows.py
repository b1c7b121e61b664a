"""Multi-window input: CT windows as input channels, recorded in the checkpoint
and applied the same way to images, DICOM and NIfTI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from blob_data import make_blob_export
from hemoseg.cli.main import main
from hemoseg.data.coco import load_dataset
from hemoseg.data.preprocessing import NAMED_WINDOWS, Preprocessing, parse_windows, window_to_uint8
from hemoseg.data.synth import generate
from hemoseg.training.checkpoint import load_checkpoint

THREE = [[40, 80], [80, 200], [600, 2800]]


def last_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_windows_become_channels_with_their_own_statistics():
    prep = Preprocessing(size=4, windows=THREE, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 1.0))
    hu = np.array([[0.0, 40.0], [80.0, 1000.0]], np.float32)
    disp = prep.window_hu(hu)
    assert disp.shape == (2, 2, 3) and disp.dtype == np.uint8
    np.testing.assert_array_equal(disp[..., 0], [[0, 128], [255, 255]])  # brain: 0..80 HU
    np.testing.assert_array_equal(disp[..., 1], [[26, 76], [128, 255]])  # subdural: -20..180 HU
    x = prep.normalize(disp)
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(x[1], (disp[..., 1] / 255 - 0.2) / 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="mean has 2 values for 3 windows"):
        Preprocessing(windows=THREE, mean=(0.1, 0.2))


@pytest.mark.parametrize("windows", [[[40, 80]], THREE])
@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7), (2, 3, 5, 7)])
def test_normalize_table_lookup_matches_the_arithmetic(windows, shape):
    """uint8 input goes through a 256-entry table per channel; floats through arithmetic.
    The two must agree to the bit, at any batch depth."""
    prep = Preprocessing(windows=windows, mean=(0.1, 0.2, 0.3)[:len(windows)], std=(0.5, 0.25, 0.3)[:len(windows)])
    disp = np.random.default_rng(3).integers(0, 256, (*shape, len(windows)), dtype=np.uint8)
    x = prep.normalize(disp)
    assert x.dtype == np.float32 and x.shape == (*shape[:-2], len(windows), *shape[-2:])
    np.testing.assert_array_equal(x, prep.normalize(disp.astype(np.float32)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_windowing_is_the_plain_formula_to_the_bit(dtype):
    """The in-place windowing equals round((HU - low) * 255 / width) clipped, computed in
    float32, on every HU a scanner stores and on the half-way values where rounding turns."""
    hu = np.arange(-1100, 3100, dtype=np.float32)
    if dtype is not np.int16:
        hu = np.concatenate([hu, np.arange(-1100, 3100, dtype=np.float32) + 0.5, [-1e4, 1e4]])
    hu = hu.astype(dtype).reshape(1, -1)
    for level, width in [*THREE, [30, 40], [35.5, 71]]:
        lo = level - width / 2.0
        plain = np.clip(np.rint((hu.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / width)), 0, 255)
        np.testing.assert_array_equal(window_to_uint8(hu, level, width), plain.astype(np.uint8))
    stacked = Preprocessing(windows=THREE).window_hu(hu)
    for k, (level, width) in enumerate(THREE):
        np.testing.assert_array_equal(stacked[..., k], window_to_uint8(hu, level, width))


def test_checkpoints_from_before_multi_window_input_still_load():
    old = {"size": 256, "window_center": 40.0, "window_width": 80.0, "mean": 0.2, "std": 0.3}
    prep = Preprocessing.from_dict(old)
    assert prep.windows == (NAMED_WINDOWS["brain"],) and prep.mean == (0.2,) and prep.std == (0.3,)
    assert Preprocessing.from_dict(json.loads(prep.to_json())) == prep


def test_window_names_and_levels():
    assert parse_windows("brain, subdural,L600/W2800") == tuple(tuple(map(float, w)) for w in THREE)
    for bad in ("brian", "L40", "L40/W0", ""):
        with pytest.raises(ValueError):
            parse_windows(bad)


def test_synthetic_export_can_carry_three_windows_as_colour(tmp_path):
    gray, colour = tmp_path / "gray", tmp_path / "colour"
    generate(gray, seed=1, train=4, valid=0, test=0, size=64, studies=0)
    generate(colour, seed=1, train=4, valid=0, test=0, size=64, studies=0, windows=parse_windows("brain,subdural,bone"))
    split = load_dataset(colour / "coco").splits["train"]
    assert split.windows == tuple(tuple(map(float, w)) for w in THREE)
    assert load_dataset(gray / "coco").splits["train"].windows == (NAMED_WINDOWS["brain"],)
    name = split.images[0].file_name
    rgb = np.asarray(Image.open(colour / "coco" / "train" / name), dtype=float)
    g = np.asarray(Image.open(gray / "coco" / "train" / name), dtype=float)
    assert rgb.shape == (64, 64, 3) and g.shape == (64, 64)
    assert np.abs(rgb[..., 0] - g).mean() < 2.5  # the same brain window, JPEG apart (~0.8 HU)
    # the subdural window compresses 200 HU into 256 levels: less contrast than the brain window
    assert rgb[..., 1].std() < rgb[..., 0].std()
    assert main(["synth", str(tmp_path / "x"), "--windows", "brain,bone"]) == 2


def test_data_check_names_the_windows_and_refuses_gray_images_in_a_colour_split(tmp_path, capsys):
    root = make_blob_export(tmp_path / "d", {"train": 3}, windows=THREE)
    assert main(["data", "check", str(root)]) == 0
    assert "3 images (brain+subdural+bone windows)" in capsys.readouterr().out
    Image.open(root / "train" / "train1.png").convert("L").save(root / "train" / "train1.png")
    assert main(["data", "check", str(root)]) == 2
    assert "train1.png is a L image, but the split declares 3 CT windows" in capsys.readouterr().out


def test_a_broken_window_declaration_is_an_error_that_names_it(tmp_path, capsys):
    root = make_blob_export(tmp_path / "d", {"train": 4})
    path = root / "train" / "_annotations.coco.json"
    doc = json.loads(path.read_text())
    doc["info"] = {"hemoseg_windows": [[40, -80]]}
    path.write_text(json.dumps(doc))
    assert main(["data", "check", str(root)]) != 0
    assert "info.hemoseg_windows" in capsys.readouterr().out


@pytest.fixture(scope="module")
def isoluminant(tmp_path_factory):
    return make_blob_export(tmp_path_factory.mktemp("iso"), windows=THREE)


def test_three_windows_reach_the_network_and_every_later_step(isoluminant, tmp_path, capsys, one_thread):
    """The discs have their surroundings' luminance, so only separate channels show them."""
    run = tmp_path / "run"
    assert main(["train", str(isoluminant), "--out", str(run), "--size", "64", "--width", "8", "--epochs", "8",
                 "--batch-size", "8", "--seed", "0", "--quiet"]) == 0
    ckpt = load_checkpoint(run)
    assert ckpt.preprocessing.channels == 3 and ckpt.model_config.in_channels == 3
    assert len(set(ckpt.preprocessing.mean)) == 3  # per-channel statistics
    assert main(["evaluate", str(run), str(isoluminant), "--split", "test", "--quiet"]) == 0
    assert json.loads((run / "eval-test" / "metrics.json").read_text())["dice_pooled_mean"] > 0.8

    # predict reads the colour channels of an RGB slice
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(isoluminant / "test" / "test1.png"), "--out", str(out)]) == 0
    capsys.readouterr()
    # a grayscale slice carries one window: refused with one line, nothing written
    gray = tmp_path / "gray.png"
    Image.open(isoluminant / "test" / "test1.png").convert("L").save(gray)
    assert main(["predict", str(run), str(gray), "--out", str(tmp_path / "p2")]) != 0
    assert "reads 3 CT windows" in capsys.readouterr().err
    assert not any((tmp_path / "p2").glob("*/report.json"))
    # a one-window dataset cannot be scored by a three-window model
    one = make_blob_export(tmp_path / "one", {"train": 5, "test": 3})
    assert main(["evaluate", str(run), str(one), "--split", "test", "--quiet"]) == 2
    assert "carry brain" in last_line(capsys)
    # nor can a one-window model start a three-window run
    src = tmp_path / "src"
    assert main(["train", str(one), "--out", str(src), "--size", "64", "--width", "8", "--epochs", "1",
                 "--quiet"]) == 0
    assert main(["train", str(isoluminant), "--out", str(tmp_path / "init"), "--init", str(src), "--size", "64",
                 "--epochs", "1", "--quiet"]) == 2
    assert "--init model reads windows brain" in last_line(capsys)


def test_splits_must_agree_on_their_windows(isoluminant, tmp_path, capsys):
    data = tmp_path / "mixed"
    shutil.copytree(isoluminant, data)
    path = data / "valid" / "_annotations.coco.json"
    doc = json.loads(path.read_text())
    del doc["info"]
    path.write_text(json.dumps(doc))
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--size", "64", "--quiet"]) == 2
    assert "split 'valid' images carry windows brain" in last_line(capsys)
