"""Turn what a user points `hemoseg predict` at into Studies.

Discovery (`discover`) only looks at names and a few header bytes, so a batch
can list every study, and every unusable path, before anything heavy is read.
Loading (`load_study`) then reads one study and raises HemosegError naming
the exact file at fault; the pipeline reports it and moves on.

Rules, chosen so that a clinician's PACS export "just works" and a damaged
series is refused rather than silently measured on missing slices:

* A file argument is one study: .nii/.nii.gz -> NIfTI volume, .png/.jpg/.jpeg
  -> one single-slice study, anything else must be a DICOM file.
* A folder argument is searched recursively. Each folder that directly holds
  DICOM files is one DICOM study; each folder that directly holds PNG/JPG
  files (and no DICOM) is one study whose slices are the images in natural
  name order ("s2" before "s10"); every NIfTI file is its own study. So a
  folder of per-patient subfolders is a batch.
* A file counts as DICOM if it carries the "DICM" marker or is named
  .dcm/.dicom/.ima. Such a file that cannot be read fails its whole study:
  dropping a slice would silently shrink the measured volume. Other files
  (DICOMDIR, README.txt, viewer programs, ...) cannot hold slices; they are
  skipped and listed as a warning in the study's report.
* One folder must hold one image series. Several series in one folder (say a
  brain and a bone kernel) fail that folder with the series count and the
  advice to separate them, because guessing which one the user meant, or
  silently producing several results, would be worse than asking. DICOM
  objects without pixel data in their own series (dose reports, presentation
  states) are skipped with a warning; an image slice without pixel data
  fails the study.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError
from hemoseg.inference.study import Study

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_SKIP_NAMES = {"dicomdir", "thumbs.db", "desktop.ini"}


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------
@dataclass
class StudyInput:
    """A study found on disk but not read yet."""

    name: str
    kind: str  # "dicom" | "nifti" | "image"
    paths: list[Path]
    origin: Path
    """The file or folder named in messages about this study."""
    ignored: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Said in the study's report (e.g. what splitting its folder left out)."""
    series: str | None = None
    """Set when split out of a folder of several series: its SeriesNumber (or UID tail)."""
    description: str = ""
    """That series' SeriesDescription, to tell a person which one it is."""


def _is_nifti(p: Path) -> bool:
    n = p.name.lower()
    return n.endswith(".nii") or n.endswith(".nii.gz")


def _stem(p: Path) -> str:
    n = p.name
    for suf in (".nii.gz", ".nii"):
        if n.lower().endswith(suf):
            return n[: -len(suf)]
    return p.stem if p.suffix else n


