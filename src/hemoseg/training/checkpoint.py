"""Checkpoints: one safetensors file holding the weights and, in its header,
the JSON metadata a model needs to be used correctly later (classes, mode,
preprocessing, model config, version, data summary).

Nothing is ever unpickled. Files are written to a temporary name and renamed,
so a crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from hemoseg import __version__
from hemoseg.data.coco import ClassList
from hemoseg.data.preprocessing import Preprocessing
from hemoseg.errors import HemosegError
from hemoseg.models.config import ModelConfig

FORMAT = "hemoseg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    model_config: ModelConfig
    classes: ClassList
    mode: str
    preprocessing: Preprocessing
    meta: dict  # everything else: train config, data summary, epoch, scores

    def build_model(self):
        from hemoseg.models.attention_unet import build_model

        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as exc:
            raise HemosegError(f"weights do not match the model config ({str(exc).splitlines()[0]})")
        return model


def save_file(tensors: dict, filename: str, metadata: dict[str, str]) -> None:
    """safetensors' torch writer, imported on first use: reading a header needs no torch."""
    from safetensors.torch import save_file as write

    write(tensors, filename, metadata=metadata)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, header: dict[str, str]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared run folder must stay readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, model_state: dict, model_config: ModelConfig, classes: ClassList,
                    mode: str, preprocessing: Preprocessing, meta: dict,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "hemoseg_version": __version__,
        "model_config": json.dumps(model_config.to_dict()),
        "classes": json.dumps(classes.to_dict()),
        "mode": mode,
        "preprocessing": preprocessing.to_json(),
        "meta": json.dumps(meta),
    }
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update(extra_tensors or {})
    atomic_save_tensors(tensors, path, header)


def read_header(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise HemosegError(f"not a readable checkpoint ({' '.join(str(exc).split())[:100]})", path) from None


def load_checkpoint(path: str | Path, with_extra: bool = False, weights: bool = True):
    """Load and validate a checkpoint file (or a run folder: its best.safetensors).

    weights=False reads the metadata alone, without importing torch: all the ONNX
    prediction path needs, and a second saved at every `hemoseg predict` start."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise HemosegError("checkpoint not found", path)
    header = read_header(path)
    if header.get("format") != FORMAT:
        raise HemosegError("not a hemoseg checkpoint (missing format tag)", path)
    if header.get("format_version") != str(FORMAT_VERSION):
        raise HemosegError(
            f"checkpoint format version {header.get('format_version')} is not supported by hemoseg "
            f"{__version__} (expects {FORMAT_VERSION})", path)
    try:
        tensors = {}
        if weights:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        ckpt = Checkpoint(
            model_state={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
            model_config=ModelConfig.from_dict(json.loads(header["model_config"])),
            classes=ClassList.from_dict(json.loads(header["classes"])),
            mode=header["mode"],
            preprocessing=Preprocessing.from_dict(json.loads(header["preprocessing"])),
            meta=json.loads(header.get("meta", "{}")),
        )
    except (KeyError, ValueError, TypeError, SafetensorError) as exc:
        raise HemosegError(f"corrupt checkpoint metadata ({' '.join(str(exc).split())[:100]})", path) from None
    if with_extra:
        return ckpt, {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return ckpt
