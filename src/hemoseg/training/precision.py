"""bf16 or fp32: decided by the hardware, and on a CPU by a stopwatch.

On a GPU bf16 autocast always pays. On a CPU it depends on the chip: with
AVX512-BF16 a 2-core AMD EPYC trains the demo network 2x faster in bf16, while a
2-core Intel Xeon with the same instruction set (no AMX) trains it 25% *slower*
than in fp32 (docs/recipe.md, experiment 28). CPU flags cannot tell the two apart,
so a CPU that can do bf16 times a few steps of the real network both ways.
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext

import torch


def cpu_has_bf16() -> bool:
    """Native bf16 matmul units (AVX512-BF16, AMX). Elsewhere CPU bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: torch.device) -> bool:
    """Where bf16 autocast can pay: a GPU from Ampere on, or a CPU with bf16 units."""
    if device.type == "cuda":  # older cards emulate bf16, and cuDNN has no bf16 convolutions for them
        return torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_has_bf16()


def step_seconds(model: torch.nn.Module, x: torch.Tensor, rounds: int = 3) -> tuple[float, float]:
    """Median seconds of a forward+backward pass in fp32 and in bf16, on a copy of
    `model` so neither its weights nor its BatchNorm statistics move. The two
    alternate, after two warm-up rounds (oneDNN builds its kernels on first use),
    so a background job slows both alike."""
    net = copy.deepcopy(model).train()
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(rounds + 2):
        for bf16 in (False, True):
            t = time.perf_counter()
            with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
                out = net(x)
            loss = sum(o.float().square().mean() for o in (out if isinstance(out, list) else [out]))
            loss.backward()
            net.zero_grad(set_to_none=True)
            if i >= 2:
                times[bf16].append(time.perf_counter() - t)
    return statistics.median(times[False]), statistics.median(times[True])


def choose_bf16(model: torch.nn.Module, x: torch.Tensor, allowed: bool,
                previous: str | None = None) -> tuple[bool, str]:
    """(use bf16 autocast?, a line saying why) for training `model` on batches like `x`.
    bf16 must win by 10%: near a tie, fp32's exact arithmetic is worth more.

    `previous` is the precision a resumed run trained in. It is kept where this
    device has it: a second stopwatch near a tie could switch a run's arithmetic
    halfway through."""
    if not allowed:
        return False, "fp32 (--fp32)"
    if not native_bf16(x.device):
        return False, f"fp32 (no native bf16 on this {'GPU' if x.device.type == 'cuda' else 'CPU'})"
    if previous in ("bf16", "fp32"):
        return previous == "bf16", f"{'bf16 autocast' if previous == 'bf16' else 'fp32'} (as before the interruption)"
    if x.device.type != "cpu":
        return True, "bf16 autocast"
    fp32, bf16 = step_seconds(model, x)
    use = bf16 < 0.9 * fp32
    return use, (f"{'bf16 autocast' if use else 'fp32'} (timed on this CPU: "
                 f"fp32 {fp32 * 1000:.0f} ms, bf16 {bf16 * 1000:.0f} ms per step)")
