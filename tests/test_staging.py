"""Output folders appear whole or not at all (hemoseg.staging)."""

from __future__ import annotations

import shutil

import pytest

from hemoseg.errors import HemosegError
from hemoseg.staging import staged_dir


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_replaces_only_with_force_and_only_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(HemosegError, match=f"output folder {final} already exists; use --force"):
        with staged_dir(final, force=False):
            pass
    with pytest.raises(RuntimeError):  # a failure half-way: the old folder stays as it was
        with staged_dir(final, force=True) as tmp:
            tmp.mkdir()
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("disk full")
    assert _entries(tmp_path) == ["out"] and _entries(final) == ["old.txt"]
    with staged_dir(final, force=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        assert not (final / "new.txt").exists()  # not visible until the block ends
    assert _entries(tmp_path) == ["out"] and _entries(final) == ["new.txt"]


def test_nothing_written_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with staged_dir(final, force=False) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("discarded")
        shutil.rmtree(tmp)  # the block decided there was nothing to publish
    assert _entries(tmp_path) == []


def test_a_folder_that_appears_while_writing_is_not_clobbered(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(HemosegError, match="already exists"):
        with staged_dir(final, force=False) as tmp:
            tmp.mkdir()
            final.mkdir()  # another process got there first
    assert _entries(tmp_path) == ["out"] and _entries(final) == []
