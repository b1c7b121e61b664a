"""The skull mask removes only what lies outside the skull, and never acts on a
slice whose bone does not close into a ring."""

from __future__ import annotations

import numpy as np
import pytest

from hemoseg.data.synth import render_study
from hemoseg.inference.intracranial import intracranial_mask


def ring_slice(gap: int = 0) -> np.ndarray:
    """A 64x64 'head': scalp 40 HU, bone ring 1200 HU, brain 30 HU inside."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    hu = np.full((64, 64), -1000.0)
    hu[r < 28] = 40
    hu[r < 24] = 1200
    hu[r < 20] = 30
    if gap:
        hu[32 - gap // 2:32 + gap // 2 + 1, 50:60] = 40  # a defect through the right side of the ring
    return hu


def test_inside_kept_scalp_and_bone_core_removed():
    hu = ring_slice()
    m = intracranial_mask(hu[None], spacing_mm=1.0)[0]
    assert m[32, 32] and m[32, 13]  # centre, and just inside the inner table
    assert not m[32, 6] and not m[32, 2]  # scalp, air
    assert not m[32, 10]  # inside the bone, beyond the 1 mm rim


def test_small_gap_is_bridged_large_defect_disables_the_mask():
    small = intracranial_mask(ring_slice(gap=2)[None], spacing_mm=1.0)[0]
    assert small[32, 32] and not small[32, 6]
    large = intracranial_mask(ring_slice(gap=12)[None], spacing_mm=1.0)[0]
    assert large.all()  # no closed ring (e.g. a craniectomy): nothing may be removed


def test_slices_without_bone_are_untouched():
    hu = np.full((2, 16, 16), 30.0)
    assert intracranial_mask(hu).all()


@pytest.mark.parametrize("index", [0, 1])
def test_every_ground_truth_lesion_voxel_of_a_synthetic_study_survives(index):
    study = render_study(seed=5, index=index, slices=12, size=128)
    m = intracranial_mask(study.hu, spacing_mm=study.spacing[1])
    lesion = study.label > 0
    assert lesion.any()
    assert not (lesion & ~m).any()
    # and the mask really constrains: most voxels of the field of view are outside the skull
    assert (~m).mean() > 0.3


def test_predictor_applies_the_mask_to_hu_studies_only():
    """A network that calls every pixel a lesion keeps only the intracranial ones
    on HU input; windowed image input keeps them all (no HU, no skull)."""
    from types import SimpleNamespace

    from hemoseg.data.coco import ClassList
    from hemoseg.data.preprocessing import Preprocessing
    from hemoseg.inference.predictor import Predictor
    from hemoseg.models.config import ModelConfig
    from hemoseg.training.checkpoint import Checkpoint

    def everywhere_lesion(x):
        logits = np.zeros((x.shape[0], 2, x.shape[2], x.shape[3]), np.float32)
        logits[:, 1] = 5.0
        return logits

    ckpt = Checkpoint({}, ModelConfig(out_channels=2), ClassList(("bleed",), (1,)), "multiclass",
                      Preprocessing(size=32), {})
    pred = Predictor(ckpt, everywhere_lesion)
    hu = ring_slice()[None].astype(np.float32)
    ct = pred.predict_volume(SimpleNamespace(pixels=hu, is_hu=True, spacing=(5.0, 1.0, 1.0), colour=None))
    np.testing.assert_array_equal(ct[0] > 0, intracranial_mask(hu, 1.0)[0])
    png = pred.predict_volume(SimpleNamespace(pixels=np.clip(hu, 0, 255), is_hu=False, spacing=None, colour=None))
    assert (png > 0).all()
