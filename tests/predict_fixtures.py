"""Tiny synthetic inputs for the predict tests (DICOM, NIfTI, PNG) and a fake
predictor with the real Predictor's interface."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from hemoseg.data.preprocessing import Preprocessing

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class FakePredictor:
    """label 1 where HU in [50, 90] (or display value >= 200 for images)."""

    class_names = ["Intraparenchymal hemorrhage"]
    preprocessing = Preprocessing()
    backend = "fake"

    def __init__(self):
        self.calls = 0

    def predict_volume(self, study, tta=False, progress=None):
        self.calls += 1
        x = study.pixels
        if study.is_hu:
            return ((x >= 50) & (x <= 90)).astype(np.uint8)
        return (x >= 200).astype(np.uint8)

    @classmethod
    def from_run(cls, run_dir, backend="auto"):
        return cls()


def ct_volume(z=6, size=64, blob=True) -> np.ndarray:
    """HU volume: air outside a 'head' of brain (30 HU), a blood blob (70 HU)
    and a per-slice marker pixel so slice order can be checked."""
    vol = np.full((z, size, size), -1000.0, np.float32)
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.42) ** 2
    vol[:, head] = 30.0
    if blob:
        vol[1:4, 20:30, 25:37] = 70.0  # 3 slices x 10 x 12 = 360 voxels
    for k in range(z):
        vol[k, 0, 0] = 200.0 + k  # marker: slice k carries 200 + k
    return vol


def write_ct_series(folder: Path, hu: np.ndarray, *, spacing=(2.5, 0.5, 0.5), iop=AXIAL,
                    positions=None, intercept=-1024.0, slope=1.0, shuffle=True,
                    series_uid=None, with_positions=True, thickness=None, seed=0,
                    reverse_instance=False, transfer_syntax=None) -> list[tuple[Path, str]]:
    """Write `hu` (slice 0 = inferior) as single-frame CT files.

    Returns [(path, SOPInstanceUID)] in anatomical (hu) order. File names are
    shuffled so nothing can rely on them."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    z, h, w = hu.shape
    study_uid, series_uid = "1.2.826.0.1.3680043.8.498.1", series_uid or generate_uid()
    frame_uid = generate_uid()
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    if positions is None:
        positions = [np.array([-16.0, -16.0, 0.0]) + k * spacing[0] * normal for k in range(z)]
    names = [f"IM{i:03d}.dcm" for i in range(z)]
    if shuffle:
        random.Random(seed).shuffle(names)
    out = []
    for k in range(z):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Doe^Jane", "P001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.SeriesNumber = 2
        ds.InstanceNumber = (z - k) if reverse_instance else (k + 1)
        ds.Manufacturer = "test"
        ds.PositionReferenceIndicator = ""
        if with_positions:
            ds.ImageOrientationPatient = [float(v) for v in iop]
            ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = thickness if thickness is not None else spacing[0]
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "HU"
        stored = np.rint((hu[k] - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        out.append((path, sop))
    return out


def write_png(path: Path, img: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


def transcode(path: Path, transfer_syntax: str) -> None:
    """Re-encode a DICOM file in place with GDCM (pydicom cannot encode JPEG Lossless),
    or, for HTJ2K, which GDCM cannot write, with OpenJPH's command-line encoder."""
    if transfer_syntax == HTJ2K_LOSSLESS:
        return _htj2k_encode(path)
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(transfer_syntax))))
    change.SetInput(reader.GetImage())
    assert change.Change(), transfer_syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path


def _htj2k_encode(path: Path) -> None:
    """Lossless HTJ2K with imagecodecs (OpenJPH): one codestream per file, encapsulated.
    (Debian's OpenJPH 0.9 command-line encoder writes wrong codestreams for signed data.)"""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(ds.pixel_array, reversible=True)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2K_LOSSLESS
    ds.save_as(path, enforce_file_format=True)


def enhanced_ct(files: list[tuple[Path, str]], path: Path, reverse: bool = True) -> Path:
    """One multi-frame (Legacy Converted Enhanced CT) file from a single-frame series,
    frames superior-first when `reverse`, so readers cannot rely on file order."""
    import warnings

    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    dss = [pydicom.dcmread(p) for p, _ in (files[::-1] if reverse else files)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom notes a FrameType it cannot infer
        mf = hd.legacy.LegacyConvertedEnhancedCTImage(dss, series_instance_uid=generate_uid(), series_number=3,
                                                       sop_instance_uid=generate_uid(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    mf.save_as(path)
    return path
