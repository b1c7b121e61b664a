"""Output folders appear whole or not at all.

Everything is written into a hidden sibling of the target, which then takes the
target's place by rename. A crash, a bad input or a full disk leaves the old
folder (if any) as it was, never a half-written one that looks complete."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from hemoseg.errors import HemosegError


def refuse_existing(final: Path, force: bool) -> None:
    if (final.exists() or final.is_symlink()) and not force:
        raise HemosegError(f"output folder {final} already exists; use --force to replace it")


@contextmanager
def staged_dir(final: Path, force: bool):
    """Yield a hidden folder beside `final` to write into. When the block ends without
    an error and the folder exists, it replaces `final` (an existing `final` only with
    `force`); otherwise it is deleted and `final` is untouched."""
    final = Path(final)
    refuse_existing(final, force)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if tmp.exists():
            _replace(tmp, final, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, final: Path, force: bool) -> None:
    if final.exists() or final.is_symlink():
        refuse_existing(final, force)  # it may have appeared while we wrote
        # Move the old folder aside first, so that at every instant one complete
        # version sits at `final` or beside it.
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
