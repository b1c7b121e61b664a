"""The layout of a training run folder, in one place."""

from __future__ import annotations

from pathlib import Path

from hemoseg.errors import HemosegError

BEST = "best.safetensors"
LAST = "last.safetensors"
HISTORY = "history.csv"
CURVES = "curves.png"
CONFIG = "config.json"
SUMMARY = "summary.json"
LOG = "train.log"


def prepare(out: Path, resume: bool, force: bool) -> Path:
    out = Path(out)
    if resume:
        if not (out / LAST).is_file():
            raise HemosegError(f"cannot resume: no {LAST} in the run folder", out)
        for stale in out.glob(".*.tmp"):  # left by a kill during a checkpoint write; never loaded
            stale.unlink(missing_ok=True)
        return out
    if out.exists() and not out.is_dir():
        raise HemosegError("output path exists and is not a folder", out)
    if out.exists() and any(out.iterdir()) and not force:
        raise HemosegError("run folder already exists and is not empty (use --force to overwrite, "
                           "--resume to continue)", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HemosegError(f"output folder is not writable ({exc.strerror})", out) from None
    if force:
        for name in (BEST, LAST, HISTORY, CURVES, CONFIG, SUMMARY, LOG):
            (out / name).unlink(missing_ok=True)
    return out
