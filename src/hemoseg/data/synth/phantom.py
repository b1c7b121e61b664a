"""Analytic head-CT phantom with hemorrhage.

A head is a handful of closed-form fields over space (skull shell, cortex with
sulci, ventricles, deep grey nuclei, lesions), so any plane or volume can be
evaluated at any resolution without first building a high-resolution voxel
model. That keeps generation fast and makes the 2-D COCO slices and the 3-D
DICOM studies two samplings of the same kind of object.

Frames. The scanner frame is DICOM patient LPS in mm: +x towards the patient's
left (image right), +y posterior (image down), +z superior. Each head has its
own frame (same axis meaning, origin near the brain centre) that is rotated and
shifted into the scanner frame, so heads appear at varied poses. Gravity points
along scanner +y (patient supine), which is what dependent layering of
intraventricular blood follows.

Depths are measured along rays from the head origin ("radial depth"). For a
skull this round that is close enough to the true normal distance and costs one
square root.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

EDH, IPH, IVH, SAH, SDH, EDEMA = 1, 2, 3, 4, 5, 6

CLASS_NAMES = {
    EDH: "Epidural hemorrhage",
    IPH: "Intraparenchymal hemorrhage",
    IVH: "Intraventricular hemorrhage",
    SAH: "Subarachnoid hemorrhage",
    SDH: "Subdural hemorrhage",
    EDEMA: "Perihematomal edema",
}

# Later classes overwrite earlier ones, which is what makes labels disjoint:
# the IPH overwrites the inside of its edema shell, extra-axial collections
# displace whatever lies under them.
PAINT_ORDER = (EDEMA, IPH, IVH, SAH, SDH, EDH)

AIR_HU = -1000.0
F32 = np.float32

# tissue codes inside the cranium
_WHITE, _GREY, _DEEP, _CSF = 0, 1, 2, 3


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz = math.cos(yaw), math.sin(yaw)
    cx, sx = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(roll), math.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ ry @ rx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass
class Waves:
    """A few sinusoids of a unit direction: a cheap smooth random function on
    the sphere, used for every irregular outline (skull, lesions, gyri)."""

    dirs: np.ndarray  # (k, 3)
    freq: np.ndarray  # (k,)
    phase: np.ndarray  # (k,)
    amp: np.ndarray  # (k,)

    @classmethod
    def random(cls, rng, k: int, freq: tuple[float, float], amp: float) -> "Waves":
        d = rng.standard_normal((k, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return cls(d.astype(F32), rng.uniform(*freq, k).astype(F32),
                   rng.uniform(0, 2 * np.pi, k).astype(F32),
                   (amp * rng.uniform(0.5, 1.0, k) / math.sqrt(k)).astype(F32))

    def __call__(self, nx, ny, nz):
        out = np.zeros(np.shape(nx), dtype=F32)
        for d, f, p, a in zip(self.dirs, self.freq, self.phase, self.amp):
            out += a * np.sin(f * (nx * d[0] + ny * d[1] + nz * d[2]) + p)
        return out


@dataclass
class Lesion:
    kind: int
    hu: float
    params: dict


@dataclass
class Head:
    """Everything that defines one synthetic patient's head (head frame, mm)."""

    center: np.ndarray  # scanner position of the head origin
    rot: np.ndarray  # head -> scanner rotation
    axes: np.ndarray  # outer-skull semi-axes (LR, AP, SI)
    shape: Waves
    egg: float  # occiput wider than forehead
    base: float  # lower half-height relative to the upper one
    scalp: float
    skull: float
    skull_var: Waves
    gap: float  # extra-axial CSF layer
    cortex: float
    sulc_depth: float
    sulc_hw: float
    gyri: Waves
    gyri_warp: Waves
    gyri_k: float
    sulc_var: Waves
    vent: dict
    tissue_hu: dict
    noise_std: float
    blur_mm: float
    lesions: list = field(default_factory=list)
    _radius: float | None = field(default=None, repr=False)

    @property
    def scale(self) -> float:
        return float(self.axes[0] / 72.0)

    @property
    def radius(self) -> float:
        """Bound on the distance from the head origin to the skin, from a dense
        set of directions (the shape terms are smooth, so 1% margin covers
        the gaps between them)."""
        if self._radius is None:
            k = np.arange(4000) + 0.5
            polar = np.arccos(1 - 2 * k / 4000)
            azim = np.pi * (1 + 5 ** 0.5) * k
            n = [np.sin(polar) * np.cos(azim), np.sin(polar) * np.sin(azim), np.cos(polar)]
            r_out = self._outer_radius(*(v.astype(F32) for v in n))
            self._radius = float(r_out.max()) * 1.01 + self.scalp + 1
        return self._radius

    def min_fov(self) -> float:
        """Smallest centred square field of view (mm) that holds the whole head."""
        return 2 * (self.radius + float(np.abs(self.center[:2]).max())) + 4

    def to_scanner(self, p) -> np.ndarray:
        return self.rot @ np.asarray(p, dtype=np.float64) + self.center

    def inner_radius(self, n) -> float:
        """Distance from the head origin to the inner table along direction n."""
        n = _unit(n).astype(F32)
        r_out = self._outer_radius(n[0:1], n[1:2], n[2:3])
        return float(r_out[0] - self.skull - self.skull_var(n[0:1], n[1:2], n[2:3])[0])

    def _outer_radius(self, nx, ny, nz):
        a, b, c = (F32(v) for v in self.axes)
        c = np.where(nz < 0, c * F32(self.base), c)  # flatter below: skull base, not a sphere
        r_e = 1.0 / np.sqrt((nx / a) ** 2 + (ny / b) ** 2 + (nz / c) ** 2)
        return r_e * (1.0 + F32(self.egg) * ny + self.shape(nx, ny, nz))


