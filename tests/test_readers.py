"""Reading studies: DICOM ordering/HU/spacing, NIfTI orientation, images,
discovery rules, and one clear error per kind of bad input."""

from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest
from predict_fixtures import (HTJ2K_LOSSLESS, ct_volume, enhanced_ct, transcode, write_ct_series,
                              write_png)

from hemoseg.errors import HemosegError
from hemoseg.inference.readers import (discover, labels_to_nifti_array, load_study,
                                       read_dicom_series, read_images, read_nifti)


def _paths(files):
    return [p for p, _ in files]


# --------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------
def test_dicom_sorted_by_position_with_hu_and_spacing(tmp_path):
    vol = ct_volume()
    files = write_ct_series(tmp_path / "s", vol, spacing=(2.5, 0.5, 0.6), thickness=5.0)
    study = read_dicom_series(sorted(_paths(files)))  # shuffled names, then name-sorted
    assert study.source == "dicom" and study.is_hu
    np.testing.assert_array_equal(study.pixels, vol)  # order and HU (intercept -1024) exact
    assert study.spacing == pytest.approx((2.5, 0.5, 0.6))  # positions beat SliceThickness=5
    assert [ds.SOPInstanceUID for ds in study.dicom] == [u for _, u in files]
    assert study.source_paths == _paths(files)
    # affine maps voxel (col, row, slice) to RAS: LPS origin (-16,-16,0) -> RAS (16,16,0)
    np.testing.assert_allclose(study.affine @ [0, 0, 0, 1], [16, 16, 0, 1])
    np.testing.assert_allclose(study.affine @ [1, 1, 1, 1], [16 - 0.6, 16 - 0.5, 2.5, 1])


def test_dicom_tilted_gantry_descending_z(tmp_path):
    """Files numbered head->feet, tilted orientation: order follows the slice
    normal and spacing is the distance along it (dz * cos(tilt))."""
    t = math.radians(20)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    vol = ct_volume(z=5)
    dz = 3.0
    positions = [np.array([0.0, 0.0, 100.0 - dz * (4 - k)]) for k in range(5)]
    files = write_ct_series(tmp_path / "s", vol, iop=iop, positions=positions, reverse_instance=True)
    study = read_dicom_series(_paths(files))
    np.testing.assert_array_equal(study.pixels[:, 0, 0], 200 + np.arange(5))
    assert study.spacing[0] == pytest.approx(dz * math.cos(t))

    # the same slices numbered the other way round read identically
    study2 = read_dicom_series(list(reversed(_paths(files))))
    np.testing.assert_array_equal(study2.pixels, study.pixels)


def test_dicom_without_positions_uses_instance_number_and_thickness(tmp_path):
    vol = ct_volume(z=4)
    files = write_ct_series(tmp_path / "s", vol, with_positions=False, thickness=3.0,
                            spacing=(9.9, 0.5, 0.5))
    study = read_dicom_series(_paths(files))
    np.testing.assert_array_equal(study.pixels[:, 0, 0], 200 + np.arange(4))
    assert study.spacing == pytest.approx((3.0, 0.5, 0.5))
    assert study.affine is None
    assert any("InstanceNumber" in w for w in study.warnings)


def test_dicom_rescale_slope(tmp_path):
    vol = ct_volume(z=2)
    files = write_ct_series(tmp_path / "s", vol, slope=0.5, intercept=-1024.0)
    np.testing.assert_allclose(read_dicom_series(_paths(files)).pixels, vol)


def test_dicom_rle_compressed(tmp_path):
    from pydicom.uid import RLELossless

    vol = ct_volume(z=2)
    files = write_ct_series(tmp_path / "s", vol, transfer_syntax=RLELossless)
    np.testing.assert_array_equal(read_dicom_series(_paths(files)).pixels, vol)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57",
                                 "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", HTJ2K_LOSSLESS])
