"""Files written per study: label PNGs, overlays, montage, NIfTI, DICOM SEG.

All outputs keep the study's original resolution and slice order, so slice k
of every file is slice k of `Study.pixels` (listed in the report's "slices").
Class colours come from hemoseg.data.figures.class_colors, the one palette
shared with the figures and the web viewer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from hemoseg import RESEARCH_NOTICE, __version__
from hemoseg.data.preprocessing import window_to_uint8


def class_color(label: int) -> tuple[int, int, int]:
    """RGB of foreground label k (class k - 1) from the shared palette, so the
    overlays, montage, report and DICOM SEG match the viewer's legend."""
    from hemoseg.data.figures import class_colors

    k = int(label)
    return tuple(int(v) for v in class_colors(k)[k - 1])


def slice_filename(z: int) -> str:
    return f"slice_{z:04d}.png"


def display_volume(study, preprocessing) -> np.ndarray:
    """uint8 (Z,H,W) for people: HU under the model's first window, image input as given."""
    if study.is_hu:
        return window_to_uint8(study.pixels, *preprocessing.windows[0])
    return np.clip(np.rint(study.pixels), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# label PNGs
# --------------------------------------------------------------------------
def write_mask_pngs(labels: np.ndarray, folder: Path) -> None:
    """One 8-bit PNG per slice whose pixel values are the label numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    _for_each_slice(lambda z: _imwrite(folder / slice_filename(z), labels[z].astype(np.uint8)),
                    labels.shape[0])


def _imwrite(path: Path, img: np.ndarray, params: tuple[int, ...] = ()) -> None:
    """cv2's default PNG settings (fast zlib, RLE) were the quickest tried."""
    import cv2

    ok, buf = cv2.imencode(".png", img, list(params))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


# --------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _blend_table(n_classes: int, alpha: float) -> np.ndarray:
    """(256 * (n+1), 3) uint8: the blended colour of every (label, grey) pair.

    Blending 32 slices of 512x512 per pixel in float costs more than the PNG
    encoding; the table is built with the same float32 arithmetic, so the
    pixels are identical. Labels above n_classes stay grey."""
    grey = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
    rows = [grey] + [(1 - alpha) * grey + alpha * np.array(class_color(k), np.float32)
                     for k in range(1, n_classes + 1)]
    rows += [grey] * (256 - len(rows))
    return np.clip(np.rint(np.stack(rows)), 0, 255).astype(np.uint8).reshape(-1, 3)


def _present(labels: np.ndarray, n_classes: int) -> list[int]:
    if not labels.any():
        return []
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=n_classes + 1)
    return [k for k in range(1, n_classes + 1) if counts[k]]


