"""Reading a DICOM SEG onto the voxel grid of the series it segments.

Readers annotate in OHIF, 3D Slicer or a PACS viewer and export DICOM SEG. `score`
compares such references with predictions, and `data from-dicom` trains on them; both
need the segments as a label volume on the CT's own grid. The SEG must have been
drawn on that series: its frames are placed through the two affines, and anything
that does not land exactly on the grid is refused rather than resampled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def seg_on_grid(path: Path, shape: tuple[int, int, int], to_world: np.ndarray | None,
                series_uid: str | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """(segment numbers (Z,H,W) int64 on the grid whose index (col, row, slice) `to_world`
    maps to RAS mm, {segment number: segment label})."""
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # pydicom and highdicom raise many types for a bad file
        raise HemosegError(f"is not a readable DICOM SEG ({_short(exc)})", path) from None
    referenced = {r.SeriesInstanceUID for r in getattr(seg, "ReferencedSeriesSequence", [])}
    if series_uid and referenced and series_uid not in referenced:
        raise HemosegError("segments another series than the CT it is paired with", path)
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    try:
        vol = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as exc:  # overlapping or fractional segments, frames off one grid
        raise HemosegError(f"cannot be read as one label volume ({_short(exc)})", path) from None
    if to_world is None:
        raise HemosegError("the CT it is paired with has no geometry to place it on", path)
    # SEG index (slice, row, col) -> LPS mm -> RAS mm -> CT index (col, row, slice).
    m = np.linalg.inv(to_world) @ _LPS_TO_RAS @ vol.affine
    axes = np.rint(m[:3, :3])
    on_grid = (np.allclose(m[:3, :3], axes, atol=1e-3) and (np.abs(axes).sum(axis=0) == 1).all()
               and (np.abs(axes).sum(axis=1) == 1).all() and np.allclose(m[:3, 3], np.rint(m[:3, 3]), atol=1e-2))
    if not on_grid:
        raise HemosegError("is not on the CT's voxel grid (drawn on another series, or resampled)", path)
    found = vol.array
    s, r, c = np.nonzero(found)
    col, row, sl = (axes @ np.stack([s, r, c]) + np.rint(m[:3, 3:4])).astype(np.int64)
    z, h, w = shape
    if s.size and not ((0 <= col) & (col < w) & (0 <= row) & (row < h) & (0 <= sl) & (sl < z)).all():
        raise HemosegError("has segments outside the CT's volume", path)
    out = np.zeros(shape, np.int64)
    out[sl, row, col] = found[s, r, c]
    return out, labels
