"""`hemoseg score`: whole-study Dice and volume agreement against reference label volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from predict_fixtures import FakePredictor, ct_volume, write_ct_series

from hemoseg.cli import predict_cmd
from hemoseg.cli.main import main
from hemoseg.evaluation.volumetric import agreement

VOXEL_ML = 2.5 * 0.5 * 0.5 / 1000  # write_ct_series' default spacing
IPH = "Intraparenchymal hemorrhage"


@pytest.fixture
def predicted(tmp_path, monkeypatch, capsys):
    """Three DICOM studies through the real `predict` (a fake network that labels 50-90 HU):
    each holds ct_volume's 360-voxel blob on slices 1-3."""
    monkeypatch.setattr(predict_cmd, "load_predictor", lambda run, backend: FakePredictor())
    for name in "abc":
        write_ct_series(tmp_path / "dicom" / name, ct_volume())
    (tmp_path / "run").mkdir()
    assert main(["predict", str(tmp_path / "run"), *(str(tmp_path / "dicom" / n) for n in "abc"),
                 "--out", str(tmp_path / "pred")]) == 0
    capsys.readouterr()
    return tmp_path / "pred"


def _reference(pred_dir, name, out, edit=None, shift_mm=0.0):
    """A reference made from the predicted labels, saved in RAS order (not predict's layout)."""
    img = nib.load(pred_dir / name / "labels.nii.gz")
    data = np.asarray(img.dataobj).copy()  # (col, row, slice) as predict writes DICOM studies
    if edit:
        edit(data)
    affine = img.affine.copy()
    affine[0, 3] += shift_mm
    nib.save(nib.as_closest_canonical(nib.Nifti1Image(data, affine)), out)
    assert nib.aff2axcodes(nib.load(out).affine) != nib.aff2axcodes(img.affine)