def test_dicom_lossless_jpeg_family_decodes_exactly(tmp_path, uid, signed):
    """JPEG Lossless (SV1 is what most PACS exports of CT use), JPEG-LS, JPEG 2000 and
    HTJ2K (what cloud archives such as AWS HealthImaging store), stored unsigned with an
    intercept or signed: the HU must come back exactly."""
    import pydicom

    if uid == HTJ2K_LOSSLESS:
        pytest.importorskip("imagecodecs", reason="writing an HTJ2K test file needs imagecodecs (a dev extra)")

    vol = ct_volume(z=2)
    files = write_ct_series(tmp_path / "s", vol)
    for k, (p, _) in enumerate(files):
        if signed:
            ds = pydicom.dcmread(p)
            ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
            ds.PixelData = np.rint(vol[k]).astype(np.int16).tobytes()
            ds.save_as(p, enforce_file_format=True)
        transcode(p, uid)
        assert pydicom.dcmread(p).file_meta.TransferSyntaxUID == uid
    assert vol.min() < 0
    np.testing.assert_array_equal(read_dicom_series(_paths(files)).pixels, vol)


def test_multiframe_enhanced_ct_reads_like_its_single_frame_series(tmp_path):
    """Geometry and rescale live in functional groups; frames are stored superior-first."""
    vol = ct_volume(z=5)
    files = write_ct_series(tmp_path / "s", vol, slope=0.5)
    single = read_dicom_series(_paths(files))
    mf = enhanced_ct(files, tmp_path / "mf" / "ct.dcm")
    study = read_dicom_series([mf])
    np.testing.assert_array_equal(study.pixels, single.pixels)
    assert study.spacing == single.spacing == (2.5, 0.5, 0.5) and not study.warnings
    np.testing.assert_allclose(study.affine, single.affine)
    assert study.dicom_frames == [4, 3, 2, 1, 0]  # slice 0 (inferior) is the file's last frame
    assert study.slice_sources[0] == "ct.dcm frame 5" and study.source_paths == [mf] * 5
    assert load_study(discover([mf])[0][0]).shape == (5, *vol.shape[1:])  # a single file is a study


def test_multiframe_file_inside_a_series_is_refused(tmp_path):
    import pydicom

    files = write_ct_series(tmp_path / "s", ct_volume(z=3))
    mf = pydicom.dcmread(enhanced_ct(files, tmp_path / "s" / "zz_mf.dcm"))
    mf.SeriesInstanceUID = pydicom.dcmread(files[0][0]).SeriesInstanceUID  # the same series, twice over
    mf.save_as(tmp_path / "s" / "zz_mf.dcm")
    with pytest.raises(HemosegError, match=r"zz_mf.dcm: a multi-frame DICOM \(3 frames\) among 4 files"):
        read_dicom_series(sorted((tmp_path / "s").iterdir()))


def _retag(path, uid, payload=b"\xff\xd8\xff\xd9"):
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([payload])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_dicom_compressed_without_decoder(tmp_path, monkeypatch):
    """A syntax pydicom can decode only with an optional package that is missing: one line
    naming what to install. Every such package is installed here, so the test hides one."""
    from pydicom.pixels import get_decoder

    decoder = type(get_decoder(HTJ2K_LOSSLESS))
    monkeypatch.setattr(decoder, "is_available", property(lambda self: False))
    monkeypatch.setattr(decoder, "missing_dependencies",
                        property(lambda self: ["pylibjpeg - requires pylibjpeg-openjpeg"]))
    files = write_ct_series(tmp_path / "s", ct_volume(z=1))
    _retag(files[0][0], HTJ2K_LOSSLESS)
    with pytest.raises(HemosegError) as e:
        read_dicom_series(_paths(files))
    msg = str(e.value)
    assert msg.startswith(f"{files[0][0]}: pixel data is compressed as High-Throughput JPEG 2000")
    assert "cannot decode (needs pylibjpeg - requires pylibjpeg-openjpeg)" in msg and "\n" not in msg


def test_dicom_unknown_transfer_syntax(tmp_path):
    files = write_ct_series(tmp_path / "s", ct_volume(z=1))
    _retag(files[0][0], "1.2.3.4.5.6")
    with pytest.raises(HemosegError, match=r"IM000.dcm: unsupported transfer syntax 1.2.3.4.5.6"):
        read_dicom_series(_paths(files))


