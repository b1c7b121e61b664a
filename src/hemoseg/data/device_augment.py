"""Augmentation as one batched warp on the training device.

On a GPU, per-sample albumentations in worker processes became the bottleneck
(16% of an H200 step waited on the loader). Here the whole cached split lives
on the device as uint8 and each step is: gather, one `grid_sample` for images
(bilinear) and one for masks (nearest), a brightness/contrast multiply-add and
standardisation. Flip, rotation, shift, zoom and the lesion-centred patch crop
fold into a single affine matrix per sample, so the cost does not grow with the
policy.

Random parameters come from each sample's own seed (the `EpochSampler` key),
so a sample augments identically whatever batch or process it lands in, and
multi-GPU runs stay equal to single-GPU runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from hemoseg.data.augment import Policy
from hemoseg.data.dataset import CachedSplit
from hemoseg.data.preprocessing import Preprocessing

_DRAWS = 17  # uniforms per sample; each parameter owns a column, so unused ones never shift the rest


class DeviceAugment:
    def __init__(self, cache: CachedSplit, prep: Preprocessing, policy: Policy | None, patch: int | None,
                 device: torch.device | str):
        self.device = torch.device(device)
        # (N,C,S,S) uint8: channels-first, so a sample's windows warp together in one grid_sample
        self.images = torch.from_numpy(np.ascontiguousarray(cache.images.transpose(0, 3, 1, 2))).to(self.device)
        self.targets = torch.from_numpy(cache.targets).to(self.device)  # (N,S,S) or (N,K,S,S) uint8
        self.mode, self.prep, self.policy = cache.mode, prep, policy
        self.size = self.images.shape[-1]
        self.patch = patch if patch and patch < self.size else None
        self.mean, self.std = (torch.tensor(v, device=self.device).view(1, -1, 1, 1) for v in (prep.mean, prep.std))

    def __call__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """keys: (index, seed) pairs -> (x (B,C,P,P) float32, y as SegmentationDataset returns it)."""
        idx = self._upload(torch.tensor([k[0] for k in keys]))
        img = self.images[idx].float().mul_(1.0 / 255.0)
        tgt = self.targets[idx]
        tgt = (tgt.unsqueeze(1) if tgt.ndim == 3 else tgt).float()
        if self.policy is not None or self.patch:
            u = self._upload(torch.from_numpy(np.stack([np.random.default_rng(s).random(_DRAWS, np.float32)
                                                        for _, s in keys])))
            theta = self._theta(u, tgt)
            out = self.patch or self.size
            grid = F.affine_grid(theta, [len(keys), 1, out, out], align_corners=False)
            img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            tgt = F.grid_sample(tgt, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            if self.policy is not None and self.policy.intensity_p:
                img = self._intensity(img, u)
        x = (img - self.mean) / self.std
        if self.mode == "multiclass":
            return x, tgt[:, 0].round().long()
        return x, tgt

    def _upload(self, t: torch.Tensor) -> torch.Tensor:
        """Host -> device without a sync: a pageable copy would make the CPU wait for
        the previous step's kernels, leaving the GPU idle while the next step is queued."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    # ------------------------------------------------------------------
    def _theta(self, u: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """(B,2,3) maps output coordinates to input coordinates (normalised, [-1, 1]).

        Forward warp of an input point p: M p + t with M = s R(a) Flip. An output
        pixel q of the crop sits at c + r q in the warped full image, so it
        samples M^-1 (c + r q - t)."""
        b, p = len(u), self.policy or Policy()

        def chance(col: int, prob: float) -> torch.Tensor:
            return u[:, col] < prob

        def spread(col: int, limit: float) -> torch.Tensor:  # uniform in [-limit, limit]
            return (2 * u[:, col] - 1) * limit

        fx = torch.where(chance(0, p.hflip), -1.0, 1.0)
        fy = torch.where(chance(1, p.vflip), -1.0, 1.0)
        aff = chance(4, p.affine_p)
        angle = torch.where(chance(2, p.rotate_p), spread(3, p.rotate), 0.0)
        angle = angle + torch.where(aff, spread(5, p.affine_rotate), 0.0)
        angle = angle * (math.pi / 180)
        s = torch.where(aff, 1 + spread(6, p.scale), 1.0)
        t = torch.stack([torch.where(aff, spread(7, 2 * p.translate), 0.0),   # normalised units: side = 2
                         torch.where(aff, spread(8, 2 * p.translate), 0.0)], 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # M = s R F;  M^-1 = F R^T / s
        m = torch.stack([torch.stack([s * cos * fx, -s * sin * fy], 1),
                         torch.stack([s * sin * fx, s * cos * fy], 1)], 1)         # (B,2,2)
        m_inv = torch.stack([torch.stack([cos * fx, sin * fx], 1),
                             torch.stack([-sin * fy, cos * fy], 1)], 1) / s[:, None, None]
        r = (self.patch or self.size) / self.size
        c = self._crop_centres(u, tgt, m, t, r) if self.patch else torch.zeros(b, 2, device=u.device)
        offset = torch.einsum("bij,bj->bi", m_inv, c - t)
        return torch.cat([m_inv * r, offset[:, :, None]], 2)

    def _crop_centres(self, u, tgt, m, t, r) -> torch.Tensor:
        """A random lesion pixel (after the warp) inside the window, anywhere in
        it; a uniform window where the image has no lesion."""
        s = self.size
        fg = (tgt.amax(1) > 0).flatten(1)
        cum = fg.cumsum(1)
        n = cum[:, -1]
        want = (u[:, 9] * n).floor().long().clamp(max=(n - 1).clamp(min=0)) + 1
        pos = torch.searchsorted(cum, want[:, None]).squeeze(1).clamp(max=s * s - 1)
        pix = torch.stack([pos % s, pos // s], 1).float()
        lesion = (2 * pix + 1) / s - 1                                   # pixel centre, normalised
        lesion = torch.einsum("bij,bj->bi", m, lesion) + t
        jitter = (2 * u[:, 10:12] - 1) * r * 0.9
        anywhere = (2 * u[:, 12:14] - 1) * (1 - r)
        c = torch.where((n > 0)[:, None], lesion + jitter, anywhere)
        return c.clamp(-(1 - r), 1 - r)

    def _intensity(self, img: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        p = self.policy
        on = u[:, 14] < p.intensity_p
        alpha = torch.where(on, 1 + (2 * u[:, 15] - 1) * p.contrast, 1.0)
        beta = torch.where(on, (2 * u[:, 16] - 1) * p.brightness, 0.0)
        return (img * alpha[:, None, None, None] + beta[:, None, None, None]).clamp_(0, 1)
