"""The batched on-device augmentation (the CUDA default) checked on CPU: exact
where it must be exact, aligned image/mask warps, lesion-containing crops, and
per-sample determinism (what keeps multi-GPU equal to single-GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hemoseg.data.augment import POLICIES, Policy
from hemoseg.data.dataset import CachedSplit
from hemoseg.data.device_augment import DeviceAugment
from hemoseg.data.preprocessing import Preprocessing

PREP = Preprocessing(size=64, mean=0.2, std=0.5)


def blobs(n=6, s=64, seed=0, mode="multiclass"):
    """Image intensity = 40 * label + 20 inside the head, so a pixel's label can be read back from the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    images = np.zeros((n, s, s), np.uint8)
    targets = np.zeros((n, s, s), np.uint8)
    for i in range(n):
        images[i][(yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (0.45 * s) ** 2] = 20
        if i == n - 1:
            continue  # one image without lesions
        for label in (1, 2, 3):
            cy, cx = rng.integers(12, s - 12, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(3, 7) ** 2
            targets[i][disk] = label
    images += (40 * targets).astype(np.uint8)
    if mode == "multilabel":
        targets = np.stack([(targets == k) for k in (1, 2, 3)], 1).astype(np.uint8)
    return CachedSplit("t", images[..., None], targets, [f"{i}.png" for i in range(n)], mode)


def keys(n, seed0=100):
    return [(i % n, seed0 + i) for i in range(2 * n)]


def test_no_policy_is_exact_normalisation():
    cache = blobs()
    x, y = DeviceAugment(cache, PREP, None, None, "cpu")(keys(6))
    idx = [k for k, _ in keys(6)]
    assert torch.equal(y, torch.from_numpy(cache.targets[idx]).long())
    ref = torch.from_numpy(PREP.normalize(cache.images[idx]))
    assert torch.allclose(x, ref, atol=1e-6)


def test_certain_flip_equals_mirror_image():
    cache = blobs()
    x, y = DeviceAugment(cache, PREP, Policy(hflip=1.0), None, "cpu")(keys(6))
    idx = [k for k, _ in keys(6)]
    assert torch.equal(y, torch.from_numpy(cache.targets[idx][:, :, ::-1].copy()).long())
    assert torch.allclose(x, torch.from_numpy(PREP.normalize(cache.images[idx][:, :, ::-1])), atol=1e-5)


@pytest.mark.parametrize("policy", ["default", "paper"])
def test_warped_image_and_mask_stay_aligned(policy):
    cache = blobs()
    pol = POLICIES[policy]
    pol_geom = Policy(**{**pol.__dict__, "intensity_p": 0.0})  # keep intensities readable
    x, y = DeviceAugment(cache, PREP, pol_geom, None, "cpu")(keys(6, seed0=7))
    display = (x * PREP.std[0] + PREP.mean[0]) * 255  # back to 0..255
    label_from_image = torch.clamp(((display - 20) / 40).round(), 0, 3).long()[:, 0]
    lesion = (label_from_image > 0) | (y > 0)
    agree = (label_from_image[lesion] == y[lesion]).float().mean().item()
    assert agree > 0.75, agree  # bilinear edge pixels may disagree; a mask warped on its own scores < 0.05
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3}
    # the warps really moved things
    idx = [k for k, _ in keys(6, seed0=7)]
    assert not torch.equal(y, torch.from_numpy(cache.targets[idx]).long())


def test_patches_contain_lesions_when_the_image_has_any():
    cache = blobs()
    aug = DeviceAugment(cache, PREP, POLICIES["default"], 32, "cpu")
    ks = [(i % 6, s) for i, s in enumerate(range(60))]
    x, y = aug(ks)
    assert x.shape == (60, 1, 32, 32) and y.shape == (60, 32, 32)
    for (i, _), yi in zip(ks, y):
        if i < 5:
            assert (yi > 0).any(), "crop missed every lesion"
        else:
            assert not (yi > 0).any()


def test_multilabel_and_binary_shapes():
    cache = blobs(mode="multilabel")
    x, y = DeviceAugment(cache, PREP, POLICIES["default"], 32, "cpu")(keys(6))
    assert x.shape == (12, 1, 32, 32) and y.shape == (12, 3, 32, 32) and y.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


def test_a_sample_augments_identically_in_any_batch():
    aug = DeviceAugment(blobs(), PREP, POLICIES["paper"], 32, "cpu")
    ks = keys(6)
    x_all, y_all = aug(ks)
    x_half, y_half = aug(ks[3:7])
    assert torch.allclose(x_all[3:7], x_half, atol=1e-6) and torch.equal(y_all[3:7], y_half)
    x_other, _ = aug([(k, s + 1) for k, s in ks])
    assert not torch.allclose(x_all, x_other)


def test_trainer_learns_with_device_augmentation(tmp_path, one_thread):
    """The CUDA default path, run on CPU: same learning check as the loader path's test."""
    from blob_data import make_blob_export
    from hemoseg.training.config import TrainConfig
    from hemoseg.training.trainer import Trainer

    cfg = TrainConfig(size=64, width=8, epochs=8, batch_size=8, seed=0, device_augment=True)
    summary = Trainer(make_blob_export(tmp_path / "blobs"), tmp_path / "run", cfg, device="cpu", quiet=True).run()
    assert summary["train_config"]["device_augment"] is True
    assert summary["best_val_dice"] > 0.8, summary["best_val_dice"]


def test_two_ranks_see_exactly_the_single_process_batch():
    """What keeps multi-GPU equal to one GPU with on-device augmentation: the
    samples (and warps) of rank 0 and rank 1 together are the one-process batch."""
    from hemoseg.training.sampling import EpochSampler

    cache = blobs()
    aug = DeviceAugment(cache, PREP, POLICIES["default"], 32, "cpu")
    one = EpochSampler(cache.has_lesion(), 4, 3, 0.5, seed=5)
    two = [EpochSampler(cache.has_lesion(), 4, 3, 0.5, seed=5, rank=r, world=2) for r in (0, 1)]
    for s in (one, *two):
        s.set_epoch(2)
    for full, part0, part1 in zip(one, *two):
        x, y = aug(full)
        (x0, y0), (x1, y1) = aug(part0), aug(part1)
        assert torch.allclose(x[0::2], x0, atol=1e-6) and torch.allclose(x[1::2], x1, atol=1e-6)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
