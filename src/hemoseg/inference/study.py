"""One study as the predictor and the output writers see it.

Every reader (DICOM, NIfTI, plain images) produces this one shape, so the
network, the measurements and the writers never branch on the input format
except where the format itself matters (DICOM SEG, NIfTI geometry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Study:
    name: str
    """Taken from the file or folder name; never from PatientName."""
    pixels: np.ndarray
    """(Z, H, W) float32: Hounsfield units if `is_hu`, else display values 0..255.
    Slice 0 is the most inferior slice for DICOM and NIfTI input."""
    is_hu: bool
    spacing: tuple[float, float, float] | None
    """(slice, row, col) in mm; None when unknown (never guessed)."""
    source: str
    """"dicom" | "nifti" | "image"."""
    source_paths: list[Path]
    colour: np.ndarray | None = None
    """(Z, H, W, 3) uint8 for colour image input whose channels differ (a
    multi-window export: one CT window per channel); `pixels` is its luminance."""
    dicom: list | None = None
    """Sorted pydicom Datasets, parallel to the Z axis (for DICOM SEG). A multi-frame
    source appears once per slice, with its frame in `dicom_frames`."""
    dicom_frames: list[int] | None = None
    """Multi-frame source only: the frame (0-based, file order) each slice came from."""
    affine: np.ndarray | None = None
    """4x4 voxel -> RAS mm for the NIfTI label output. For DICOM input it maps
    the (W, H, Z) transpose of `pixels`; for NIfTI input it is the input file's
    own affine, so labels are written back in exactly the input's array layout
    (viewers such as ITK-SNAP demand matching dimensions, not just geometry)."""
    nifti_header: object | None = None
    """The input's nibabel header (NIfTI input only), reused for the output."""
    slice_sources: list[str] = field(default_factory=list)
    """Per-slice provenance shown in the report (file name, or "volume[k]")."""
    warnings: list[str] = field(default_factory=list)
    """Things the reader tolerated but the user should know about."""
    slice_mm: np.ndarray | None = None
    """Where slices are unevenly spaced (a missing slice, or thicker slices through the
    posterior fossa than above it): how much of the head each slice stands for along the
    slice normal, halfway to each neighbour (the end slices: as far again as their one
    neighbour). Volumes weigh each slice by it. None where `spacing[0]` holds for all."""

    def __post_init__(self):
        if self.pixels.ndim != 3:
            raise ValueError(f"Study.pixels must be (Z,H,W), got shape {self.pixels.shape}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
                raise ValueError(f"invalid spacing {self.spacing}")
        if self.colour is not None and self.colour.shape[:3] != self.pixels.shape:
            raise ValueError("Study.colour must match Study.pixels slice for slice")
        if self.dicom is not None and len(self.dicom) != self.pixels.shape[0]:
            raise ValueError("Study.dicom must hold one dataset per slice")
        if self.dicom_frames is not None and sorted(self.dicom_frames) != list(range(self.pixels.shape[0])):
            raise ValueError("Study.dicom_frames must name each source frame once")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)

    @property
    def volumetric(self) -> bool:
        """True when the input had real 3-D geometry worth a NIfTI output."""
        return self.affine is not None