def test_dicom_without_pixel_data(tmp_path):
    import pydicom

    files = write_ct_series(tmp_path / "s", ct_volume(z=1))
    ds = pydicom.dcmread(files[0][0])
    del ds.PixelData
    ds.save_as(files[0][0])
    with pytest.raises(HemosegError) as e:
        read_dicom_series(_paths(files))
    assert str(e.value) == (f"{files[0][0]}: DICOM file has no pixel data (SOP class CT Image "
                            "Storage; the file may be truncated); hemoseg needs CT image slices")


def test_a_seg_saved_beside_the_ct_is_skipped_with_a_warning(tmp_path):
    """PACS exports and earlier runs leave DICOM SEG objects beside the CT: they carry pixel
    data but are not slices, so they neither count as a second series nor get read."""
    from hemoseg.inference.outputs import write_dicom_seg

    vol = ct_volume(z=3)
    files = write_ct_series(tmp_path / "s", vol)
    seg = tmp_path / "s" / "zz_seg.dcm"
    write_dicom_seg((vol == 70).astype(np.uint8), read_dicom_series(_paths(files)), ["IPH"], seg)
    study = read_dicom_series(sorted((tmp_path / "s").iterdir()))
    np.testing.assert_array_equal(study.pixels, vol)
    assert study.warnings == ["skipped 1 DICOM object(s) that are not images "
                              "(e.g. zz_seg.dcm: SOP class Segmentation Storage)"]
    with pytest.raises(HemosegError, match=r"zz_seg.dcm: is Modality SEG; hemoseg segments CT only"):
        read_dicom_series([seg])


def test_the_localizer_beside_an_axial_series_is_skipped_but_not_read_alone(tmp_path):
    """Every CT study has a scout; exported into the same folder it is not a second candidate."""
    import pydicom

    vol = ct_volume(z=3)
    write_ct_series(tmp_path / "s", vol)
    for path, _ in write_ct_series(tmp_path / "scout", ct_volume(z=1, blob=False)):
        ds = pydicom.dcmread(path)
        ds.ImageType, ds.SeriesNumber = ["ORIGINAL", "PRIMARY", "LOCALIZER"], 1
        ds.save_as(tmp_path / "s" / "scout.dcm")
    study = read_dicom_series(sorted((tmp_path / "s").iterdir()))
    np.testing.assert_array_equal(study.pixels, vol)
    assert study.warnings == ["skipped 1 localizer (scout) series (1 image(s), e.g. scout.dcm)"]
    with pytest.raises(HemosegError, match=r"scout.dcm: holds only localizer \(scout\) images"):
        read_dicom_series([tmp_path / "s" / "scout.dcm"])


def test_dicom_slice_without_pixel_data_inside_series_fails(tmp_path):
    import pydicom

    files = write_ct_series(tmp_path / "s", ct_volume(z=3))
    ds = pydicom.dcmread(files[1][0])
    del ds.PixelData
    ds.save_as(files[1][0])
    with pytest.raises(HemosegError, match="no pixel data .* but belongs to the image series"):
        read_dicom_series(_paths(files))


def test_dicom_slice_cut_inside_header_fails(tmp_path):
    """A slice truncated before its series UID must not be skipped as if it
    were a dose report: that would silently drop a slice from the volume."""
    files = write_ct_series(tmp_path / "s", ct_volume(z=3))
    p = files[1][0]
    p.write_bytes(p.read_bytes()[:400])
    with pytest.raises(HemosegError, match=rf"{p.name}: DICOM file has no pixel data"):
        read_dicom_series(_paths(files))


def test_non_image_dicom_object_is_skipped(tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    files = write_ct_series(tmp_path / "s", ct_volume(z=2))
    sr = pydicom.dcmread(files[0][0])
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    sr.SeriesInstanceUID, sr.SOPInstanceUID = generate_uid(), generate_uid()
    sr.save_as(tmp_path / "s" / "dose.dcm")
    study = read_dicom_series(_paths(files) + [tmp_path / "s" / "dose.dcm"])
    assert study.shape[0] == 2
    assert any("skipped 1 DICOM file(s) without pixel data" in w and "X-Ray Radiation Dose SR" in w
               for w in study.warnings)


def test_nifti_2d_has_no_volume(tmp_path):
    p = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((6, 5), np.int16), np.eye(4)), str(p))
    study = read_nifti(p)
    assert study.shape == (1, 5, 6) and study.spacing is None
    assert labels_to_nifti_array(np.zeros(study.shape, np.uint8), study).shape == (6, 5)


