"""Synthetic CT studies written as DICOM series with known lesion volumes.

These exist to test the volume path end to end (series reading, geometry,
volumetry, DICOM SEG export), so the files carry real geometry and the
patient/study/series/equipment attributes that a SEG writer copies, and the
exact answer is stored next to them: the label volume (NIfTI) and per-class
volumes computed from it.

Layout of every label volume: numpy array (Z, Y, X) = (slice, row, column),
slices in ascending ImagePositionPatient z (inferior to superior, the same
order as InstanceNumber), rows anterior to posterior, columns patient right
to left, i.e. exactly the order of a series read and sorted by position.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hemoseg import __version__
from hemoseg.data.synth.phantom import (CLASS_NAMES, EDH, IPH, IVH, SAH, SDH, Head, render_volume,
                                        sample_head, scanner_effects)

_STUDY_CODE = 4  # rng stream, distinct from the COCO splits
# lesion mixes of the first studies; later studies draw at random
_MIXES = [(IPH, IVH, SAH), (SDH, IPH, SAH), (EDH, IPH, IVH)]
RESCALE_INTERCEPT = -1024


def _ds(v: float, decimals: int = 4) -> str:
    """A decimal string that fits DICOM DS (16 chars) and parses back to the
    float used for rendering, so geometry read from the files is exact."""
    s = f"{v:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


@dataclass
class Study:
    name: str
    head: Head
    hu: np.ndarray  # float32 (Z, Y, X)
    label: np.ndarray  # uint8 (Z, Y, X)
    spacing: tuple[float, float, float]  # (slice, row, col) mm
    origin: tuple[float, float]  # scanner (x, y) of pixel (0, 0)
    zs: list[float]  # ascending slice positions
    meta: dict


def render_study(seed: int, index: int, slices: int = 32, size: int = 512) -> Study:
    """One study in memory. Same arguments -> same arrays and identifiers."""
    rng = np.random.default_rng([seed, _STUDY_CODE, index])
    if index < len(_MIXES):
        kinds = list(_MIXES[index])
    else:
        kinds = [IPH] + [k for k in (SDH, EDH, IVH, SAH) if rng.random() < 0.4]
    head = sample_head(rng, kinds, big_lesions=True)
    ps = max(rng.uniform(0.40, 0.50) * 512 / size, head.min_fov() / size)
    ps = float(_ds(math.ceil(ps * 1000) / 1000, 3))
    dz = float(_ds(rng.uniform(4.0, 5.0), 1))
    coverage = slices * dz
    s = head.scale
    if coverage >= 110:  # a full head: from just above the vertex downwards
        top = head.to_scanner([0, 0, head.axes[2]])[2] + head.scalp + rng.uniform(2, 8)
    else:  # a short scan: centre it on the lesion-bearing levels
        top = head.center[2] + 15 * s + coverage / 2
    z0 = float(_ds(top - dz * (slices - 1), 1))
    zs = [float(_ds(z0 + k * dz, 2)) for k in range(slices)]
    origin = (float(_ds(-(size - 1) / 2 * ps, 3)), float(_ds(-(size - 1) / 2 * ps, 3)))
    hu, label = render_volume(head, zs, (size, size), ps, origin)
    hu = scanner_effects(hu, rng, ps, head.noise_std, head.blur_mm)
    name = f"synth_{index + 1:03d}"
    meta = _identity(rng, seed, index, name)
    return Study(name, head, hu, label, (dz, ps, ps), origin, zs, meta)


def _identity(rng, seed: int, index: int, name: str) -> dict:
    """Patient and study identity derived from the seed (never the clock)."""
    def uid(*what):
        return generate_uid(entropy_srcs=["hemoseg-synth", str(seed), name, *what])

    age = int(rng.integers(35, 90))
    study_date = _dt.date(2023, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)))
    birth = study_date - _dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    secs = int(rng.integers(0, 86400))
    return dict(
        patient_name=f"SYNTH^{index + 1:03d}", patient_id=f"SYNTH-{seed}-{index + 1:03d}",
        birth_date=birth.strftime("%Y%m%d"), sex=str(rng.choice(["M", "F"])), age=f"{age:03d}Y",
        study_date=study_date.strftime("%Y%m%d"),
        study_time=f"{secs // 3600:02d}{secs // 60 % 60:02d}{secs % 60:02d}",
        accession=f"SYN{seed % 100000:05d}{index + 1:04d}", study_id=f"{index + 1}",
        study_uid=uid("study"), series_uid=uid("series"), frame_uid=uid("frame"),
        uid=uid,
    )


def study_datasets(study: Study) -> list[Dataset]:
    """One CT Image Storage dataset per slice, in ascending z order."""
    m = study.meta
    dz, ps, _ = study.spacing
    stored = np.clip(np.rint(study.hu) - RESCALE_INTERCEPT, 0, 4095).astype(np.uint16)
    rows, cols = stored.shape[1:]
    out = []
    for k, z in enumerate(study.zs):
        sop_uid = m["uid"]("image", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "HEMOSEG_SYNTH"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = m["study_date"]
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = m["study_time"]
        ds.AccessionNumber = m["accession"]
        ds.Modality = "CT"
        ds.Manufacturer = "hemoseg"
        ds.InstitutionName = "Synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT HEAD WITHOUT CONTRAST (synthetic)"
        ds.SeriesDescription = f"Axial {_ds(dz)}mm brain (synthetic)"
        ds.ManufacturerModelName = "hemoseg synthetic phantom"
        ds.DeviceSerialNumber = "0000"
        ds.SoftwareVersions = __version__
        ds.PatientName = m["patient_name"]
        ds.PatientID = m["patient_id"]
        ds.PatientBirthDate = m["birth_date"]
        ds.PatientSex = m["sex"]
        ds.PatientAge = m["age"]
        ds.BodyPartExamined = "HEAD"
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.KVP = "120"
        ds.ConvolutionKernel = "H30s"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = m["study_uid"]
        ds.SeriesInstanceUID = m["series_uid"]
        ds.StudyID = m["study_id"]
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(study.origin[0]), _ds(study.origin[1]), _ds(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = m["frame_uid"]
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds(ps), _ds(ps)]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "80"
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        out.append(ds)
    return out


def label_affine(study: Study) -> np.ndarray:
    """Voxel (z, y, x) index -> RAS mm, matching the DICOM geometry (LPS)."""
    dz, ps, _ = study.spacing
    x0, y0 = study.origin
    return np.array([[0, 0, -ps, -x0], [0, -ps, 0, -y0], [dz, 0, 0, study.zs[0]], [0, 0, 0, 1]],
                    dtype=np.float64)


def class_volumes(label: np.ndarray, spacing) -> tuple[dict, dict]:
    """mL per class, exactly voxel count * voxel volume (mm^3) / 1000."""
    voxel_mm3 = float(spacing[0]) * float(spacing[1]) * float(spacing[2])
    counts = np.bincount(label.ravel(), minlength=7)
    vox = {name: int(counts[k]) for k, name in CLASS_NAMES.items()}
    ml = {name: vox[name] * voxel_mm3 / 1000.0 for name in vox}
    return ml, vox


def write_study(study: Study, dicom_dir: Path, seed: int) -> dict:
    series_dir = dicom_dir / study.name
    series_dir.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(study_datasets(study)):
        # hashed names, so nothing about the order survives in the file names
        fname = hashlib.sha1(f"{seed}/{study.name}/{k}".encode()).hexdigest()[:16] + ".dcm"
        ds.save_as(series_dir / fname, enforce_file_format=True)
    label_name = f"{study.name}_labels.nii.gz"
    img = nib.Nifti1Image(study.label, label_affine(study))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, dicom_dir / label_name)
    ml, vox = class_volumes(study.label, study.spacing)
    return {
        "spacing_mm": [float(v) for v in study.spacing],
        "axis_order": "zyx",
        "z_order": "ascending ImagePositionPatient z (inferior to superior), same as InstanceNumber",
        "shape": [int(v) for v in study.label.shape],
        "volumes_ml": ml,
        "voxels": vox,
        "labels": label_name,
        "series_dir": study.name,
        "patient_id": study.meta["patient_id"],
        "study_instance_uid": study.meta["study_uid"],
        "series_instance_uid": study.meta["series_uid"],
    }


def generate_dicom(out_dir, seed: int = 0, studies: int = 3, slices: int = 32, size: int = 512) -> dict:
    """Write OUT/<study>/ series, labels and OUT/ground_truth.json; return the latter."""
    dicom_dir = Path(out_dir)
    dicom_dir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(studies):
        study = render_study(seed, i, slices, size)
        truth[study.name] = write_study(study, dicom_dir, seed)
    (dicom_dir / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    return truth
