"""torchrun integration. Without torchrun's environment everything is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0 decides (e.g. early stop / time budget); everyone follows."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=_comm_device())
        dist.broadcast(t, 0)
        return bool(t.item())


class _AllReduceSum(torch.autograd.Function):
    """Sum across processes; the gradient of a sum is again a sum across processes."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlooSyncBatchNorm2d(torch.nn.BatchNorm2d):
    """Batch norm over the global batch for CPU tensors (gloo).

    torch.nn.SyncBatchNorm only runs on GPUs, so without this a CPU DDP run
    normalises each process's slice separately and no longer trains the same
    model as one process with the same global batch. Two-pass statistics
    (mean, then centred squares) keep float32 results close to BatchNorm2d's.
    Same parameters and buffers as BatchNorm2d, so checkpoints are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        n_local = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), n_local]))
        n = sums[c].detach()
        mean = sums[:c] / n
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum((0, 2, 3))) / n  # biased, as BatchNorm uses
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n.item() - 1, 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Global-batch BN for DDP: torch's SyncBatchNorm on GPUs, GlooSyncBatchNorm2d on CPU."""
    if device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = GlooSyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_from_env() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