def _has_dicm_marker(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _must_be_dicom(p: Path) -> bool:
    suf = p.suffix.lower()
    return suf in DICOM_SUFFIXES


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def safe_name(name: str) -> str:
    """Folder-safe study name (output folder names must not escape DIR)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return s or "study"


def _classify_dir(files: list[Path]):
    dicom, nifti, images, other = [], [], [], []
    for p in files:
        low = p.name.lower()
        if low.startswith(".") or low in _SKIP_NAMES:
            continue
        if _is_nifti(p):
            nifti.append(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        elif _must_be_dicom(p) or _has_dicm_marker(p):
            dicom.append(p)
        else:
            other.append(p)
    return dicom, nifti, images, other


def _walk(root: Path, exclude: list[Path]):
    """Sorted, deterministic walk that skips hidden folders and the output."""
    excl = {e.resolve() for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = sorted(
            n for n in dirnames
            if not n.startswith(".") and n != "__MACOSX" and (d / n).resolve() not in excl
        )
        yield d, sorted((d / f for f in filenames if (d / f).is_file()), key=_natural_key)


def _discover_dir(root: Path, exclude: list[Path]) -> list[StudyInput]:
    found: list[StudyInput] = []
    total_files = 0
    skipped: list[Path] = []
    for d, files in _walk(root, exclude):
        total_files += len(files)
        rel = d.relative_to(root)
        base = "_".join(rel.parts) if rel.parts else root.resolve().name
        dicom, nifti, images, other = _classify_dir(files)
        if dicom:
            found.append(StudyInput(base, "dicom", dicom, d, ignored=other + images))
        else:
            skipped += other
            if images:
                found.append(StudyInput(base, "image", images, d))
        for p in nifti:
            nm = "_".join(rel.parts + (_stem(p),))
            found.append(StudyInput(nm, "nifti", [p], p))
    if not found:
        if total_files == 0:
            raise HemosegError("folder is empty (no files found, searched recursively)", root)
        shown = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        raise HemosegError(
            f"no DICOM series, NIfTI volume or PNG/JPG image found "
            f"({len(skipped)} other file(s) ignored: {shown})", root)
    return found


def _discover_file(p: Path) -> StudyInput:
    if _is_nifti(p):
        kind = "nifti"
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        kind = "image"
    else:
        kind = "dicom"
    return StudyInput(_stem(p), kind, [p], p)


def discover(inputs, exclude=(), each_series: bool = False) -> tuple[list[StudyInput], list[tuple[Path, HemosegError]]]:
    """Expand CLI inputs into studies; unusable inputs come back as
    (path, error) pairs so one bad path never stops the rest of a batch. With
    `each_series`, a folder of several image series gives one study per series."""
    studies: list[StudyInput] = []
    problems: list[tuple[Path, HemosegError]] = []
    exclude = [Path(e) for e in exclude]
    for raw in inputs:
        p = Path(raw)
        try:
            if not p.exists():
                raise HemosegError("does not exist", p)
            if p.is_dir():
                studies += _discover_dir(p, exclude)
            elif p.is_file():
                studies.append(_discover_file(p))
            else:
                raise HemosegError("is neither a file nor a folder", p)
        except PermissionError:
            problems.append((p, HemosegError("permission denied", p)))
        except HemosegError as exc:
            problems.append((p, exc))
    if each_series:
        studies = [part for s in studies for part in split_series(s)]
    # unique, folder-safe names (two inputs may share a folder name)
    seen: dict[str, int] = {}
    for s in studies:
        base = safe_name(s.name)
        n = seen.get(base.lower(), 0) + 1
        seen[base.lower()] = n
        s.name = base if n == 1 else f"{base}-{n}"
    return studies, problems


def load_study(item: StudyInput) -> Study:
    """Read one discovered study. Raises HemosegError naming the bad file."""
    if item.kind == "nifti":
        study = read_nifti(item.paths[0], name=item.name)
    elif item.kind == "image":
        study = read_images(item.paths, name=item.name)
    else:
        study = read_dicom_series(item.paths, name=item.name, origin=item.origin)
    if item.ignored:
        shown = ", ".join(p.name for p in item.ignored[:5]) + (", ..." if len(item.ignored) > 5 else "")
        study.warnings.append(f"ignored {len(item.ignored)} non-DICOM file(s) in {item.origin}: {shown}")
    study.warnings += item.notes
    return study


def split_series(item: StudyInput) -> list[StudyInput]:
    """A folder of DICOM files that holds several image series (a flat PACS export of a
    whole study) -> one StudyInput per series, named <folder>_S<SeriesNumber>. Localizer
    (scout) series and objects that are not images are left out and said so. A folder
    with one series, or with a file whose header cannot be read, is returned as it is:
    the reader then names the problem."""
    import pydicom

    if item.kind != "dicom" or len(item.paths) < 2:
        return [item]
    tags = ["SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SOPClassUID", "ImageType"]
    groups: dict[str, list[tuple[Path, object]]] = {}
    for p in item.paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # the reader gives the one-line error for this file
            return [item]
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    series, left_out = [], []
    for uid, members in groups.items():
        ds = members[0][1]
        number = ds.get("SeriesNumber")
        label = f"series {number if number is not None else uid}"
        if not _is_image_sop(ds):
            left_out.append(f"{label} ({len(members)} non-image object(s): {_sop_name(ds)})")
        elif _is_localizer(ds):
            left_out.append(f"{label} ({len(members)} localizer image(s))")
        else:
            series.append((number, uid, [p for p, _ in members], str(ds.get("SeriesDescription", "") or "")))
    if len(series) < 2:
        return [item]
    notes = [f"{item.origin} holds {len(series)} image series, each read as its own study"
             + (f"; left out {', '.join(left_out)}" if left_out else "")]
    out = []
    for number, uid, paths, description in sorted(
            series, key=lambda s: (s[0] is None, s[0] if s[0] is not None else 0, s[1])):
        tag = str(number) if number is not None else uid.rsplit(".", 1)[-1][-8:]
        out.append(StudyInput(f"{item.name}_S{tag}" if number is not None else f"{item.name}_{tag}", "dicom",
                              paths, item.origin, ignored=item.ignored, notes=list(notes), series=tag,
                              description=description.strip()))
    return out


def series_label(item: StudyInput) -> tuple[str | None, str, bool]:
    """(SeriesNumber, SeriesDescription, is a localizer) of a DICOM input, to tell a person
    which series it is: from its split if it was split out of a flat folder (which leaves
    localizers out), else from its first readable header. (None, "", False) when no header
    says."""
    if item.series is not None or item.kind != "dicom":
        return item.series, item.description, False
    import pydicom

    for p in item.paths[:3]:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["SeriesNumber", "SeriesDescription", "ImageType"])
        except Exception:  # the reader names an unreadable file when the series is read
            continue
        number = ds.get("SeriesNumber")
        return ((None if number is None else str(number)), str(ds.get("SeriesDescription", "") or "").strip(),
                _is_localizer(ds))
    return None, "", False


def read_path(path) -> list[Study]:
    """Every study under one file or folder (for callers other than the CLI)."""
    items, problems = discover([path])
    if problems:
        raise problems[0][1]
    return [load_study(i) for i in items]


# --------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _dcmread(p: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(p)
        except InvalidDicomError:
            if not _must_be_dicom(p):
                raise
            ds = pydicom.dcmread(p, force=True)  # .dcm without preamble
            if "SOPInstanceUID" not in ds:
                raise
            return ds
    except InvalidDicomError:
        if not _must_be_dicom(p):
            raise HemosegError("is not a DICOM file, NIfTI volume (.nii/.nii.gz) or PNG/JPG "
                               "image", p) from None
        hint = "; empty or truncated?" if p.stat().st_size < 132 else ""
        raise HemosegError(f"is not a DICOM file (no DICOM header{hint})", p) from None
    except PermissionError:
        raise HemosegError("permission denied", p) from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise HemosegError(f"is not a readable DICOM file (truncated or corrupt: "
                           f"{type(exc).__name__}: {exc})", p) from None


def _check_transfer_syntax(ds, p: Path, cache: dict):
    from pydicom.uid import UID, ImplicitVRLittleEndian

    uid = UID(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)) \
        if hasattr(ds, "file_meta") else UID(ImplicitVRLittleEndian)
    if uid in cache:
        if cache[uid]:
            raise HemosegError(cache[uid], p)
        return
    from pydicom.pixels import get_decoder

    msg = ""
    label = f"{uid.name} ({uid})" if uid.is_valid and uid.name != uid else str(uid)
    try:
        dec = get_decoder(uid)
        if not dec.is_available:
            needs = "; ".join(dec.missing_dependencies) or "an optional decoder"
            msg = (f"pixel data is compressed as {label}, which this installation cannot decode "
                   f"(needs {needs}); install that package or decompress the series first "
                   f"(e.g. 'gdcmconv --raw' or 'dcmdjpeg')")
    except NotImplementedError:
        msg = (f"unsupported transfer syntax {label}; decompress the series first "
               f"(e.g. 'gdcmconv --raw' or 'dcmdjpeg')")
    cache[uid] = msg
    if msg:
        raise HemosegError(msg, p)


def _decode(ds, p: Path, ts_cache: dict, shape: tuple) -> np.ndarray:
    """The stored values of one file: (H, W), or (frames, H, W) for multi-frame."""
    _check_transfer_syntax(ds, p, ts_cache)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise HemosegError("is a colour image; hemoseg needs greyscale CT slices", p)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise HemosegError(f"pixel data is truncated or corrupt ({type(exc).__name__}: {exc})",
                           p) from None
    if arr.shape != shape:
        raise HemosegError(f"unexpected pixel array shape {arr.shape}", p)
    return arr


def _to_hu(stored: np.ndarray, header, out: np.ndarray) -> None:
    """Rescale stored values into `out` (float32 HU), a row of the study's volume:
    no per-slice copies to stack afterwards."""
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
    out += np.float32(intercept)


def _frame_headers(ds, p: Path) -> list:
    """Enhanced (multi-frame) CT keeps each frame's geometry and rescale in functional
    groups. Lift them into one plain header per frame, so the ordering, spacing and
    HU logic of single-frame series applies unchanged."""
    from pydicom.dataset import Dataset

    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n:
        raise HemosegError(f"has {len(per_frame)} per-frame headers for {n} frames", p)
    where = {"ImagePositionPatient": "PlanePositionSequence",
             "ImageOrientationPatient": "PlaneOrientationSequence",
             "PixelSpacing": "PixelMeasuresSequence", "SliceThickness": "PixelMeasuresSequence",
             "SpacingBetweenSlices": "PixelMeasuresSequence",
             "RescaleSlope": "PixelValueTransformationSequence",
             "RescaleIntercept": "PixelValueTransformationSequence"}
    headers = []
    for i in range(n):
        groups = [g for g in ((per_frame[i] if per_frame else None), shared) if g is not None]
        h = Dataset()
        for kw, seq_kw in where.items():
            value = next((g[seq_kw][0].get(kw) for g in groups
                          if g.get(seq_kw) and kw in g[seq_kw][0]), ds.get(kw))
            if value is not None:
                setattr(h, kw, value)
        h.InstanceNumber = i + 1
        headers.append(h)
    return headers


def _float_list(ds, kw, n):
    v = ds.get(kw)
    try:
        out = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _positive(ds, kw):
    try:
        v = float(ds.get(kw))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def read_dicom_series(paths, name: str | None = None, origin: Path | None = None) -> Study:
    """One DICOM image series -> Study in HU, slices ordered along the normal."""
    paths = [Path(p) for p in paths]
    origin = Path(origin) if origin is not None else paths[0]
    name = name or (origin.name if origin.is_dir() else _stem(origin))
    warnings: list[str] = []

    images, no_pixels, derived = [], [], []
    for p in paths:
        ds = _dcmread(p)
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            no_pixels.append((p, ds))
        elif _is_image_sop(ds):
            images.append((p, ds))
        else:  # a SEG, RT dose or the like saved beside the CT: not a slice to read
            derived.append((p, ds))
    if derived and images:
        warnings.append(f"skipped {len(derived)} DICOM object(s) that are not images "
                        f"(e.g. {derived[0][0].name}: {_sop_name(derived[0][1])})")
    elif derived:
        images = derived  # nothing else to read: the CT-only check below names what it is
    if not images:
        if len(no_pixels) == 1:
            p, ds = no_pixels[0]
            raise HemosegError(f"DICOM file has no pixel data ({_sop_name(ds)}); "
                               "hemoseg needs CT image slices", p)
        raise HemosegError(f"none of the {len(no_pixels)} DICOM files holds pixel data; "
                           "hemoseg needs CT image slices", origin)

    series: dict[str, list] = {}
    for p, ds in images:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    scouts = [u for u, members in series.items() if _is_localizer(members[0][1])]
    if scouts and len(scouts) == len(series):
        raise HemosegError("holds only localizer (scout) images; hemoseg segments axial CT series", origin)
    if scouts:  # the scout a CT study always has: not a candidate
        n = sum(len(series[u]) for u in scouts)
        warnings.append(f"skipped {len(scouts)} localizer (scout) series ({n} image(s), "
                        f"e.g. {series[scouts[0]][0][0].name})")
        for u in scouts:
            del series[u]
        images = [m for members in series.values() for m in members]
    if len(series) > 1:
        uids = sorted(series)
        counts = ", ".join(f"{u or '<no UID>'} ({len(series[u])} files)" for u in uids)
        raise HemosegError(
            f"holds {len(series)} DICOM series ({counts}); hemoseg reads one series per folder: "
            "move each series into its own subfolder and give the parent folder", origin)
    series_uid = next(iter(series))
    for p, ds in no_pixels:
        # An image object without pixels is a damaged slice (often a truncated
        # copy); skipping it would silently shrink the volume.
        if str(ds.get("SeriesInstanceUID", "")) == series_uid or _is_image_sop(ds):
            raise HemosegError(f"DICOM file has no pixel data ({_sop_name(ds)}) but belongs "
                               "to the image series", p)
    if no_pixels:
        warnings.append(f"skipped {len(no_pixels)} DICOM file(s) without pixel data "
                        f"(e.g. {no_pixels[0][0].name}: {_sop_name(no_pixels[0][1])})")

    # duplicate files of one instance (copied twice) are harmless; drop them
    uniq, seen = [], set()
    for p, ds in images:
        uid = str(ds.get("SOPInstanceUID", "")) or str(p)
        if uid in seen:
            warnings.append(f"skipped duplicate of SOP instance {uid}: {p.name}")
            continue
        seen.add(uid)
        uniq.append((p, ds))
    images = uniq

    modality = str(images[0][1].get("Modality", "CT") or "CT")
    if modality != "CT":
        raise HemosegError(f"is Modality {modality}; hemoseg segments CT only", origin)
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in images}
    if len(sizes) > 1:
        raise HemosegError(f"slices have different sizes ({sorted(sizes)}); "
                           "not one consistent series", origin)

    ts_cache: dict = {}
    shape = sizes.pop()
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for _, ds in images]
    if max(frames) > 1 and len(images) > 1:
        p = next(p for (p, _), f in zip(images, frames) if f > 1)
        raise HemosegError(f"a multi-frame DICOM ({max(frames)} frames) among {len(images)} files "
                           "of one series; give the multi-frame file on its own", p)
    multiframe = len(images) == 1 and (frames[0] > 1 or "PerFrameFunctionalGroupsSequence" in images[0][1])
    if multiframe:  # one file holds the whole stack (Enhanced CT and similar)
        mf_path, mf_ds = images[0]
        stored = _decode(mf_ds, mf_path, ts_cache, (frames[0], *shape) if frames[0] > 1 else shape)
        stored = stored.reshape(frames[0], *shape)
        images = [(mf_path.with_name(f"{mf_path.name} frame {i + 1}"), h)
                  for i, h in enumerate(_frame_headers(mf_ds, mf_path))]
    order, slice_spacing, affine, ordering_warn, slice_mm = _order_slices(images, origin)
    if ordering_warn:
        warnings.append(ordering_warn)
    images = [images[i] for i in order]

    pixels = np.empty((len(images), *shape), np.float32)
    for k, ((p, ds), row) in enumerate(zip(images, pixels)):
        _to_hu(stored[order[k]] if multiframe else _decode(ds, p, ts_cache, shape), ds, row)

    ds0 = images[0][1]
    ps = _float_list(ds0, "PixelSpacing", 2)
    if ps is not None and not all(v > 0 for v in ps):
        ps = None
    spacing = None
    if ps is None:
        warnings.append("no PixelSpacing in the DICOM header: volumes unavailable")
    elif slice_spacing is None:
        warnings.append("slice spacing unknown (no positions, SliceThickness or "
                        "SpacingBetweenSlices): volumes unavailable")
    else:
        spacing = (slice_spacing, ps[0], ps[1])
    if affine is not None and ps is not None:
        affine = affine(ps)
    else:
        affine = None

    return Study(
        name=name, pixels=pixels, is_hu=True, spacing=spacing, source="dicom",
        source_paths=[mf_path] * len(images) if multiframe else [p for p, _ in images],
        dicom=[mf_ds] * len(images) if multiframe else [ds for _, ds in images],
        dicom_frames=list(order) if multiframe else None, affine=affine,
        slice_sources=[p.name for p, _ in images], warnings=warnings,
        slice_mm=slice_mm if spacing is not None else None,
    )


def _is_localizer(ds) -> bool:
    """A scout/topogram: ImageType's third value is LOCALIZER (DICOM CT Image module)."""
    return "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def _is_image_sop(ds) -> bool:
    """True for image storage classes, and when the class is unknown (a
    header cut short), so only recognisable non-image objects are skipped."""
    uid = ds.get("SOPClassUID")
    if uid is None:
        return True
    return "Image Storage" in getattr(uid, "name", "") or not getattr(uid, "is_valid", True)


def _sop_name(ds) -> str:
    uid = ds.get("SOPClassUID")
    try:
        name = f"SOP class {uid.name}" if uid is not None else "no SOP class"
    except AttributeError:
        name = f"SOP class {uid}"
    if "Image Storage" in name:
        name += "; the file may be truncated"
    return name


def _order_slices(images, origin):
    """Sort along the slice normal; fall back to InstanceNumber, then names.

    Returns (order, slice_spacing_mm | None, affine_factory | None, warning,
    per-slice extents in mm where the spacing is uneven, else None). Spacing from
    positions is the distance along the normal, which is what a voxel's volume needs
    even with gantry tilt."""
    n = len(images)
    dss = [ds for _, ds in images]
    iops = [_float_list(ds, "ImageOrientationPatient", 6) for ds in dss]
    ipps = [_float_list(ds, "ImagePositionPatient", 3) for ds in dss]
    warning = None

    if all(v is not None for v in iops) and all(v is not None for v in ipps):
        iop = np.array(iops[0])
        if not all(np.allclose(np.array(v), iop, atol=1e-3) for v in iops):
            raise HemosegError("slices have different orientations (ImageOrientationPatient); "
                               "not one consistent stack", origin)
        row, col = iop[:3], iop[3:]
        normal = np.cross(row, col)
        if np.linalg.norm(normal) < 1e-6:
            raise HemosegError("invalid ImageOrientationPatient (row and column parallel)", origin)
        normal /= np.linalg.norm(normal)
        pos = np.array([np.dot(normal, v) for v in ipps])
        order = [int(i) for i in np.argsort(pos, kind="stable")]
        sorted_pos = pos[order]
        diffs = np.diff(sorted_pos)
        if n > 1 and np.min(diffs) < 1e-3:
            i = int(np.argmin(diffs))
            a, b = images[order[i]][0].name, images[order[i + 1]][0].name
            raise HemosegError(f"two slices at the same position ({a} and {b}); the folder "
                               "mixes acquisitions or holds duplicates", origin)
        extents = None
        if n > 1:
            spacing = float(np.median(diffs))
            if np.max(diffs) - np.min(diffs) > 0.1 * spacing:
                warning = (f"uneven slice spacing ({np.min(diffs):.3g} to {np.max(diffs):.3g} mm, "
                           "missing slices?); volumes weigh each slice by the distance halfway to its "
                           "neighbours; the NIfTI output, which needs one spacing, uses the mean")
                gaps = np.concatenate([diffs[:1], diffs, diffs[-1:]])
                extents = (gaps[:-1] + gaps[1:]) / 2.0
        else:
            spacing = _positive(dss[0], "SliceThickness") or _positive(dss[0], "SpacingBetweenSlices")
        first = np.array(ipps[order[0]])
        if n > 1:
            step = (np.array(ipps[order[-1]]) - first) / (n - 1)
        else:
            step = normal * (spacing or 1.0)

        def affine(ps):
            lps = np.eye(4)
            lps[:3, 0] = row * ps[1]  # column index i moves along the row direction
            lps[:3, 1] = col * ps[0]
            lps[:3, 2] = step
            lps[:3, 3] = first
            return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS

        return order, spacing, (affine if spacing else None), warning, extents

    def thickness(ds):
        if n > 1:
            return _positive(ds, "SpacingBetweenSlices") or _positive(ds, "SliceThickness")
        return _positive(ds, "SliceThickness") or _positive(ds, "SpacingBetweenSlices")

    nums = [ds.get("InstanceNumber") for ds in dss]
    if all(v is not None for v in nums) and len({int(v) for v in nums}) == n:
        order = sorted(range(n), key=lambda i: int(nums[i]))
        if n > 1:
            warning = "no slice positions in the DICOM headers: slices ordered by InstanceNumber"
    else:
        order = sorted(range(n), key=lambda i: _natural_key(images[i][0]))
        if n > 1:
            warning = ("no slice positions or unique InstanceNumbers in the DICOM headers: "
                       "slices ordered by file name")
    return order, thickness(dss[0]), None, warning, None


# --------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------
_DISPLAY_AXES = ("L", "P", "S")
"""Array axes (i, j, k) after reorientation: image columns run to the
patient's left and rows to posterior (radiological display, as DICOM axial
slices are stored), slices run inferior -> superior."""


def read_nifti(path, name: str | None = None) -> Study:
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    path = Path(path)
    name = name or _stem(path)
    warnings: list[str] = []
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise HemosegError(f"is not a readable NIfTI file ({type(exc).__name__}: {exc})",
                           path) from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) >= 4:
        raise HemosegError(f"is a {len(shape)}-D NIfTI (shape {'x'.join(map(str, img.shape))}); "
                           "hemoseg needs one 3-D volume: split it first (e.g. fslsplit)", path)
    elif len(shape) not in (2, 3):
        raise HemosegError(f"NIfTI has unsupported shape {img.shape}", path)
    display = np.dtype(img.get_data_dtype()) == np.uint8 and _unscaled(img.header)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise HemosegError(f"NIfTI image data is truncated or corrupt "
                           f"({type(exc).__name__}: {exc})", path) from None
    if data.ndim == 2:
        data = data[:, :, None]
    if not np.all(np.isfinite(data)):
        fill = 0.0 if display else -1024.0
        warnings.append(f"replaced {int(np.sum(~np.isfinite(data)))} NaN/inf voxels with {fill:g}")
        data = np.nan_to_num(data, nan=fill, posinf=fill, neginf=fill)

    hdr = img.header
    affine = np.asarray(img.affine, dtype=float)
    if int(hdr.get("qform_code", 0)) == 0 and int(hdr.get("sform_code", 0)) == 0:
        warnings.append("NIfTI header has no orientation (qform/sform code 0); "
                        "array axes assumed to be x, y, z")
    layout = io_orientation(affine)
    transform = ornt_transform(layout, axcodes2ornt(_DISPLAY_AXES))
    data = apply_orientation(data, transform)
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)

    zooms = [float(z) for z in hdr.get_zooms()[:3]]
    flat = len(zooms) < 3  # a 2-D image has no slice thickness
    zooms += [1.0] * (3 - len(zooms))
    unit = hdr.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    new = [0.0, 0.0, 0.0]
    for a in range(3):
        new[int(transform[a, 0])] = zooms[a] * scale
    spacing = (new[2], new[1], new[0])
    if flat:
        warnings.append("2-D NIfTI has no slice thickness: volumes unavailable")
        spacing = None
    elif not all(np.isfinite(s) and s > 0 for s in spacing):
        warnings.append(f"NIfTI voxel sizes {zooms} are not usable: volumes unavailable")
        spacing = None
    if unit == "unknown":
        warnings.append("NIfTI spatial unit not set; voxel sizes taken as mm")

    return Study(
        name=name, pixels=pixels, is_hu=not display, spacing=spacing, source="nifti",
        source_paths=[path], affine=affine, nifti_header=hdr.copy(),
        slice_sources=[f"{path.name}[z={k}]" for k in range(pixels.shape[0])], warnings=warnings,
    )


