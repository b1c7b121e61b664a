"""Volumes in mL, ABC/2, areas, and the volume-accuracy helper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemoseg.inference.volumes import NO_SPACING, diameters, measure, wants_abc2

NAMES = ["Intraparenchymal hemorrhage", "Subdural"]


def test_volume_exact_from_voxel_count():
    labels = np.zeros((5, 20, 20), np.uint8)
    labels[1:4, 2:7, 3:11] = 1  # 3 * 5 * 8 = 120 voxels
    labels[2, 15:17, 15:18] = 2  # 6 voxels
    m = measure(labels, (2.5, 0.5, 0.4), NAMES).by_name()
    iph, sdh = m[NAMES[0]], m["Subdural"]
    assert iph.voxels == 120 and iph.volume_ml == pytest.approx(120 * 2.5 * 0.5 * 0.4 / 1000)
    assert sdh.volume_ml == pytest.approx(6 * 0.5 / 1000)
    assert iph.slices_involved == 3 and sdh.slices_involved == 1
    assert iph.max_area == pytest.approx(40 * 0.2) and iph.max_area_unit == "mm2"
    assert iph.max_area_slice == 1 and iph.lesion_count == 1
    assert iph.abc2 is not None and sdh.abc2 is None and sdh.abc2_note is None


def test_no_spacing_never_invents_volume():
    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, 2:5, 2:6] = 1
    sm = measure(labels, None, NAMES)
    iph = sm.by_name()[NAMES[0]]
    assert iph.volume_ml is None and iph.volume_note == NO_SPACING == "volume unavailable: no spacing"
    assert iph.max_area == 12 and iph.max_area_unit == "px"
    assert iph.abc2 is None and iph.abc2_note == NO_SPACING
    assert sm.total_volume_ml is None and sm.to_dict()["spacing_mm"] is None


def test_absent_class():
    m = measure(np.zeros((2, 4, 4), np.uint8), (1, 1, 1), NAMES).by_name()[NAMES[0]]
    assert m.voxels == 0 and m.volume_ml == 0 and m.max_area_slice is None
    assert m.abc2 is None and m.abc2_note == "no lesion"


def test_abc2_class_match_is_case_insensitive():
    assert wants_abc2("INTRAPARENCHYMAL") and wants_abc2("intracerebral hemorrhage")
    assert not wants_abc2("subdural")


def _ellipsoid(a_mm, b_mm, c_mm, spacing, angle_deg, shape):
    z, h, w = shape
    zz, yy, xx = np.mgrid[:z, :h, :w].astype(np.float64)
    zz = (zz - (z - 1) / 2) * spacing[0]
    yy = (yy - (h - 1) / 2) * spacing[1]
    xx = (xx - (w - 1) / 2) * spacing[2]
    t = math.radians(angle_deg)
    u = xx * math.cos(t) + yy * math.sin(t)
    v = -xx * math.sin(t) + yy * math.cos(t)
    return (u / a_mm) ** 2 + (v / b_mm) ** 2 + (zz / c_mm) ** 2 <= 1


def test_abc2_on_rotated_ellipsoid():
    a, b, c = 30.0, 18.0, 15.0  # semi-axes in mm
    spacing = (1.5, 0.7, 0.6)  # anisotropic in-plane too
    mask = _ellipsoid(a, b, c, spacing, 30, (24, 100, 110))
    labels = mask.astype(np.uint8)
    labels[0, 0, 0] = 1  # a stray voxel: ABC/2 must use the big lesion only
    m = measure(labels, spacing, NAMES).by_name()[NAMES[0]]
    true_ml = 4 / 3 * math.pi * a * b * c / 1000
    assert m.volume_ml == pytest.approx(true_ml, rel=0.05)
    assert m.lesion_count == 2
    e = m.abc2
    assert e.a_mm == pytest.approx(2 * a, rel=0.05)
    assert e.b_mm == pytest.approx(2 * b, rel=0.08)
    assert e.c_mm == pytest.approx(e.lesion_slices * 1.5) and e.lesion_slices in (19, 20, 21)
    assert e.volume_ml == pytest.approx(e.a_mm * e.b_mm * e.c_mm / 2000)
    assert abs(e.volume_ml - true_ml) / true_ml < 0.15


def test_diameters_of_a_rectangle():
    sec = np.zeros((20, 20), bool)
    sec[5:8, 2:14] = True  # 3 x 12 pixels at 1 mm -> corner-to-corner diagonal
    a, b = diameters(sec, 1.0, 1.0)
    assert a == pytest.approx(math.hypot(3, 12))
    assert b == pytest.approx(2 * 3 * 12 / math.hypot(3, 12))  # rectangle width across the diagonal


@pytest.mark.parametrize("density, shape, seed", [(0.05, (6, 40, 50), 0), (0.2, (5, 30, 30), 1),
                                                  (0.35, (8, 24, 20), 2), (0.6, (3, 16, 16), 3),
                                                  (0.1, (1, 64, 64), 4), (0.3, (12, 9, 7), 5)])
def test_components_3d_partition_equals_scipy(density, shape, seed):
    """Same 26-connected partition as scipy.ndimage.label with a 3x3x3 structure: same
    count, and two voxels share a label in one exactly when they do in the other."""
    mask = np.random.default_rng(seed).random(shape) < density
    # and the same blobs inside a larger, mostly empty volume (the labelling works in the
    # mask's bounding box, which then starts away from every edge)
    roomy = np.zeros((shape[0] + 3, shape[1] + 9, shape[2] + 5), bool)
    roomy[2:2 + shape[0], 7:7 + shape[1], 1:1 + shape[2]] = mask
    for mask in (mask, roomy):
        _same_partition_as_scipy(mask)


def _same_partition_as_scipy(mask):
    from scipy import ndimage

    from hemoseg.inference.volumes import components_3d

    ours, n = components_3d(mask)
    ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert n == n_ref and ours.dtype == np.int32
    assert ((ours > 0) == mask).all() and set(np.unique(ours[mask])) == set(range(1, n + 1))
    pairs = np.unique(np.stack([ours[mask], ref[mask]], axis=1), axis=0)
    assert len(pairs) == n  # a bijection between the two labellings


def test_components_3d_connects_across_slices_only_through_neighbours():
    from hemoseg.inference.volumes import components_3d

    m = np.zeros((3, 6, 6), bool)
    m[0, 1, 1] = m[1, 2, 2] = True   # corner neighbours across a slice: one lesion
    m[2, 4, 4] = True                # two pixels away from (1, 2, 2): a second one
    assert components_3d(m)[1] == 2
    assert components_3d(np.zeros((2, 3, 3), bool))[1] == 0
