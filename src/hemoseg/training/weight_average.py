"""An exponential moving average of the weights, the model that is validated and saved.

A short, time-budgeted run ends while the raw weights still jitter from step to
step (validation Dice swings by several points between epochs at a high learning
rate). The average over the last few hundred steps is a better model at no
training cost, and it makes picking the best epoch less of a lottery. BatchNorm
statistics are averaged along with the weights, so the average is a complete
model that needs no re-estimation pass.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        src, dst = model.state_dict(), self.model.state_dict()
        floats = [k for k, v in src.items() if v.is_floating_point()]
        self._src_f, self._dst_f = [src[k] for k in floats], [dst[k] for k in floats]
        self._src_i = [v for k, v in src.items() if k not in floats]  # BN's num_batches_tracked
        self._dst_i = [v for k, v in dst.items() if k not in floats]

    @torch.no_grad()
    def update(self) -> None:
        """After each optimiser step. The warm-up keeps the first, random weights
        from dominating a short run."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._dst_f, self._src_f, 1.0 - d)
        for a, b in zip(self._dst_i, self._src_i):
            a.copy_(b)