def _unscaled(hdr) -> bool:
    slope, inter = hdr.get_slope_inter()
    return (slope is None or slope == 1) and (inter is None or inter == 0)


def labels_to_nifti_array(labels: np.ndarray, study: Study) -> np.ndarray:
    """(Z,H,W) labels -> array in the layout `study.affine` describes."""
    x = np.asarray(labels).transpose(2, 1, 0)
    if study.source != "nifti":
        return np.ascontiguousarray(x)
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    back = ornt_transform(axcodes2ornt(_DISPLAY_AXES), io_orientation(study.affine))
    x = apply_orientation(x, back)
    hdr_shape = tuple(study.nifti_header.get_data_shape()) if study.nifti_header is not None else x.shape
    if len(hdr_shape) == 2:  # a 2-D input gets a 2-D output
        x = x[:, :, 0]
    return np.ascontiguousarray(x)


def voxel_to_world(study: Study) -> np.ndarray | None:
    """Affine from an index (col, row, slice) of `study.pixels` to the file's world space.
    A DICOM study's affine already is one; a NIfTI study's describes the file's own axis
    order, which reading reoriented (so two files of one grid in different layouts compare)."""
    if study.affine is None or study.source != "nifti":
        return study.affine
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    to_display = ornt_transform(io_orientation(study.affine), axcodes2ornt(_DISPLAY_AXES))
    shown = study.pixels.shape[::-1]  # (col, row, slice)
    file_shape = [0, 0, 0]
    for axis in range(3):
        file_shape[axis] = shown[int(to_display[axis, 0])]
    return study.affine @ inv_ornt_aff(to_display, file_shape)