# --------------------------------------------------------------------------
# sampling heads and lesions
# --------------------------------------------------------------------------

def sample_head(rng: np.random.Generator, kinds=(), *, big_lesions: bool = False) -> Head:
    """A random head carrying one lesion of each bleed kind in `kinds`.

    An IPH usually gets an edema ring; putting EDEMA in `kinds` makes it
    certain. `big_lesions` asks for volumes that a volumetry demo can show
    (mostly several mL); otherwise sizes span small to large as in a slice
    dataset.
    """
    size = rng.uniform(0.92, 1.05)
    axes = np.array([71 * size * rng.uniform(0.96, 1.04), 91 * size * rng.uniform(0.96, 1.04),
                     80 * size * rng.uniform(0.96, 1.04)])
    rot = _rotation(math.radians(rng.uniform(-15, 15)), math.radians(rng.uniform(-8, 8)),
                    math.radians(rng.uniform(-5, 5)))
    center = np.array([rng.uniform(-6, 6), rng.uniform(-6, 6), 0.0])
    atrophy = rng.uniform(0.0, 1.0)
    s = axes[0] / 72.0
    vent = dict(
        xv=(6.0 + 2.5 * atrophy) * s, yv=rng.uniform(-4, 4) * s, zv=rng.uniform(16, 24) * s,
        ax=(4.0 + 4.5 * atrophy) * s * rng.uniform(0.9, 1.1), ay=rng.uniform(28, 34) * s,
        az=(9.0 + 4 * atrophy) * s, bend=rng.uniform(0.004, 0.008) / s, tilt=rng.uniform(0.2, 0.45),
        third=(1.5 + 1.5 * atrophy) * s, cistern_z=rng.uniform(-24, -16) * s,
    )
    head = Head(
        center=center, rot=rot, axes=axes,
        shape=Waves.random(rng, 3, (1.5, 3.0), 0.06), egg=rng.uniform(0.02, 0.07),
        base=rng.uniform(0.75, 0.85),
        scalp=rng.uniform(3.5, 6.5), skull=rng.uniform(5.0, 7.5),
        skull_var=Waves.random(rng, 3, (1.5, 3.5), 2.5),
        gap=0.8 + 1.8 * atrophy, cortex=rng.uniform(2.2, 3.0),
        sulc_depth=rng.uniform(11, 17), sulc_hw=0.6 + 0.9 * atrophy,
        gyri=Waves.random(rng, 4, (0.8, 1.2), 1.0),
        gyri_warp=Waves.random(rng, 2, (2.0, 4.0), 1.6),
        gyri_k=2 * np.pi * 65 / rng.uniform(30, 40),
        sulc_var=Waves.random(rng, 3, (3.0, 6.0), 0.5),
        vent=vent,
        tissue_hu=dict(grey=rng.uniform(37.5, 40.5), white=rng.uniform(25.5, 29.5),
                       deep=rng.uniform(34, 37), csf=rng.uniform(2, 8),
                       table=rng.uniform(1300, 1550), diploe=rng.uniform(650, 900)),
        noise_std=rng.uniform(3.0, 6.0), blur_mm=rng.uniform(0.35, 0.6),
    )
    for kind in kinds:
        if kind != EDEMA:
            head.lesions.append(_sample_lesion(rng, head, kind, big_lesions, EDEMA in kinds))
    return head