def _label_box(labels: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of the labelled pixels plus a 1-pixel margin (so contours
    found inside it are those of the whole slice); None without labels."""
    rows = np.flatnonzero(labels.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(labels[rows[0]:rows[-1] + 1].any(axis=0))
    h, w = labels.shape
    return (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)),
            slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)))


def overlay_rgb(display: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float = 0.4) -> np.ndarray:
    """Grey slice with translucent class fills and solid outlines (RGB uint8).
    Only the box around the labels is blended: lesions are small."""
    import cv2

    grey = display if display.dtype == np.uint8 else np.clip(np.rint(display), 0, 255).astype(np.uint8)
    out = cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2RGB)
    labels = np.asarray(labels, np.uint8)
    box = _label_box(labels)
    if box is None:
        return out
    sub = labels[box]
    index = (sub.astype(np.uint16) << 8) | grey[box]
    out[box] = _blend_table(n_classes, float(alpha)).take(index, axis=0)
    offset = (box[1].start, box[0].start)
    for k in _present(sub, n_classes):
        contours, _ = cv2.findContours((sub == k).view(np.uint8), cv2.RETR_LIST,
                                       cv2.CHAIN_APPROX_NONE, offset=offset)
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
    legends: dict[tuple[int, ...], np.ndarray] = {}  # few distinct ones per study

    def one(z: int) -> None:
        img, lab = display[z], labels[z]
        if f > 1:
            img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
            lab = cv2.resize(lab, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        present = _present(lab, n)
        ov = overlay_rgb(img, lab, n)
        key = tuple(present)
        if key not in legends:
            legends[key] = _legend_band(ov.shape[1], class_names, set(present))
        out = np.concatenate([ov, legends[key]], axis=0)
        _imwrite(folder / slice_filename(z), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))

    _for_each_slice(one, display.shape[0])


def _for_each_slice(fn, n: int) -> None:
    """Run fn(z) for every slice on two threads: PNG encoding and the numpy
    work release the GIL, so the second core is not left idle."""
    from concurrent.futures import ThreadPoolExecutor

    from hemoseg.cpus import cpu_threads

    workers = min(2, cpu_threads(), n)
    if workers < 2:
        for z in range(n):
            fn(z)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, range(n)):  # re-raises the first failure
            pass


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


def _text_width(text: str, scale: float) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def _put_centred(canvas: np.ndarray, text: str, cx: int, baseline: int, scale: float, rgb) -> None:
    import cv2

    x = cx - _text_width(text, scale) // 2
    cv2.putText(canvas, text, (x, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, rgb, 1, cv2.LINE_AA)


def _wrapped(text: str, scale: float, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (the notice is longer than a small montage is wide)."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and _text_width(trial, scale) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def write_montage(display: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
                  title: str, slice_names: list[str] | None = None) -> list[int]:
    """Grid of lesion slices with a legend and the research notice; returns
    the slice indices shown.

    Drawn with OpenCV like the overlays: matplotlib cost about a second of
    every `hemoseg predict` (import, artists, layout) for a few lines of text.
    Panels are shrunk by area averaging, so thin outlines fade rather than vanish."""
    import cv2

    zs = montage_slices(labels)
    n = len(zs)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    cell, top, caption, gap = 300, 40, 16, 8  # pixels
    width = max(cols * cell, 600)
    left = (width - cols * cell) // 2
    # Legend: as many equal columns as fit, then the notice, wrapped to the width.
    entry = 26 + max(_text_width(nm, 0.45) for nm in class_names) + 18
    lcols = max(1, min(len(class_names), (width - 20) // entry))
    lrows = int(np.ceil(len(class_names) / lcols))
    notice = _wrapped(RESEARCH_NOTICE, 0.42, width - 20)
    bottom = gap + lrows * 20 + gap + len(notice) * 16 + gap
    height = top + rows * cell + bottom
    canvas = np.full((height, width, 3), 255, np.uint8)

    any_lesion = bool((labels > 0).any())
    _put_centred(canvas, title if any_lesion else f"{title}: no hemorrhage detected",
                 width // 2, 26, 0.6, (20, 20, 20))
    h, w = display.shape[1:]
    box = cell - caption - gap
    scale = min(box / h, box / w)
    ph, pw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    for i, z in enumerate(zs):
        r, c = divmod(i, cols)
        y0, x0 = top + r * cell, left + c * cell
        name = f" ({slice_names[z]})" if slice_names and len(slice_names) > z else ""
        _put_centred(canvas, f"slice {z}{name}", x0 + cell // 2, y0 + caption - 4, 0.4, (40, 40, 40))
        py, px = y0 + caption + (box - ph) // 2, x0 + (cell - pw) // 2
        panel = overlay_rgb(display[z], labels[z], len(class_names))
        canvas[py:py + ph, px:px + pw] = cv2.resize(panel, (pw, ph), interpolation=interp)

    y = top + rows * cell + gap
    lx0 = (width - lcols * entry) // 2
    for i, nm in enumerate(class_names):
        r, c = divmod(i, lcols)
        x, yy = lx0 + c * entry, y + r * 20
        cv2.rectangle(canvas, (x, yy + 3), (x + 16, yy + 15), class_color(i + 1), -1)
        cv2.putText(canvas, nm, (x + 24, yy + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
    y += lrows * 20 + gap
    for line in notice:
        _put_centred(canvas, line, width // 2, y + 12, 0.42, (170, 0, 0))
        y += 16
    # one image, embedded in report.html: worth a tighter compression
    _imwrite(path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_PNG_COMPRESSION, 3))
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

    labels = np.asarray(labels, np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(class_names) + 1)
    present = [k for k in range(1, len(class_names) + 1) if counts[k]]
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
    # A label map numbered by segment gives highdicom the same frames as one
    # boolean plane per segment, without checking and packing a 4-D array.
    segment_of = np.zeros(256, np.uint8)
    segment_of[present] = np.arange(1, len(present) + 1)
    mask = segment_of[labels]
    sources = study.dicom
    if study.dicom_frames is not None:  # one multi-frame source: its frames in file order
        sources, in_file_order = study.dicom[:1], np.empty_like(mask)
        in_file_order[np.asarray(study.dicom_frames)] = mask
        mask = in_file_order
    seg = Segmentation(
        source_images=sources,
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