def read_label_volume(path, on: Study | None = None, onto: str = "image",
                      known: dict | None = None) -> tuple[np.ndarray, Study]:
    """A NIfTI label volume as integer labels (Z,H,W), oriented as `predict` reads volumes.

    Given the study `on` it labels (called `onto` in messages), it must lie on that study's
    voxel grid: same shape, and the same place through `voxel_to_world`, so a file storing
    the grid in another axis order (ITK tools write LPS) is accepted and a shifted one is
    not. Given `known` values, any other non-zero value is refused. Nothing is resampled:
    training data (`data from-nifti`) and volume scores (`score`) must not rest on a guess."""
    study = read_nifti(path)
    values = study.pixels
    if on is not None:
        if values.shape != on.shape:
            raise HemosegError(f"label grid {values.shape} differs from the {onto}'s {on.shape} "
                               "(after orienting both the same way)", path)
        mine, theirs = voxel_to_world(study), voxel_to_world(on)
        if mine is not None and theirs is not None and not np.allclose(mine, theirs, atol=1e-3):
            raise HemosegError(f"label volume is placed differently from the {onto} (their affines differ)",
                               path)
    labels = np.rint(values).astype(np.int64)
    if not np.allclose(values, labels, atol=1e-3):
        raise HemosegError("label volume holds fractional values, not labels (resampled with interpolation?)",
                           path)
    if known is not None:
        unknown = sorted(set(np.unique(labels).tolist()) - set(known) - {0})
        if unknown:
            raise HemosegError(f"label values {unknown} have no class (known: "
                               f"{', '.join(map(str, sorted(known)))}; see --classes)", path)
    return labels, study