def _sample_lesion(rng, head: Head, kind: int, big: bool, edema: bool = False) -> Lesion:
    s = head.scale
    if kind == IPH:
        vol_ml = rng.uniform(5, 25) if big else math.exp(rng.uniform(math.log(2), math.log(40)))
        r0 = (3 * vol_ml * 1000 / (4 * math.pi)) ** (1 / 3)
        semi = r0 * rng.uniform(0.8, 1.25, 3)
        semi *= r0 / np.prod(semi) ** (1 / 3)
        side = rng.choice([-1.0, 1.0])
        # keep the blob away from the midline and inside the brain
        for _ in range(50):
            c = np.array([side * rng.uniform(14, 40), rng.uniform(-45, 40), rng.uniform(-8, 42)]) * s
            n = c / np.linalg.norm(c)
            if np.linalg.norm(c) + semi.max() + 10 < head.inner_radius(n) - head.gap:
                break
        edema = rng.uniform(2.5, 6.5) if (big or edema or rng.random() < 0.85) else 0.0
        return Lesion(IPH, rng.uniform(60, 85), dict(
            c=c.astype(F32), q=_random_rotation(rng).astype(F32), semi=semi.astype(F32),
            pert=Waves.random(rng, 4, (1.5, 4.0), 0.28), edema=edema,
            edema_pert=Waves.random(rng, 3, (1.5, 4.0), 0.5), edema_hu=rng.uniform(15, 24)))
    if kind in (EDH, SDH):
        side = rng.choice([-1.0, 1.0])
        az = math.radians(rng.uniform(-55, 55))
        n0 = _unit([side * math.cos(az), math.sin(az), rng.uniform(-0.05, 0.55)])
        t1 = _unit(np.cross([0, 0, 1.0], n0))
        t2 = np.cross(n0, t1)
        if kind == EDH:
            p = dict(h=rng.uniform(10, 19) if big else rng.uniform(7, 18),
                     l1=rng.uniform(22, 36), l2=rng.uniform(20, 32), power=0.5)
            hu = rng.uniform(60, 85)
        else:
            p = dict(h=rng.uniform(6, 11) if big else rng.uniform(4, 11),
                     l1=rng.uniform(45, 70), l2=rng.uniform(40, 60), power=0.3)
            hu = rng.uniform(56, 80)
        p.update(n0=n0.astype(F32), t1=t1.astype(F32), t2=t2.astype(F32), side=side,
                 r0=head.inner_radius(n0), var=Waves.random(rng, 3, (2.0, 5.0), 0.25))
        return Lesion(kind, hu, p)
    if kind == SAH:
        az = rng.uniform(0, 2 * np.pi)
        n1 = _unit([math.cos(az), math.sin(az), rng.uniform(0.0, 0.8)])
        p1 = n1 * head.inner_radius(n1)
        return Lesion(SAH, rng.uniform(60, 78), dict(
            p1=p1.astype(F32), radius=rng.uniform(22, 36 if big else 42) * s, basal=bool(rng.random() < 0.3),
            var=Waves.random(rng, 3, (1.5, 4.0), 0.3), hw=1.75, band=3.0))
    if kind == IVH:
        cast = bool(rng.random() < 0.25)
        return Lesion(IVH, rng.uniform(56, 75), dict(
            cast=cast, side=float(rng.choice([-1.0, 1.0])),
            level=rng.uniform(0, 12) * s))
    raise ValueError(f"unknown lesion kind {kind}")


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------

