"""The space inside the skull, from Hounsfield units alone.

Every class hemoseg reports is intracranial, yet a 2-D network shown slices it
never trained on (the vertex, the skull base, a tilted head) can paint scalp or
bone. With HU input the skull is unambiguous, so labels outside its inner table
are removed. Windowed PNG/JPG input has no HU (bone and fresh blood both
saturate the brain window), so it is left as predicted.

A slice whose bone does not close into a ring (skull base foramina,
craniectomy, a slice through the vertex) gets no constraint at all: the mask
may only remove labels where the anatomy is clear.
"""

from __future__ import annotations

import math

import numpy as np

BONE_HU = 300.0
"""Above soft tissue and acute blood (< 100 HU), below cortical bone (> 700 HU),
so partial-volume edges of the skull still count as bone."""

NOTE = f"labels outside the skull's inner table (bone > {BONE_HU:.0f} HU) were removed"
"""How the report words what `applies` switched on."""


def applies(study) -> bool:
    """Whether the skull constraint is used on this study: the one place that
    decides it, so the prediction and the report that describes it agree."""
    return bool(study.is_hu)


def intracranial_mask(hu: np.ndarray, spacing_mm: float | None = None) -> np.ndarray:
    """bool (Z,H,W): True inside the skull, and everywhere on slices without a closed ring.

    Small gaps in the ring (sutures, emissary foramina, noise) are bridged by a
    closing (gaps up to about 2 mm); the interior then grows by about 1 mm so the
    partial-volume rim where blood meets the inner table (read as > 300 HU)
    stays inside. Pixel counts stand in for mm when the spacing is unknown.
    """
    import cv2

    hu = np.asarray(hu)
    px = spacing_mm or 1.0
    bridge, rim = int(math.ceil(2.0 / px)) + 1, max(1, int(round(1.0 / px)))
    close_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * bridge + 1,) * 2)
    rim_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1,) * 2)
    out = np.ones(hu.shape, dtype=bool)
    for z in range(hu.shape[0]):
        bone = (hu[z] > BONE_HU).astype(np.uint8)
        if not bone.any():
            continue
        # A zero border first, so the closing cannot glue bone to the image edge
        # and the flood from the corner reaches everything outside the ring.
        ring = cv2.morphologyEx(np.pad(bone, bridge + 1), cv2.MORPH_CLOSE, close_k)
        outside = ring.copy()
        cv2.floodFill(outside, None, (0, 0), 2)
        inside = (outside == 0).astype(np.uint8)
        if inside.any():
            inside = cv2.dilate(inside, rim_k)
            out[z] = inside[bridge + 1:-bridge - 1, bridge + 1:-bridge - 1] > 0
    return out