# --------------------------------------------------------------------------
# PNG / JPG
# --------------------------------------------------------------------------
def _read_image(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance (H, W) float32, plus the RGB channels when they differ (see Study.colour)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise HemosegError(f"is a {mode} (16-bit/float) image; hemoseg reads 8-bit "
                                   "windowed slices from PNG/JPG, use DICOM or NIfTI for HU", p)
            arr = np.asarray(im.convert("L"), dtype=np.float32)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8) if im.mode in ("RGB", "RGBA") else None
            if rgb is not None and (rgb == rgb[..., :1]).all():
                rgb = None  # grayscale stored as RGB, as Roboflow does
    except HemosegError:
        raise
    except UnidentifiedImageError:
        raise HemosegError("is not a readable PNG/JPG image", p) from None
    except PermissionError:
        raise HemosegError("permission denied", p) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HemosegError(f"image is truncated or corrupt ({exc})", p) from None
    return arr, rgb


def read_images(paths, name: str | None = None) -> Study:
    """8-bit display slices; spacing is unknown and stays unknown."""
    paths = sorted((Path(p) for p in paths), key=_natural_key)
    name = name or (paths[0].parent.name if len(paths) > 1 else _stem(paths[0]))
    slices, colour = zip(*(_read_image(p) for p in paths))
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        odd = next(p for p, s in zip(paths, slices) if s.shape != slices[0].shape)
        raise HemosegError(f"images in one folder must share a size to form a study "
                           f"({odd.name} differs from {paths[0].name})", paths[0].parent)
    return Study(
        name=name, pixels=np.stack(slices), is_hu=False, spacing=None, source="image",
        colour=None if any(c is None for c in colour) else np.stack(colour),
        source_paths=paths, slice_sources=[p.name for p in paths],
    )