def render_plane(head: Head, z: float, shape: tuple[int, int], spacing: float,
                 origin: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and label (uint8 0..6) on the axial plane at
    scanner height z. `origin` is the scanner (x, y) of pixel (0, 0)'s centre;
    by default the field of view is centred on the scanner axis."""
    h, w = shape
    if origin is None:
        origin = (-(w - 1) / 2 * spacing, -(h - 1) / 2 * spacing)
    xs = F32(origin[0]) + F32(spacing) * np.arange(w, dtype=F32) - F32(head.center[0])
    ys = F32(origin[1]) + F32(spacing) * np.arange(h, dtype=F32) - F32(head.center[1])
    zs = F32(z - head.center[2])
    m = head.rot.T.astype(F32)  # scanner -> head
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    x = m[0, 0] * gx + m[0, 1] * gy + m[0, 2] * zs
    y = m[1, 0] * gx + m[1, 1] * gy + m[1, 2] * zs
    zz = m[2, 0] * gx + m[2, 1] * gy + m[2, 2] * zs
    hu, lab = _render_points(head, x, y, zz, gy + F32(head.center[1]))
    return hu.reshape(h, w), lab.reshape(h, w)


def render_volume(head: Head, zs, shape, spacing, origin=None) -> tuple[np.ndarray, np.ndarray]:
    """Stack of `render_plane`, one plane at a time to keep memory small."""
    hu = np.empty((len(zs), *shape), dtype=F32)
    lab = np.empty((len(zs), *shape), dtype=np.uint8)
    for k, z in enumerate(zs):
        hu[k], lab[k] = render_plane(head, float(z), shape, spacing, origin)
    return hu, lab


def scanner_effects(hu: np.ndarray, rng: np.random.Generator, spacing: float,
                    noise_std: float, blur_mm: float) -> np.ndarray:
    """Slight in-plane blur (finite resolution) plus mildly correlated Gaussian
    noise (reconstructed CT noise is not white). Works on (H,W) or (Z,H,W)."""
    sig = [0.0] * (hu.ndim - 2) + [blur_mm / spacing] * 2
    out = ndimage.gaussian_filter(hu, sig, mode="nearest")
    noise = rng.standard_normal(hu.shape, dtype=F32)
    noise = ndimage.gaussian_filter(noise, [0.0] * (hu.ndim - 2) + [0.6, 0.6])
    noise *= F32(noise_std / (float(noise.std()) + 1e-6))
    return out + noise


def _render_points(head: Head, x, y, z, ys):
    """HU and label at points given in head coordinates (ys: scanner y)."""
    n_all = x.shape[0]
    hu_all = np.full(n_all, AIR_HU, dtype=F32)
    lab_all = np.zeros(n_all, dtype=np.uint8)
    # cheap bounding sphere first: most of a field of view is air
    r2 = x * x + y * y + z * z
    r_max = head.radius
    near = np.flatnonzero(r2 < F32(r_max * r_max))
    x, y, z, ys = x[near], y[near], z[near], ys[near]
    r = np.sqrt(r2[near]) + F32(1e-3)
    nx, ny, nz = x / r, y / r, z / r
    depth_out = head._outer_radius(nx, ny, nz) - r
    inside_near = np.flatnonzero(depth_out > -head.scalp)
    inside = near[inside_near]
    if inside.size == 0:
        return hu_all, lab_all
    x, y, z, ys, r, nx, ny, nz, do = (a[inside_near] for a in (x, y, z, ys, r, nx, ny, nz, depth_out))
    th = F32(head.skull) + head.skull_var(nx, ny, nz)
    d = do - th  # depth below the inner table
    hu = np.empty(x.shape, dtype=F32)

    # scalp: skin and galea around subcutaneous fat
    scalp = do < 0
    fat = scalp & (do > -head.scalp + 1.2) & (do < -1.2)
    hu[scalp] = 38.0
    hu[fat] = -70.0
    # skull: dense tables around cancellous diploe
    bone = (do >= 0) & (d < 0)
    frac = np.abs(do[bone] / th[bone] - 0.5) * 2  # 1 at the tables, 0 mid-diploe
    t_hu, d_hu = head.tissue_hu["table"], head.tissue_hu["diploe"]
    hu[bone] = d_hu + (t_hu - d_hu) * np.clip((frac - 0.35) / 0.45, 0, 1)

    ic = np.flatnonzero(d >= 0)
    lab = np.zeros(x.shape, dtype=np.uint8)
    if ic.size:
        p = _Points(x[ic], y[ic], z[ic], ys[ic], r[ic], nx[ic], ny[ic], nz[ic], d[ic])
        hu_ic, lab_ic = _intracranial(head, p)
        hu[ic] = hu_ic
        lab[ic] = lab_ic
    hu_all[inside] = hu
    lab_all[inside] = lab
    return hu_all, lab_all


@dataclass
class _Points:
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    ys: np.ndarray
    r: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray
    d: np.ndarray


def _ellipsoid(p: _Points, c, semi, sub=None):
    x, y, z = (p.x, p.y, p.z) if sub is None else (p.x[sub], p.y[sub], p.z[sub])
    return ((x - c[0]) / semi[0]) ** 2 + ((y - c[1]) / semi[1]) ** 2 + ((z - c[2]) / semi[2]) ** 2


def _intracranial(head: Head, p: _Points):
    s = head.scale
    v = head.vent
    n = p.x.shape[0]
    bd = p.d - F32(head.gap)  # depth below the brain surface
    tissue = np.full(n, _WHITE, dtype=np.uint8)
    tissue[bd < 0] = _CSF

    # sulci: nodal lines of a few waves on the sphere of directions, which
    # makes radially oriented clefts with a labyrinthine gyral pattern
    shell = np.flatnonzero((bd >= 0) & (bd < 1.15 * head.sulc_depth + head.cortex + 1.0))
    dist_sulc = np.full(n, np.inf, dtype=F32)
    sdepth = np.full(n, head.sulc_depth, dtype=F32)  # sulci differ in depth
    if shell.size:
        dist_sulc[shell] = _sulcal_distance(head, p.nx[shell], p.ny[shell], p.nz[shell], p.r[shell])
        sdepth[shell] *= np.clip(0.8 + head.sulc_var(p.nx[shell], p.ny[shell], p.nz[shell]), 0.4, 1.15)
    depth_frac = np.clip(bd / sdepth, 0, 1)
    hw = F32(head.sulc_hw) * (1 - 0.5 * depth_frac)
    sulcus = (bd < sdepth) & (dist_sulc < hw)
    fiss_depth = (28 + 20 * np.clip((p.z - v["zv"]) / 15, 0, 1)) * s
    fiss_hw = F32(0.5 + head.sulc_hw * 0.8)
    fissure = (np.abs(p.x) < fiss_hw) & (bd < fiss_depth)
    grey = (bd < head.cortex) | ((dist_sulc < hw + head.cortex) & (bd < sdepth + 0.7 * head.cortex)) \
        | ((np.abs(p.x) < fiss_hw + head.cortex) & (bd < fiss_depth + head.cortex))
    tissue[(bd >= 0) & grey] = _GREY

    # deep structures, only evaluated near the centre
    core = np.flatnonzero((np.abs(p.x) < 45 * s) & (np.abs(p.y - v["yv"]) < 55 * s)
                          & (p.z > v["cistern_z"] - 15 * s) & (p.z < v["zv"] + 25 * s))
    vent = np.zeros(n, dtype=bool)
    cistern = np.zeros(n, dtype=bool)
    if core.size:
        cx, cy, cz = p.x[core], p.y[core], p.z[core]
        deep = np.zeros(core.size, dtype=bool)
        for sd in (-1.0, 1.0):  # thalamus, lentiform nucleus, caudate head
            for c, semi in (((sd * 11, 12, -16), (8, 12, 9)), ((sd * 22, -6, -14), (6, 14, 10)),
                            ((sd * (v["xv"] + v["ax"] + 2 * s) / s, -20, -4), (4, 8, 9))):
                centre = (c[0] * s, v["yv"] + c[1] * s, v["zv"] + c[2] * s)
                deep |= _ellipsoid(p, centre, tuple(a * s for a in semi), core) < 1
        tissue[core[deep & (bd[core] >= 0)]] = _DEEP
        # lateral ventricles: curved, posteriorly tilted and widening ellipsoids
        vy = cy - v["yv"]
        vmask = np.zeros(core.size, dtype=bool)
        for sd in (-1.0, 1.0):
            xs = cx - sd * (v["xv"] + v["bend"] * vy * vy)
            zs = cz - (v["zv"] - v["tilt"] * vy)
            ax = v["ax"] * (1 + 0.35 * np.clip(vy / v["ay"], -0.6, 1))
            vmask |= (xs / ax) ** 2 + (vy / v["ay"]) ** 2 + (zs / v["az"]) ** 2 < 1
        vmask &= np.abs(cx) > 0.8  # septum pellucidum
        # third ventricle: a midline slit below the bodies
        vmask |= (np.abs(cx) < v["third"]) & (np.abs(vy - 6 * s) < 12 * s) \
            & (cz > v["zv"] - 30 * s) & (cz < v["zv"] - 8 * s)
        vent[core] = vmask
        # basal cisterns: CSF ring around the midbrain
        zc = v["cistern_z"]
        outer = _ellipsoid(p, (0, v["yv"] + 10 * s, zc), (19 * s, 17 * s, 8 * s), core) < 1
        mid = _ellipsoid(p, (0, v["yv"] + 12 * s, zc), (11 * s, 10 * s, 30 * s), core) < 1
        cistern[core] = outer & ~mid
    csf = (bd < 0) | sulcus | fissure | vent | cistern
    tissue[csf] = _CSF

    th = head.tissue_hu
    lut = np.array([th["white"], th["grey"], th["deep"], th["csf"]], dtype=F32)
    hu = lut[tissue]
    hu += F32(1.2) * np.sin(0.07 * p.x + 0.05 * p.z) * np.cos(0.06 * p.y)  # faint texture

    ctx = dict(bd=bd, tissue=tissue, vent=vent, cistern=cistern, dist_sulc=dist_sulc, sdepth=sdepth,
               fiss_depth=fiss_depth, fiss_hw=fiss_hw)
    masks: dict[int, list] = {}
    for les in head.lesions:
        for kind, (idx, hu_val) in _lesion_masks(head, les, p, ctx).items():
            masks.setdefault(kind, []).append((idx, hu_val))
    lab = np.zeros(n, dtype=np.uint8)
    for kind in PAINT_ORDER:
        for idx, hu_val in masks.get(kind, []):
            lab[idx] = kind
            hu[idx] = hu_val
    return hu, lab


def _sulcal_distance(head: Head, nx, ny, nz, r):
    """Approximate distance (mm) to the nearest sulcal plane: |G| / |grad G|
    over the sphere of directions, scaled by the radius."""
    g = np.zeros(nx.shape, dtype=F32)
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gz = np.zeros_like(g)
    warp = head.gyri_warp(nx, ny, nz)
    wv = head.gyri
    for i, (d, f, ph) in enumerate(zip(wv.dirs, wv.freq, wv.phase)):
        k = F32(head.gyri_k * f)
        dot = nx * d[0] + ny * d[1] + nz * d[2]
        # the radial term bends sulci with depth so they are not straight spokes
        psi = k * dot + ph + warp * F32(1 + 0.3 * i) + F32(0.7) * np.sin(F32(0.22) * r + ph)
        g += np.sin(psi)
        c = k * np.cos(psi)
        gx += c * (d[0] - dot * nx)
        gy += c * (d[1] - dot * ny)
        gz += c * (d[2] - dot * nz)
    grad = np.sqrt(gx * gx + gy * gy + gz * gz)
    return np.abs(g) / np.maximum(grad, F32(0.25 * head.gyri_k)) * r


def _lesion_masks(head: Head, les: Lesion, p: _Points, ctx) -> dict:
    """{kind: (indices, HU values)} for one lesion; indices into p."""
    q = les.params
    bd, tissue, vent = ctx["bd"], ctx["tissue"], ctx["vent"]
    if les.kind == IPH:
        c, semi = q["c"], q["semi"]
        reach = float(semi.max()) * 1.45 + q["edema"] * 1.5 + 2
        near = np.flatnonzero((np.abs(p.x - c[0]) < reach) & (np.abs(p.y - c[1]) < reach)
                              & (np.abs(p.z - c[2]) < reach))
        if near.size == 0:
            return {}
        dx, dy, dz = p.x[near] - c[0], p.y[near] - c[1], p.z[near] - c[2]
        qm = q["q"]
        v = [(dx * qm[0, k] + dy * qm[1, k] + dz * qm[2, k]) / semi[k] for k in range(3)]
        rho = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) + F32(1e-4)
        nv = [a / rho for a in v]
        edge = 1 + q["pert"](*nv)
        out_mm = (rho - edge) * F32(semi.mean())  # ~ distance outside the hematoma
        parench = (bd[near] >= 0) & ~vent[near]
        hem = (out_mm < 0) & parench
        res = {IPH: (near[hem], _texture(p, near[hem], les.hu))}
        if q["edema"] > 0:
            width = q["edema"] * (1 + q["edema_pert"](*nv))
            ring = (out_mm >= 0) & (out_mm < width) & parench & (tissue[near] != _CSF)
            res[EDEMA] = (near[ring], _texture(p, near[ring], q["edema_hu"]))
        return res
    if les.kind in (EDH, SDH):
        n0, t1, t2 = q["n0"], q["t1"], q["t2"]
        cos0 = p.nx * n0[0] + p.ny * n0[1] + p.nz * n0[2]
        reach = math.cos(min(max(q["l1"], q["l2"]) / q["r0"] + 0.15, 1.5))
        near = np.flatnonzero((cos0 > reach) & (p.d < q["h"] * 1.3) & (p.x * q["side"] > 0.6))
        if near.size == 0:
            return {}
        nx, ny, nz = p.nx[near], p.ny[near], p.nz[near]
        c0 = cos0[near]
        a1 = np.arctan2(nx * t1[0] + ny * t1[1] + nz * t1[2], c0) * F32(q["r0"])
        a2 = np.arctan2(nx * t2[0] + ny * t2[1] + nz * t2[2], c0) * F32(q["r0"])
        s2 = (a1 / q["l1"]) ** 2 + (a2 / q["l2"]) ** 2
        h = F32(q["h"]) * np.maximum(1 - s2, 0) ** F32(q["power"]) * (1 + q["var"](nx, ny, nz))
        m = p.d[near] < h
        return {les.kind: (near[m], _texture(p, near[m], les.hu))}
    if les.kind == SAH:
        p1 = q["p1"]
        dist = np.sqrt((p.x - p1[0]) ** 2 + (p.y - p1[1]) ** 2 + (p.z - p1[2]) ** 2)
        region = dist < q["radius"] * (1 + q["var"](p.nx, p.ny, p.nz))
        hw = max(q["hw"], head.sulc_hw)
        blood = region & (
            (p.d < q["band"])
            | ((bd < ctx["sdepth"]) & (ctx["dist_sulc"] < hw))
            | ((np.abs(p.x) < max(hw, ctx["fiss_hw"])) & (bd < ctx["fiss_depth"])))
        if q["basal"]:
            blood |= ctx["cistern"]
        blood &= ~vent
        idx = np.flatnonzero(blood)
        return {SAH: (idx, _texture(p, idx, les.hu))}
    if les.kind == IVH:
        if q["cast"]:
            m = vent & (p.x * q["side"] > -2.0)
        else:
            vc = head.to_scanner([0.0, head.vent["yv"], head.vent["zv"]])
            m = vent & (p.ys > vc[1] + q["level"])
        idx = np.flatnonzero(m)
        return {IVH: (idx, _texture(p, idx, les.hu))}
    raise ValueError(les.kind)


def _texture(p: _Points, idx, base: float):
    """Lesion density with a little smooth internal heterogeneity."""
    x, y, z = p.x[idx], p.y[idx], p.z[idx]
    return F32(base) + F32(2.5) * np.sin(0.31 * x + 0.17 * z) * np.cos(0.23 * y - 0.11 * z)