def score(capsys, *args):
    rc = main(["score", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()


def test_dice_and_volumes_against_references_in_another_layout(predicted, tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    _reference(predicted, "a", refs / "a.nii.gz")                                  # identical
    _reference(predicted, "b", refs / "b_labels.nii.gz", edit=lambda d: d.__setitem__((..., 3), 0))
    rc, out, err = score(capsys, predicted, refs, "--min-ml", "0", "--json", tmp_path / "s.json",
                         "--csv", tmp_path / "s.csv")
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"hemoseg: skipped: {predicted / 'c'}: no reference")
    rows = {r["study"]: r for r in json.loads((tmp_path / "s.json").read_text())["rows"]}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["dice"] == 1.0 and rows["a"]["error_ml"] == 0.0
    assert rows["a"]["reference_ml"] == pytest.approx(360 * VOXEL_ML)
    # b's reference lacks the blob's top slice: 240 of the 360 predicted voxels
    assert rows["b"]["dice"] == pytest.approx(2 * 240 / (360 + 240))
    assert rows["b"]["error_ml"] == pytest.approx(120 * VOXEL_ML) and rows["b"]["rel_error"] == pytest.approx(0.5)
    c = json.loads((tmp_path / "s.json").read_text())["per_class"][IPH]
    assert c["with_reference"] == 2 and c["mean_dice"] == pytest.approx(0.9)
    assert (c["within_tolerance"], c["lesions_over_min_ml"]) == (1, 2)
    assert c["bias_ml"] == pytest.approx(60 * VOXEL_ML)
    assert f"| {IPH} | 2 of 2 | 0.900 | 1 of 2 |" in out
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == \
        "study,class,reference_ml,predicted_ml,error_ml,rel_error,dice"


def test_each_unscorable_study_is_one_line_and_the_rest_are_scored(predicted, tmp_path, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    _reference(predicted, "a", refs / "a.nii.gz", shift_mm=5.0)                    # placed elsewhere
    _reference(predicted, "b", refs / "b.nii.gz", edit=lambda d: d.__setitem__((0, 0, 0), 7))
    _reference(predicted, "c", refs / "c.nii.gz")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in refs.iterdir())
    rc, out, err = score(capsys, predicted, refs)
    assert rc == 1 and "1 study scored" in out
    assert err == [f"hemoseg: skipped: {refs / 'a.nii.gz'}: label volume is placed differently from the "
                   "predicted study (their affines differ)",
                   f"hemoseg: skipped: {refs / 'b.nii.gz'}: label values [7] have no class "
                   "(known: 1; see --classes)"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in refs.iterdir()) == before  # inputs only read
    # an explicit mapping: the reference's label 1 is another class, so nothing matches
    rc, _, err = score(capsys, predicted, refs, "--classes", "1=Subdural hemorrhage")
    assert rc == 2 and err[-1].startswith(f"hemoseg: error: {predicted}: no study could be scored")


def test_refusals(tmp_path, capsys):
    rc, _, err = score(capsys, tmp_path / "nope", tmp_path)
    assert rc == 2 and err == [f"hemoseg: error: {tmp_path / 'nope'}: is not a 'hemoseg predict' output folder"]
    rc, _, err = score(capsys, tmp_path, tmp_path)
    assert rc == 2 and "holds no study folders with report.json" in err[0]


def test_agreement_by_hand():
    """x = 1, 2, 3 mL; y = 1, 2, 4 mL: differences 0, 0, 1 (mean 1/3, sd 1/sqrt(3));
    Lin's CCC = 2 cov / (var x + var y + (mean difference)^2) = 2 / (2/3 + 14/9 + 1/9) = 6/7."""
    a = agreement(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert a["n"] == 3 and a["bias_ml"] == pytest.approx(1 / 3)
    assert a["loa_ml"] == pytest.approx([1 / 3 - 1.96 / 3 ** 0.5, 1 / 3 + 1.96 / 3 ** 0.5])
    assert a["ccc"] == pytest.approx(6 / 7)
    assert agreement(np.array([2.0]), np.array([3.0]))["loa_ml"] is None


def test_dicom_seg_references_are_placed_on_the_predicted_grid(predicted, tmp_path, capsys):
    """References as OHIF, 3D Slicer or a PACS export them: DICOM SEG on the same series."""
    import shutil

    from hemoseg.inference.outputs import write_dicom_seg
    from hemoseg.inference.readers import read_dicom_series

    def blob(name, drop_top=False):
        study = read_dicom_series(sorted((tmp_path / "dicom" / name).iterdir()))
        labels = ((study.pixels >= 50) & (study.pixels <= 90)).astype(np.uint8)
        if drop_top:
            labels[3] = 0
        return labels, study

    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(predicted / "a" / "seg.dcm", refs / "a.dcm")                     # predict's own SEG
    write_dicom_seg(*blob("b", drop_top=True), [IPH], refs / "b.dcm")             # a smaller reference
    shutil.copy(predicted / "a" / "seg.dcm", refs / "c.dcm")                     # drawn on a's series
    rc, _, err = score(capsys, predicted, refs, "--min-ml", "0", "--json", tmp_path / "s.json")
    assert rc == 1 and err == [f"hemoseg: skipped: {refs / 'c.dcm'}: segments another series than the "
                               "CT it is paired with"]
    rows = {r["study"]: r for r in json.loads((tmp_path / "s.json").read_text())["rows"]}
    assert rows["a"]["dice"] == 1.0 and rows["a"]["reference_ml"] == pytest.approx(360 * VOXEL_ML)
    assert rows["b"]["dice"] == pytest.approx(2 * 240 / (360 + 240))
    assert rows["b"]["error_ml"] == pytest.approx(120 * VOXEL_ML)

    # a segment named in the annotator's words: refused by name, accepted by --classes
    labels, study = blob("c")
    write_dicom_seg(labels, study, ["Contusion"], refs / "c.dcm")
    for name in ("a.dcm", "b.dcm"):
        (refs / name).unlink()
    rc, _, err = score(capsys, predicted, refs)
    assert rc == 2 and err[-2] == (f"hemoseg: skipped: {refs / 'c.dcm'}: segments ['Contusion'] are not model "
                                   "classes; map segment numbers with --classes")
    rc, out, _ = score(capsys, predicted, refs, "--classes", f"1={IPH}", "--json", tmp_path / "s.json")
    assert rc == 1 and "1 study scored" in out
    assert json.loads((tmp_path / "s.json").read_text())["rows"][0]["dice"] == 1.0


def test_broken_reference_files_are_one_line_each(predicted, tmp_path, capsys):
    import shutil

    refs = tmp_path / "refs"
    refs.mkdir()
    _reference(predicted, "a", refs / "a.nii.gz")
    whole = (refs / "a.nii.gz").read_bytes()
    (refs / "a.nii.gz").write_bytes(whole[: len(whole) // 2])                     # truncated
    shutil.copy(next((tmp_path / "dicom" / "b").iterdir()), refs / "b.dcm")      # a CT slice, not a SEG
    _reference(predicted, "c", refs / "c.nii.gz")
    rc, out, err = score(capsys, predicted, refs)
    assert rc == 1 and "1 study scored" in out and len(err) == 2
    assert err[0].startswith(f"hemoseg: skipped: {refs / 'a.nii.gz'}: ")
    assert err[1].startswith(f"hemoseg: skipped: {refs / 'b.dcm'}: is not a readable DICOM SEG")
