"""Files written per study: label PNGs, overlays, montage, NIfTI, DICOM SEG.

All outputs keep the study's original resolution and slice order, so slice k
of every file is slice k of `Study.pixels` (listed in the report's "slices").
Class colours come from hemoseg.data.figures.class_colors, the one palette
shared with the figures and the web viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemoseg import RESEARCH_NOTICE, __version__

def class_color(label: int) -> tuple[int, int, int]:
    """RGB of foreground label k (class k - 1) from the shared palette, so the
    overlays, montage, report and DICOM SEG match the viewer's legend."""
    from hemoseg.data.figures import class_colors

    k = int(label)
    return tuple(int(v) for v in class_colors(k)[k - 1])


def slice_filename(z: int) -> str:
    return f"slice_{z:04d}.png"


def display_volume(study, preprocessing) -> np.ndarray:
    """uint8 (Z,H,W) as the model sees it (HU windowed, display values kept)."""
    if study.is_hu:
        return preprocessing.window_hu(study.pixels)
    return np.clip(np.rint(study.pixels), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# label PNGs
# --------------------------------------------------------------------------
def write_mask_pngs(labels: np.ndarray, folder: Path) -> None:
    """One 8-bit PNG per slice whose pixel values are the label numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(labels.shape[0]):
        _imwrite(folder / slice_filename(z), labels[z].astype(np.uint8))


def _imwrite(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


# --------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------
def overlay_rgb(display: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float = 0.4) -> np.ndarray:
    """Grey slice with translucent class fills and solid outlines (RGB uint8)."""
    import cv2

    rgb = np.repeat(display[..., None], 3, axis=2).astype(np.float32)
    for k in range(1, n_classes + 1):
        m = labels == k
        if not m.any():
            continue
        color = np.array(class_color(k), np.float32)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * color
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    for k in range(1, n_classes + 1):
        m = (labels == k).astype(np.uint8)
        if m.any():
            contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, class_color(k), 1)
    return out


def _legend_band(width: int, class_names: list[str], present: set[int]) -> np.ndarray:
    import cv2

    row_h = 18
    band = np.full((row_h * len(class_names) + 6, width, 3), 24, np.uint8)
    for i, name in enumerate(class_names):
        k = i + 1
        y = 3 + i * row_h
        cv2.rectangle(band, (4, y + 3), (16, y + 15), class_color(k), -1)
        text = name if k in present else f"{name} (none)"
        cv2.putText(band, text, (22, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (235, 235, 235) if k in present else (140, 140, 140), 1, cv2.LINE_AA)
    return band


def write_overlays(display: np.ndarray, labels: np.ndarray, class_names: list[str],
                   folder: Path) -> None:
    """One overlay PNG per slice with the colour legend drawn underneath.
    Slices narrower than 256 px are enlarged by whole factors so the legend
    stays legible; labels use nearest neighbour so outlines stay honest."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    n = len(class_names)
    h, w = display.shape[1:]
    f = max(1, int(np.ceil(256 / w))) if w < 256 else 1
    for z in range(display.shape[0]):
        img, lab = display[z], labels[z]
        if f > 1:
            img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
            lab = cv2.resize(lab, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        ov = overlay_rgb(img, lab, n)
        present = {int(v) for v in np.unique(lab) if v}
        out = np.concatenate([ov, _legend_band(ov.shape[1], class_names, present)], axis=0)
        _imwrite(folder / slice_filename(z), out[..., ::-1])  # cv2 wants BGR


# --------------------------------------------------------------------------
# montage
# --------------------------------------------------------------------------
def montage_slices(labels: np.ndarray, max_panels: int = 12) -> list[int]:
    """Slices with lesions, evenly spread and always including the one with the
    largest lesion area; evenly spread slices when there is no lesion."""
    area = (labels > 0).sum(axis=(1, 2))
    lesion = np.flatnonzero(area)
    pool = lesion if lesion.size else np.arange(labels.shape[0])
    limit = max_panels if lesion.size else min(max_panels, 6)
    if pool.size <= limit:
        return [int(z) for z in pool]
    picks = set(int(pool[i]) for i in np.linspace(0, pool.size - 1, limit - 1).round().astype(int))
    if lesion.size:
        picks.add(int(np.argmax(area)))
    return sorted(picks)


def write_montage(display: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
                  title: str, slice_names: list[str] | None = None) -> list[int]:
    """Grid of lesion slices with a legend and the research notice; returns
    the slice indices shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    zs = montage_slices(labels)
    n = len(zs)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(3.0 * cols, 3.0 * rows + 1.1), dpi=100)
    FigureCanvasAgg(fig)
    any_lesion = bool((labels > 0).any())
    fig.suptitle(title if any_lesion else f"{title}: no hemorrhage detected", fontsize=11)
    for i, z in enumerate(zs):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(overlay_rgb(display[z], labels[z], len(class_names)), interpolation="nearest")
        name = f" ({slice_names[z]})" if slice_names and len(slice_names) > z else ""
        ax.set_title(f"slice {z}{name}", fontsize=7)
        ax.axis("off")
    handles = [Patch(color=np.array(class_color(k)) / 255.0, label=nm)
               for k, nm in enumerate(class_names, start=1)]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 0.04))
    fig.text(0.5, 0.005, RESEARCH_NOTICE, ha="center", va="bottom", fontsize=7, color="#a00")
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.5 / (3.0 * rows + 1.1),
                        bottom=0.9 / (3.0 * rows + 1.1), wspace=0.05, hspace=0.2)
    fig.savefig(path, format="png")
    return zs


# --------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------
def write_nifti(labels: np.ndarray, study, path: Path) -> None:
    """Label volume on the input's geometry (and array layout for NIfTI input)."""
    import nibabel as nib

    from hemoseg.inference.readers import labels_to_nifti_array

    data = labels_to_nifti_array(labels.astype(np.uint8), study)
    if study.source == "nifti" and study.nifti_header is not None:
        hdr = study.nifti_header.copy()
        hdr.set_data_dtype(np.uint8)
        hdr.set_slope_inter(1, 0)
        img = nib.Nifti1Image(data, study.affine, header=hdr)
    else:
        img = nib.Nifti1Image(data, study.affine)
        img.set_qform(study.affine, code=1)
        img.set_sform(study.affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"hemoseg labels - research use only"
    nib.save(img, str(path))


# --------------------------------------------------------------------------
# DICOM SEG
# --------------------------------------------------------------------------
def write_dicom_seg(labels: np.ndarray, study, class_names: list[str], path: Path) -> list[str]:
    """BINARY DICOM SEG with one segment per class present, referencing the
    source instances. Returns the segment labels; writes nothing (and returns
    []) when no class is present, since a SEG needs at least one segment."""
    import highdicom as hd
    from highdicom.color import CIELabColor
    from highdicom.seg import (Segmentation, SegmentAlgorithmTypeValues, SegmentDescription,
                               SegmentationTypeValues)
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    present = [k for k in range(1, len(class_names) + 1) if np.any(labels == k)]
    if not present:
        return []
    algo = hd.AlgorithmIdentificationSequence(
        name="hemoseg", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for i, k in enumerate(present, start=1):
        r, g, b = class_color(k)
        descriptions.append(SegmentDescription(
            segment_number=i,
            segment_label=class_names[k - 1][:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Hemorrhage,
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=generate_uid(),
            tracking_id=f"hemoseg label {k}",
            display_color=CIELabColor.from_rgb(r, g, b),
        ))
    mask = np.stack([labels == k for k in present], axis=-1)
    seg = Segmentation(
        source_images=study.dicom,
        pixel_array=mask,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="hemoseg",
        manufacturer_model_name="hemoseg",
        software_versions=__version__,
        device_serial_number="none",
        series_description="hemoseg hemorrhage - RESEARCH USE ONLY",
        content_label="HEMOSEG",
        content_description="Research use only; not for diagnosis",
    )
    seg.save_as(path)
    return [d.SegmentLabel for d in descriptions]
