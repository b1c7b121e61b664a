"""`hemoseg export`: the ONNX model must behave like the PyTorch one it came from,
because `--backend auto` silently swaps one for the other on CPU machines."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from hemoseg.cli import export_cmd  # noqa: E402
from hemoseg.cli.main import main  # noqa: E402
from hemoseg.data.coco import ClassList  # noqa: E402
from hemoseg.data.preprocessing import Preprocessing  # noqa: E402
from hemoseg.data.rasterize import num_outputs  # noqa: E402
from hemoseg.inference.predictor import Predictor  # noqa: E402
from hemoseg.models.attention_unet import build_model  # noqa: E402
from hemoseg.models.config import ModelConfig  # noqa: E402
from hemoseg.training.checkpoint import save_checkpoint  # noqa: E402

SIZE = 32


def make_run(folder: Path, mode: str = "multiclass", seed: int = 0, windows=((40, 80),)) -> Path:
    """A run folder with a freshly initialised model. BN statistics and affine
    parameters are randomised so the exported (BN-folded) graph is non-trivial."""
    torch.manual_seed(seed)
    classes = ClassList(("bleed", "edema"), (1, 2))
    mcfg = ModelConfig(in_channels=len(windows), out_channels=num_outputs(mode, len(classes)), width=4, depth=3)
    model = build_model(mcfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.safetensors", model.state_dict(), mcfg, classes, mode,
                    Preprocessing(size=SIZE, windows=windows, mean=0.3, std=0.25), {"epoch": 1})
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemoseg: error:") and "\n" not in err, err
    return err


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_export_parity(tmp_path, capsys, mode):
    run = make_run(tmp_path / "run", mode)
    assert main(["export", str(run), "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "parity:" in out and "max |p_torch - p_onnx|" in out
    assert (run / "model.onnx").is_file()
    assert not list(run.glob("*.tmp*")) and not list(run.glob(".*write-test"))
    report = json.loads((run / "onnx_parity.json").read_text())
    assert report["passed"] is True
    assert report["max_abs_prob_diff"] < 1e-4
    assert report["label_match_rate"] > 0.999
    assert set(report["by_input"]) >= {"random", "ct_phantom"}
    assert report["num_inputs"] >= 8


@pytest.mark.parametrize("windows", [((40, 80),), ((40, 80), (80, 200), (600, 2800))])
def test_predictor_onnx_matches_torch(tmp_path, capsys, windows):
    run = make_run(tmp_path / "run", windows=windows)
    assert main(["export", str(run), "--samples", "2"]) == 0
    # A fake study in Hounsfield units at a size other than the model's, so the
    # windowing, resizing and probability resampling paths all run.
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :40]
    head = ((yy - 24) / 20.0) ** 2 + ((xx - 20) / 16.0) ** 2 < 1
    hu = np.where(head, 35.0, -1000.0)[None].repeat(5, 0) + rng.normal(0, 8, (5, 48, 40))
    hu[:, 20:28, 14:22] += 40.0  # a "bleed"
    study = SimpleNamespace(pixels=hu.astype(np.float32), is_hu=True, spacing=None, colour=None)

    p_onnx = Predictor.from_run(run, "onnx")
    p_torch = Predictor.from_run(run, "torch", device="cpu")
    assert p_onnx.backend.name == "onnx" and p_torch.backend.name == "torch"
    if not torch.cuda.is_available():
        assert Predictor.from_run(run, "auto").backend.name == "onnx"
    a, b = p_onnx.predict_volume(study), p_torch.predict_volume(study)
    assert a.shape == b.shape == (5, 48, 40) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Also the probabilities themselves, batch of several slices at model size.
    display = np.stack([p_onnx.preprocessing.resize_image(s) for s in p_onnx.to_display(hu, True)])
    np.testing.assert_allclose(p_onnx.probabilities(display), p_torch.probabilities(display), atol=1e-4)


def test_onnx_prediction_never_imports_torch(tmp_path, capsys):
    """`hemoseg predict` on an exported run is numpy + onnxruntime only: importing
    torch is about a second of every clinical prediction on a CPU workstation."""
    import subprocess
    import sys

    from PIL import Image

    run = make_run(tmp_path / "run")
    assert main(["export", str(run), "--samples", "2"]) == 0
    img = tmp_path / "slice.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(img)
    code = ("import sys; from hemoseg.cli.main import main; "
            f"rc = main(['predict', {str(run)!r}, {str(img)!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--backend', 'onnx']); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    env = dict(__import__("os").environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "no torch", p.stdout
    assert (tmp_path / "out" / "summary.json").is_file()


def test_export_to_custom_file(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    target = tmp_path / "elsewhere" / "m.onnx"
    target.parent.mkdir()
    assert main(["export", str(run / "best.safetensors"), "--onnx", str(target), "--samples", "2"]) == 0
    assert target.is_file() and not (run / "model.onnx").exists()
    assert json.loads((run / "onnx_parity.json").read_text())["onnx_file"] == str(target)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in one_line_error(capsys)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "best.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    assert main(["export", str(corrupt)]) == 2
    assert "not a readable checkpoint" in one_line_error(capsys)

    run = make_run(tmp_path / "run")
    data = (run / "best.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 500])
    assert main(["export", str(truncated)]) == 2
    assert "checkpoint" in one_line_error(capsys)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", str(run), "--onnx", str(blocker / "model.onnx")]) == 2
    assert "output folder" in one_line_error(capsys)
    assert main(["export", str(run), "--onnx", str(tmp_path / "no" / "such" / "m.onnx")]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["export", str(run), "--onnx", str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys)
    assert not (run / "model.onnx").exists()


def test_failed_parity_removes_the_model(tmp_path, capsys, monkeypatch):
    """A model that fails the check must not stay where --backend auto would load it."""
    run = make_run(tmp_path / "run")
    monkeypatch.setitem(export_cmd.THRESHOLDS, "fp32", {"max_abs_prob_diff": -1.0, "min_label_match_rate": 0.999})
    assert main(["export", str(run), "--samples", "1"]) == 2
    assert "does not reproduce PyTorch" in one_line_error(capsys)
    assert not (run / "model.onnx").exists()
    assert json.loads((run / "onnx_parity.json").read_text())["passed"] is False


@pytest.mark.slow
def test_int8_export_of_a_trained_model(tmp_path, capsys, one_thread):
    """int8 is approximate, so it is checked where it matters: a trained model's
    labels on CT-like and real inputs, and its test Dice against PyTorch's."""
    from blob_data import make_blob_export

    data = make_blob_export(tmp_path / "blobs")
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--size", "64", "--width", "8", "--epochs", "6",
                 "--batch-size", "8", "--seed", "0", "--quiet"]) == 0
    assert main(["export", str(run), "--int8", "--samples", "4"]) == 0
    assert "(int8," in capsys.readouterr().out
    report = json.loads((run / "onnx_parity.json").read_text())
    assert report["passed"] is True and report["precision"] == "int8"
    assert report["judged_on"] == ["dataset"]  # held-out images of the calibration kind, not noise
    assert report["label_match_rate"] >= 0.99 and report["lesion_agreement"] >= 0.9
    assert not list(run.glob("*.tmp*")) and not list(run.glob("*.fp32.onnx"))
    assert Predictor.from_run(run, "onnx").backend.name == "onnx-int8"
    dice = {}
    for backend in ("torch", "onnx"):
        assert main(["evaluate", str(run), str(data), "--split", "test", "--backend", backend,
                     "--out", str(tmp_path / backend), "--quiet"]) == 0
        dice[backend] = json.loads((tmp_path / backend / "metrics.json").read_text())["dice_pooled_mean"]
        assert json.loads((tmp_path / backend / "metrics.json").read_text())["backend"].startswith(backend)
    assert dice["torch"] > 0.8 and abs(dice["onnx"] - dice["torch"]) < 0.02, dice


def test_int8_weights_use_seven_bits(tmp_path):
    """Full 8-bit weights saturate the int16 sums of AVX2 kernels (no VNNI), which
    moved the demo model's lesion borders; the export must keep weights in 7 bits."""
    import onnx
    from onnx import numpy_helper

    from hemoseg.inference.backends import export_onnx, quantize_onnx
    from hemoseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(make_run(tmp_path / "run"))
    export_onnx(ckpt.build_model().eval(), SIZE, tmp_path / "fp32.onnx")
    calibration = np.random.default_rng(0).normal(size=(4, 1, SIZE, SIZE)).astype(np.float32)
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    assert weights, "no int8 weights: the model was not quantised"
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