def test_dicom_truncated(tmp_path):
    files = write_ct_series(tmp_path / "s", ct_volume(z=2))
    p = files[1][0]
    p.write_bytes(p.read_bytes()[:-3000])
    with pytest.raises(HemosegError) as e:
        read_dicom_series(_paths(files))
    assert str(e.value).startswith(f"{p}: pixel data is truncated or corrupt")


def test_dicom_mixed_series_refused(tmp_path):
    write_ct_series(tmp_path / "s", ct_volume(z=2), series_uid="1.2.3.1")
    write_ct_series(tmp_path / "s2", ct_volume(z=3), series_uid="1.2.3.2", seed=1)
    for p in (tmp_path / "s2").iterdir():
        p.rename(tmp_path / "s" / ("b" + p.name))
    with pytest.raises(HemosegError) as e:
        read_dicom_series(sorted((tmp_path / "s").iterdir()), origin=tmp_path / "s")
    assert str(e.value) == (
        f"{tmp_path / 's'}: holds 2 DICOM series (1.2.3.1 (2 files), 1.2.3.2 (3 files)); "
        "hemoseg reads one series per folder: move each series into its own subfolder and "
        "give the parent folder")


def test_dicom_duplicate_position_refused(tmp_path):
    pos = [np.zeros(3), np.zeros(3)]
    files = write_ct_series(tmp_path / "s", ct_volume(z=2), positions=pos)
    with pytest.raises(HemosegError, match="two slices at the same position"):
        read_dicom_series(_paths(files))


# --------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------
def _zhw(z=5, h=7, w=9):
    return np.arange(z * h * w, dtype=np.float32).reshape(z, h, w) - 1000


@pytest.mark.parametrize("layout", ["ras", "lps", "permuted"])
def test_nifti_reoriented_to_axial_zhw(tmp_path, layout):
    """Whatever the array layout, the study is (Z,H,W) with anterior at the
    top and patient-left on the right, and labels go back to the input layout."""
    p_expected = _zhw()
    x = p_expected.transpose(2, 1, 0)  # (i=L, j=P, k=S)
    if layout == "ras":
        data, aff = x[::-1, ::-1, :], np.diag([0.8, 0.9, 3.0, 1.0])
    elif layout == "lps":
        data, aff = x, np.diag([-0.8, -0.9, 3.0, 1.0])
    else:  # stored as (S, P, L): columns of the affine permuted accordingly
        data = x.transpose(2, 1, 0)
        aff = np.zeros((4, 4))
        aff[2, 0], aff[1, 1], aff[0, 2], aff[3, 3] = 3.0, -0.9, -0.8, 1.0
    path = tmp_path / f"{layout}.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), str(path))
    study = read_nifti(path)
    assert study.source == "nifti" and study.is_hu and study.name == layout
    np.testing.assert_array_equal(study.pixels, p_expected)
    assert study.spacing == pytest.approx((3.0, 0.9, 0.8))
    np.testing.assert_allclose(study.affine, aff, atol=1e-6)
    back = labels_to_nifti_array(study.pixels, study)
    np.testing.assert_array_equal(back, data)


def test_nifti_uint8_is_display_values(tmp_path):
    path = tmp_path / "disp.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), 7, np.uint8), np.eye(4)), str(path))
    study = read_nifti(path)
    assert not study.is_hu and study.name == "disp"


def test_nifti_4d_refused_but_singleton_time_ok(tmp_path):
    p4 = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), str(p4))
    with pytest.raises(HemosegError) as e:
        read_nifti(p4)
    assert str(e.value) == (f"{p4}: is a 4-D NIfTI (shape 4x4x3x2); hemoseg needs one 3-D "
                            "volume: split it first (e.g. fslsplit)")
    p1 = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 1), np.int16), np.eye(4)), str(p1))
    assert read_nifti(p1).shape == (3, 4, 4)


