"""Crash safety of training runs: a killed run resumes from its last completed
epoch, checkpoints are never half-written or unpickled, and bad run folders or
checkpoints give one-line errors instead of tracebacks."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hemoseg.cli.main import main
from hemoseg.data.coco import ClassList
from hemoseg.data.preprocessing import Preprocessing
from hemoseg.errors import HemosegError
from hemoseg.models.attention_unet import build_model
from hemoseg.models.config import ModelConfig
from hemoseg.training import checkpoint as ckpt_mod
from hemoseg.training.checkpoint import FORMAT_VERSION, atomic_save_tensors, load_checkpoint, read_header, \
    save_checkpoint
from hemoseg.training.precision import native_bf16

REPO = Path(__file__).resolve().parents[1]


def make_coco(root: Path, n_train: int = 12, n_valid: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A Roboflow-style COCO export of noisy 'slices' with bright polygon blobs
    (two classes; every third image has no lesion)."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 0, "name": "lesions", "supercategory": "none"},
            {"id": 1, "name": "bleed", "supercategory": "lesions"},
            {"id": 2, "name": "edema", "supercategory": "lesions"}]
    for split, n in (("train", n_train), ("valid", n_valid)):
        folder = root / split
        folder.mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            img = Image.fromarray(np.clip(rng.normal(70, 12, (size, size)), 0, 255).astype(np.uint8))
            if i % 3 != 2:
                cx, cy = rng.uniform(0.3, 0.7, 2) * size
                r = rng.uniform(0.08, 0.2) * size
                ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
                poly = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in ang]
                ImageDraw.Draw(img).polygon(poly, fill=200)
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                anns.append({"id": len(anns), "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                             "segmentation": [[c for p in poly for c in p]], "area": float(np.pi * r * r),
                             "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
            img.save(folder / f"s{i}.png")
            images.append({"id": i, "file_name": f"s{i}.png", "height": size, "width": size})
        (folder / "_annotations.coco.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("WORLD_SIZE", None)
    return env


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemoseg: error:") and "\n" not in err, err
    return err


def tiny_checkpoint(path: Path, epoch: int = 1) -> None:
    torch.manual_seed(0)
    mcfg = ModelConfig(out_channels=3, width=4, depth=3)
    save_checkpoint(path, build_model(mcfg).state_dict(), mcfg, ClassList(("bleed", "edema"), (1, 2)),
                    "multiclass", Preprocessing(size=32), {"epoch": epoch},
                    extra_tensors={"optim.0.step": torch.tensor(3.0)})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_coco(tmp_path_factory.mktemp("data"))


# ---------------------------------------------------------------------------
def test_sigkill_mid_epoch_then_resume(dataset, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hemoseg", "train", str(dataset), "--out", str(run), "--size", "64",
           "--width", "4", "--batch-size", "4", "--steps-per-epoch", "6", "--epochs", "500",
           "--workers", "0", "--quiet"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = 0
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "history.csv").is_file():
                seen = len(read_history(run))
                if seen >= 1:
                    break
            time.sleep(0.02)
        assert seen >= 1, f"no epoch finished: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
        time.sleep(0.1)  # inside the next epoch (an epoch here takes well over 0.1 s)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    before = load_checkpoint(run / "last.safetensors")
    done = before.meta["epoch"]
    assert done >= seen  # at most the epoch in progress was lost
    target = done + 2

    # Resume in this process with every unpickling path booby-trapped.
    def no_pickle(*a, **k):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    assert main(["train", "--resume", str(run), "--epochs", str(target), "--quiet"]) == 0

    hist = read_history(run)
    assert [int(r["epoch"]) for r in hist] == list(range(1, target + 1))  # contiguous, no duplicates
    for old, new in zip(before.meta["history"], hist[:done]):
        assert float(new["train_loss"]) == pytest.approx(old["train_loss"], rel=1e-9)
    log = (run / "train.log").read_text()
    assert f"resuming after epoch {done}" in log
    last = load_checkpoint(run / "last.safetensors")
    assert last.meta["precision"] == before.meta["precision"]  # no second stopwatch switched it
    if native_bf16(torch.device("cpu")):
        assert "(as before the interruption)" in log
    assert last.meta["epoch"] == target and len(last.meta["history"]) == target
    assert last.meta["train_config"]["epochs"] == target
    best = load_checkpoint(run)
    best.build_model()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == target
    # Leftover temporaries from the kill (if it hit a write) are never mistaken for checkpoints.
    assert {p.name for p in run.glob("*.safetensors")} == {"best.safetensors", "last.safetensors"}


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.safetensors"
    tiny_checkpoint(path, epoch=1)
    good = path.read_bytes()

    # 1) The writer fails half-way (disk full): the old file stays, the temporary is removed.
    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "save_file", half_write)
        with pytest.raises(OSError):
            tiny_checkpoint(path, epoch=2)
    assert path.read_bytes() == good
    assert list(tmp_path.iterdir()) == [path]

    # 2) The process dies before the rename (SIGKILL: no cleanup runs at all).
    def die(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "replace", die)
        m.setattr(os, "unlink", lambda *a, **k: None)
        with pytest.raises(KeyboardInterrupt):
            tiny_checkpoint(path, epoch=2)
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".best.safetensors.")
    assert leftovers[0].name.endswith(".tmp")
    assert path.read_bytes() == good
    assert load_checkpoint(tmp_path).meta["epoch"] == 1  # the run folder resolves to the intact file

    # 3) A completed write replaces the file in one step.
    tiny_checkpoint(path, epoch=3)
    assert load_checkpoint(path).meta["epoch"] == 3


def test_checkpoint_loading_never_unpickles(tmp_path, monkeypatch):
    from hemoseg.inference.predictor import Predictor

    tiny_checkpoint(tmp_path / "best.safetensors")

    def no_pickle(*a, **k):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    ckpt, extra = load_checkpoint(tmp_path / "best.safetensors", with_extra=True)
    assert set(extra) == {"optim.0.step"}
    assert Predictor.from_run(tmp_path, "torch", device="cpu").class_names == ["bleed", "edema"]
    # And the file really is safetensors: an 8-byte header length then JSON, no pickle opcodes.
    raw = (tmp_path / "best.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + n])["__metadata__"]["format"] == "hemoseg-checkpoint"
    assert b"\x80\x04\x95" not in raw[:8 + n] and not raw.startswith(b"PK")


def test_existing_run_folder_needs_force(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    assert main(["train", str(dataset), "--out", str(run), "--quiet"]) == 2
    assert "--force" in one_line_error(capsys)
    assert (run / "notes.txt").read_text() == "keep me"
    assert list(run.iterdir()) == [run / "notes.txt"]


def test_unwritable_output_folder(dataset, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", str(dataset), "--out", str(blocker / "run"), "--quiet"]) == 2
    assert "not writable" in one_line_error(capsys)
    assert main(["train", str(dataset), "--out", str(blocker), "--quiet"]) == 2
    assert "not a folder" in one_line_error(capsys)
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        try:
            assert main(["train", str(dataset), "--out", str(locked / "run"), "--quiet"]) == 2
            assert "not writable" in one_line_error(capsys)
        finally:
            locked.chmod(0o700)


def test_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 2
    one_line_error(capsys)


def test_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    """A resumed run goes on with its saved recipe; a recipe flag is an error, not a no-op."""
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "last.safetensors")
    before = (run / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--lr", "0.1", "--no-attention", "--augmentation", "flip",
                 "--preset", "paper", "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "--augmentation, --lr, --no-attention, --preset" in line and str(run) in line
    assert (run / "last.safetensors").read_bytes() == before and sorted(p.name for p in run.iterdir()) == [
        "last.safetensors"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_is_one_line_error(tmp_path, capsys, damage):
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "last.safetensors")
    raw = (run / "last.safetensors").read_bytes()
    data = {"garbage": os.urandom(4096), "truncated": raw[: len(raw) // 2], "empty": b""}[damage]
    (run / "last.safetensors").write_bytes(data)
    with pytest.raises(HemosegError):
        load_checkpoint(run / "last.safetensors")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "last.safetensors" in one_line_error(capsys)


def test_wrong_format_version_is_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "last.safetensors")
    header = read_header(run / "last.safetensors")
    tensors, _ = load_checkpoint(run / "last.safetensors", with_extra=True)
    header["format_version"] = str(FORMAT_VERSION + 98)
    atomic_save_tensors({f"model.{k}": v for k, v in tensors.model_state.items()}, run / "last.safetensors",
                        header)
    with pytest.raises(HemosegError, match="format version 99 is not supported"):
        load_checkpoint(run / "last.safetensors")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "format version 99" in one_line_error(capsys)
    # Not a hemoseg file at all (valid safetensors, no format tag).
    atomic_save_tensors({"w": torch.zeros(2)}, run / "last.safetensors", {"something": "else"})
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "not a hemoseg checkpoint" in one_line_error(capsys)


def test_a_saved_config_keeps_the_behaviour_of_the_run_that_saved_it():
    """Fields a checkpoint predates reproduce its run; fields it has are kept verbatim."""
    from hemoseg.training.config import TrainConfig

    today = TrainConfig()
    assert today.stem == 2 and today.calibrate and today.deep_supervision and today.coarse  # else this proves nothing
    old = {k: v for k, v in today.to_dict().items() if k not in ("stem", "calibrate", "deep_supervision", "coarse")}
    restored = TrainConfig.from_dict({**old, "lr": 5e-4, "removed_long_ago": 1})
    assert restored.stem == 1 and restored.calibrate is False and restored.deep_supervision == 0
    assert restored.coarse == 0.0
    assert restored.lr == 5e-4
    assert TrainConfig.from_dict(today.to_dict()) == today
