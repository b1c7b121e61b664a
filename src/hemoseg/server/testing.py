"""Helpers shared by the server tests and benchmarks/load_test.py: a tiny run
folder, synthetic studies packed as uploads, and a real uvicorn server on a
free loopback port (a browser or a load test needs real sockets, which
FastAPI's TestClient does not open)."""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np


def make_tiny_run(folder: Path, class_names=("Intraparenchymal hemorrhage", "Subdural hemorrhage"),
                  size: int = 64, seed: int = 0) -> Path:
    """A run folder with a freshly initialised (untrained) model: exercises
    the whole real pipeline in well under a second per small study."""
    import torch

    from hemoseg.data.coco import ClassList
    from hemoseg.data.preprocessing import Preprocessing
    from hemoseg.models.attention_unet import build_model
    from hemoseg.models.config import ModelConfig
    from hemoseg.training.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = tuple(class_names)
    mcfg = ModelConfig(in_channels=1, out_channels=len(names) + 1, width=4, depth=3)
    model = build_model(mcfg)
    save_checkpoint(folder / "best.safetensors", model.state_dict(), mcfg,
                    ClassList(names, tuple(range(1, len(names) + 1))), "multiclass",
                    Preprocessing(size=size), {"epoch": 0, "note": "untrained test model"})
    return folder


def synthetic_dicom_folder(out: Path, slices: int = 8, size: int = 64, seed: int = 0) -> Path:
    """One synthetic CT series (hemoseg synth) in out/dicom/<study>/."""
    from hemoseg.data.synth import generate_dicom

    truth = generate_dicom(Path(out) / "dicom", seed=seed, studies=1, slices=slices, size=size)
    name = next(iter(truth))
    return Path(out) / "dicom" / name


def flat_export_with_second_series(folder: Path, out: Path, number: int = 7,
                                   description: str = "Axial bone") -> str:
    """`folder`'s series plus a copy of it as another series, all in one flat folder `out`,
    as a PACS exports a whole study. Returns the copy's SeriesInstanceUID."""
    import pydicom
    from pydicom.uid import generate_uid

    out = Path(out)
    out.mkdir(parents=True)
    uid = generate_uid()
    for p in sorted(Path(folder).iterdir()):
        (out / f"a_{p.name}").write_bytes(p.read_bytes())
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, number, description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"b_{p.name}")
    return uid


def zip_folder(folder: Path, arc_prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, arc_prefix + p.relative_to(folder).as_posix())
    return buf.getvalue()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread.

    with ThreadedServer(app) as srv: httpx.get(srv.url + "/health")"""

    def __init__(self, app, port: int | None = None, log_level: str = "warning"):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level,
                                lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def hu_threshold_labels(pixels: np.ndarray, is_hu: bool, lo: float = 56, hi: float = 95,
                        label: int = 1) -> np.ndarray:
    """Fake 'segmentation' for plumbing tests: fresh blood is ~56-95 HU."""
    if not is_hu:
        return np.where(pixels >= 200, label, 0).astype(np.uint8)
    return np.where((pixels >= lo) & (pixels <= hi), label, 0).astype(np.uint8)


class FakePredictor:
    """Stands in for Predictor where a test must know what is found: returns
    the label volume registered for a study's shape (the synthetic ground
    truth), else blood-range HU as `fallback_label`. `gate` (a threading.Event)
    holds every job until set, to fill the queue on purpose."""

    backend = "fake"

    def __init__(self, class_names=None, truths=(), fallback_label: int = 2, gate=None):
        from hemoseg.data.preprocessing import Preprocessing
        from hemoseg.data.synth import CLASS_NAMES

        if class_names is None:  # label k -> name, in label order
            class_names = [CLASS_NAMES[k] for k in sorted(CLASS_NAMES)]
        self.class_names = list(class_names)
        self.preprocessing = Preprocessing(size=64)
        self.truths = {tuple(t.shape): np.asarray(t, np.uint8) for t in truths}
        self.fallback_label = fallback_label
        self.gate = gate
        self.calls = 0

    def predict_volume(self, study, tta=False, progress=None):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        out = self.truths.get(tuple(study.shape))
        if out is None:
            out = hu_threshold_labels(study.pixels, study.is_hu, label=self.fallback_label)
        for _ in range(study.shape[0]):
            if progress is not None:
                progress(1)
        return out.copy()


def synthetic_truth(folder: Path) -> np.ndarray:
    """The label volume hemoseg synth wrote beside a series folder, (Z, Y, X)."""
    import nibabel as nib

    folder = Path(folder)
    return np.asarray(nib.load(str(folder.parent / f"{folder.name}_labels.nii.gz")).dataobj, np.uint8)