def test_nifti_truncated(tmp_path):
    p = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(32, 32, 8)).astype(np.float32),
                             np.eye(4)), str(p))
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2])[:-10])
    with pytest.raises(HemosegError, match=r"cut.nii.gz: .*(truncated or corrupt|not a readable)"):
        read_nifti(p)


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def test_image_folder_natural_order_no_spacing(tmp_path):
    for i in (10, 2, 1):
        write_png(tmp_path / "imgs" / f"s{i}.png", np.full((8, 8), i, np.uint8))
    items, problems = discover([tmp_path / "imgs"])
    assert not problems and len(items) == 1 and items[0].kind == "image"
    study = load_study(items[0])
    assert study.pixels[:, 0, 0].tolist() == [1, 2, 10]
    assert study.spacing is None and not study.is_hu and study.name == "imgs"


def test_rgb_jpg_single_image(tmp_path):
    from PIL import Image

    p = tmp_path / "slice.jpg"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(p)
    study = read_images([p])
    assert study.shape == (1, 8, 8) and study.name == "slice"
    assert abs(float(study.pixels.mean()) - 100) < 2


def test_truncated_png(tmp_path):
    p = write_png(tmp_path / "x.png", np.random.default_rng(0).integers(0, 255, (64, 64)))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(HemosegError, match=r"x.png: image is truncated or corrupt"):
        read_images([p])


def test_image_sizes_must_match(tmp_path):
    write_png(tmp_path / "f" / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "f" / "b.png", np.zeros((9, 8)))
    with pytest.raises(HemosegError, match="b.png differs from a.png"):
        read_images(sorted((tmp_path / "f").iterdir()))


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------
def test_discover_batch_folder(tmp_path):
    root = tmp_path / "batch"
    write_ct_series(root / "p1" / "CT", ct_volume(z=2))
    write_ct_series(root / "p2", ct_volume(z=2))
    (root / "p2" / "README.txt").write_text("export notes")
    (root / "p2" / "DICOMDIR").write_bytes(b"x")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), str(root / "vol.nii.gz"))
    write_png(root / "pngs" / "a.png", np.zeros((4, 4)))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.dcm").write_text("never looked at")
    items, problems = discover([root, tmp_path / "missing"], exclude=[root / "pngs"])
    assert [(i.name, i.kind) for i in items] == [("vol", "nifti"), ("p1_CT", "dicom"), ("p2", "dicom")]
    assert len(problems) == 1 and str(problems[0][1]) == f"{tmp_path / 'missing'}: does not exist"
    p2 = next(i for i in items if i.name == "p2")
    assert [p.name for p in p2.ignored] == ["README.txt"]
    study = load_study(p2)
    assert any("ignored 1 non-DICOM file(s)" in w and "README.txt" in w for w in study.warnings)


def test_discover_names_are_unique_and_safe(tmp_path):
    write_png(tmp_path / "a" / "x y.png", np.zeros((4, 4)))
    write_png(tmp_path / "b" / "x y.png", np.zeros((4, 4)))
    items, _ = discover([tmp_path / "a" / "x y.png", tmp_path / "b" / "x y.png"])
    assert [i.name for i in items] == ["x_y", "x_y-2"]


def test_discover_empty_and_useless_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    items, problems = discover([tmp_path / "empty", tmp_path / "docs"])
    assert not items
    assert [str(e) for _, e in problems] == [
        f"{tmp_path / 'empty'}: folder is empty (no files found, searched recursively)",
        f"{tmp_path / 'docs'}: no DICOM series, NIfTI volume or PNG/JPG image found "
        "(1 other file(s) ignored: notes.txt)",
    ]


def test_single_file_of_unknown_kind_must_be_dicom(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not an image")
    items, _ = discover([p])
    with pytest.raises(HemosegError, match=r"notes.txt: is not a DICOM file, NIfTI volume \(.nii/.nii.gz\) or PNG/JPG image$"):
        load_study(items[0])
