"""The training loop: one code path for CPU, one GPU and torchrun multi-GPU."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hemoseg import __version__
from hemoseg.cpus import cpu_threads
from hemoseg.data.augment import build_augmentation, get_policy
from hemoseg.data.dataset import SegmentationDataset
from hemoseg.data.device_augment import DeviceAugment
from hemoseg.data.preprocessing import Preprocessing, describe_windows
from hemoseg.data.rasterize import num_outputs
from hemoseg.errors import HemosegError
from hemoseg.evaluation.metrics import batch_confusion, summarize
from hemoseg.models.attention_unet import build_model, count_parameters
from hemoseg.models.config import ModelConfig
from hemoseg.training import run_dir
from hemoseg.training.calibration import fit_offsets
from hemoseg.training.checkpoint import load_checkpoint, save_checkpoint
from hemoseg.training.config import TrainConfig
from hemoseg.training.curves import plot_curves
from hemoseg.training.data_setup import prepare_training_data
from hemoseg.training.distributed import DistContext, convert_sync_batchnorm, init_from_env, shutdown
from hemoseg.training.losses import SegmentationLoss, init_head_prior, inverse_frequency_weights, pool_to
from hemoseg.training.precision import choose_bf16, native_bf16
from hemoseg.training.sampling import EpochSampler
from hemoseg.training.transfer import load_init

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_dice", "val_loss", "val_dice", "epoch_seconds",
                  "data_seconds", "images_per_second", "coarse_share"]


def lr_factor(progress: float, cfg: TrainConfig) -> float:
    """LR multiplier at a training progress in [0, 1]: linear warm-up, then cosine to 1%."""
    if cfg.schedule == "constant":
        return 1.0
    if cfg.warmup > 0 and progress < cfg.warmup:
        return max(progress / cfg.warmup, 0.01)
    t = (progress - cfg.warmup) / max(1 - cfg.warmup, 1e-8)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def select_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loader_workers(requested: int | None, device: torch.device, world: int = 1) -> int:
    """On CUDA, loader augmentation (when chosen) runs in worker processes so the GPU
    never waits on it; on CPU, workers would compete with the model for the same few cores."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    return max(min(8, cpu_threads() // max(world, 1) - 1), 0)


def use_device_augment(cfg: TrainConfig, device: torch.device) -> bool:
    """Default: batched on-device warps on CUDA unless loader workers were asked for;
    albumentations per sample on CPU (cv2 on cached uint8 is as fast there, and the
    cores belong to the model anyway)."""
    if cfg.device_augment is not None:
        return cfg.device_augment
    return device.type == "cuda" and cfg.workers is None


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            out[f"optim.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


class Trainer:
    def __init__(self, dataset, out: Path, cfg: TrainConfig, resume: bool = False, force: bool = False,
                 device: str | None = None, quiet: bool = False):
        self.ctx: DistContext = init_from_env()
        self.cfg, self.quiet = cfg, quiet or not self.ctx.is_main
        self.out = Path(out)
        if self.ctx.is_main:
            run_dir.prepare(self.out, resume, force)
        self.ctx.barrier()
        self.resume_from = None
        if resume:
            ckpt, extra = load_checkpoint(self.out / run_dir.LAST, with_extra=True)
            saved = TrainConfig.from_dict(ckpt.meta["train_config"])
            self.cfg = saved.override(epochs=cfg.epochs if cfg.epochs != saved.epochs else None)
            self.resume_from = (ckpt, extra)
        self.device = select_device(device)
        if self.ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        torch.manual_seed(self.cfg.seed)
        self.dataset_path = dataset

    def log(self, msg: str) -> None:
        if self.ctx.is_main:
            if not self.quiet:
                tqdm.write(msg)
            with open(self.out / run_dir.LOG, "a") as f:
                f.write(msg + "\n")

    # ------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            shutdown(self.ctx)

    def _run(self) -> dict:
        cfg, ctx, dev = self.cfg, self.ctx, self.device
        data = prepare_training_data(self.dataset_path, cfg.mode, cfg.size, cfg.seed, self.log)
        self.classes = data.classes
        # Binary mode scores one merged "lesion" channel, whatever the dataset's class count.
        self.metric_names = ["lesion"] if cfg.mode == "binary" else list(data.classes.names)
        k = len(data.classes)
        source = load_checkpoint(cfg.init) if cfg.init and not self.resume_from else None
        if self.resume_from:
            prep = self.resume_from[0].preprocessing
        elif source:  # the source's normalisation: a pixel value keeps the meaning its weights learned
            prep = dataclasses.replace(source.preprocessing, size=cfg.size)
        else:
            prep = Preprocessing(size=cfg.size, windows=data.windows, **data.train.channel_stats())
        if prep.windows != data.windows:
            what = "--resume run" if self.resume_from else "--init model"
            raise HemosegError(f"the {what} reads windows {describe_windows(prep.windows)}, but this dataset's "
                               f"images carry {describe_windows(data.windows)}", self.dataset_path)
        mcfg = ModelConfig(in_channels=prep.channels, out_channels=num_outputs(cfg.mode, k), width=cfg.width,
                           depth=cfg.depth, attention=cfg.attention, stem=cfg.stem,
                           deep_supervision=cfg.deep_supervision)
        model = build_model(mcfg)
        stride = model.stride * (2 if cfg.coarse > 0 else 1)  # the coarse phase halves the input
        for name, side in (("size", cfg.size), ("patch", cfg.patch)):
            if side and side % stride:
                raise HemosegError(f"--{name} {side} must be a multiple of {stride} for depth {cfg.depth}"
                                   + (f" and stem {cfg.stem}" if cfg.stem > 1 else "")
                                   + (f" with --coarse {cfg.coarse:g} (--coarse 0 trains at one resolution)"
                                      if cfg.coarse > 0 else ""))
        if cfg.patch and cfg.patch > cfg.size:
            raise HemosegError(f"--patch {cfg.patch} is larger than --size {cfg.size}")
        init_head_prior(model.head, cfg.mode)
        if source:
            kept = load_init(model, source, cfg.mode, list(data.classes.names))
            self.log(f"initialised from {cfg.init}; learned detectors kept for: {', '.join(kept) or 'none'}")
        self.log(f"hemoseg {__version__} | {cfg.mode} | classes: {', '.join(data.classes.names)} | "
                 f"model width {cfg.width} depth {cfg.depth} attention={cfg.attention}: "
                 f"{count_parameters(model) / 1e6:.2f} M parameters | device {dev} x{ctx.world}")

        # NHWC suits oneDNN's CPU convolutions in fp32 too (+35% training on 2 cores, docs/recipe.md).
        channels_last = dev.type == "cpu" or (cfg.amp and native_bf16(dev))
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels once
        model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        use_amp = False
        if ctx.is_main:  # rank 0's stopwatch decides for all; the other ranks only wait for it
            side = cfg.patch or cfg.size
            # Its own generator: the probe must not move the seeded stream training draws from.
            probe = torch.randn(max(cfg.batch_size // ctx.world, 1), prep.channels, side, side,
                                generator=torch.Generator().manual_seed(0)).to(dev)
            if channels_last:
                probe = probe.contiguous(memory_format=torch.channels_last)
            previous = self.resume_from[0].meta.get("precision") if self.resume_from else None
            use_amp, why = choose_bf16(model, probe, cfg.amp, previous)
            self.log(f"precision: {why}")
        use_amp = ctx.broadcast_flag(use_amp)
        if ctx.enabled:
            model = convert_sync_batchnorm(model, dev)
        weights = None
        if cfg.class_weighting and cfg.mode == "multiclass":
            weights = inverse_frequency_weights(data.train.class_pixel_counts(k), data.train.targets.size)
        loss_fn = SegmentationLoss(cfg.mode, k, weights).to(dev)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        fused = {"fused": True} if dev.type == "cuda" else {}  # one kernel for all parameters
        opt = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

        start_epoch, history, best, elapsed0 = 1, [], -1.0, 0.0
        if self.resume_from:
            ckpt, extra = self.resume_from
            model.load_state_dict(ckpt.model_state)
            _restore_optimizer(opt, extra)
            start_epoch = ckpt.meta["epoch"] + 1
            history = ckpt.meta["history"]
            best = ckpt.meta["best_val_dice"]
            elapsed0 = ckpt.meta["elapsed_seconds"]
            self.log(f"resuming after epoch {ckpt.meta['epoch']} (best val Dice {best:.4f})")

        net = model
        if ctx.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None)
        fwd = torch.compile(net) if cfg.compile else net

        sampler = EpochSampler(data.train.has_lesion(), cfg.batch_size, cfg.steps_per_epoch,
                               cfg.foreground_fraction, cfg.seed, ctx.rank, ctx.world)
        workers = loader_workers(cfg.workers, dev, ctx.world)
        if use_device_augment(cfg, dev):
            augment = DeviceAugment(data.train, prep, get_policy(cfg.augmentation), cfg.patch, dev)
            train_batches = lambda: map(augment, sampler)  # noqa: E731
        else:
            train_ds = SegmentationDataset(data.train, prep, build_augmentation(cfg.augmentation, cfg.seed, cfg.patch))
            loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=workers, pin_memory=dev.type == "cuda",
                                persistent_workers=workers > 0)
            train_batches = lambda: loader  # noqa: E731
        val_ds = SegmentationDataset(data.valid, prep, None)
        val_idx = list(range(ctx.rank, len(val_ds), ctx.world))
        val_loader = DataLoader(torch.utils.data.Subset(val_ds, val_idx), batch_size=max(cfg.batch_size // ctx.world, 1),
                                shuffle=False, num_workers=min(workers, 2), pin_memory=dev.type == "cuda",
                                persistent_workers=workers > 0)  # no re-spawn every epoch

        total_steps = len(sampler) * cfg.epochs
        step = (start_epoch - 1) * len(sampler)
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        t_start = time.perf_counter() - elapsed0
        bad_epochs = 0
        autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if use_amp else nullcontext
        precision = "bf16" if use_amp else "fp32"  # what ran, not just what was allowed (cfg.amp)
        meta_base = {"train_config": cfg.to_dict(), "data_summary": data.summary, "hemoseg_version": __version__,
                     "precision": precision}

        def progress() -> float:
            p = step / total_steps
            if budget:
                p = max(p, (time.perf_counter() - t_start) / budget)
            return min(p, 1.0)

        epoch = start_epoch - 1
        stop = False
        coarse_phase = ctx.broadcast_flag(progress() < cfg.coarse)  # once over, over for good: progress only grows
        last_plot = -math.inf
        for epoch in range(start_epoch, cfg.epochs + 1):
            sampler.set_epoch(epoch)
            net.train()
            t0 = time.perf_counter()
            # Epoch 1 pays for decoding + rasterising once (the cache build); later epochs do not.
            data_time = data.summary["cache_seconds"] if epoch == 1 else 0.0
            loss_sum, n_seen, n_coarse = torch.zeros((), device=dev), 0, 0
            counts = torch.zeros(len(self.metric_names), 3, dtype=torch.long, device=dev)
            bar = tqdm(total=len(sampler), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                       disable=self.quiet, dynamic_ncols=True)
            t_data = time.perf_counter()
            for x, y in train_batches():
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                data_time += time.perf_counter() - t_data
                p = progress()
                lr = cfg.lr * lr_factor(p, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                coarse_now = coarse_phase and p < cfg.coarse
                if budget and coarse_phase:  # a time-based switch must happen on the same step on every rank
                    coarse_now = ctx.broadcast_flag(coarse_now)
                if coarse_now:
                    # Coarse-to-fine: the same network on 2x-pooled images, ~3x the steps per second;
                    # the labels stay full size and are pooled to the logits' grid as fractions.
                    x = torch.nn.functional.avg_pool2d(x, 2)
                    n_coarse += len(x)
                elif coarse_phase:
                    coarse_phase = False
                    self.log(f"coarse-to-fine: full resolution from epoch {epoch}, step {step}")
                with autocast():
                    logits = fwd(x)
                aux = []
                if isinstance(logits, list):  # deep supervision
                    logits, *aux = logits
                soft = loss_fn.fractions(y, logits.shape[-2:])
                loss = loss_fn.from_fractions(logits, soft)
                # Each coarser head: the same fractions pooled to its grid, at half the previous weight.
                total = loss + sum(0.5 ** (i + 1) * loss_fn.from_fractions(a, pool_to(soft, a.shape[-2:]))
                                   for i, a in enumerate(aux))
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                step += 1
                loss_sum += loss.detach() * len(x)
                n_seen += len(x)
                with torch.no_grad():
                    counts += batch_confusion(logits, y, cfg.mode, k).sum(0)
                bar.update(1)
                if not self.quiet and (step % 20 == 0 or dev.type == "cpu"):  # .item() waits for the GPU
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                # Rank 0 decides: ranks that stopped at different steps would deadlock in DDP's all-reduce.
                if budget and ctx.broadcast_flag(time.perf_counter() - t_start >= budget):
                    break
                t_data = time.perf_counter()
            bar.close()
            stop = ctx.broadcast_flag(bool(budget and time.perf_counter() - t_start >= budget))
            tr = ctx.sum(torch.stack([loss_sum, torch.tensor(float(n_seen), device=dev)]))
            ctx.sum(counts)
            train_dice = summarize(counts.cpu().numpy()[None], self.metric_names)["dice_pooled_mean"] or 0.0
            val_loss, val_metrics = self.validate(net, val_loader, loss_fn, k, autocast)
            epoch_s = time.perf_counter() - t0
            row = {"epoch": epoch, "lr": lr, "train_loss": (tr[0] / tr[1]).item(), "train_dice": train_dice,
                   "val_loss": val_loss, "val_dice": val_metrics["dice_pooled_mean"] or 0.0,
                   "epoch_seconds": round(epoch_s, 3), "data_seconds": round(data_time, 3),
                   "images_per_second": round(n_seen * ctx.world / epoch_s, 2),
                   "coarse_share": round(n_coarse / max(n_seen, 1), 3)}
            history.append(row)
            improved = row["val_dice"] > best
            if improved or coarse_phase:  # patience counts from full resolution on
                best, bad_epochs = max(best, row["val_dice"]), 0
            else:
                bad_epochs += 1
            if ctx.is_main:
                meta = {**meta_base, "epoch": epoch, "history": history, "best_val_dice": best,
                        "val_metrics": val_metrics, "elapsed_seconds": time.perf_counter() - t_start}
                state = model.state_dict()
                if improved:
                    save_checkpoint(self.out / run_dir.BEST, state, mcfg, data.classes, cfg.mode, prep, meta)
                save_checkpoint(self.out / run_dir.LAST, state, mcfg, data.classes, cfg.mode, prep, meta,
                                extra_tensors=_optimizer_tensors(opt))
                self._write_history(history)
                # Short GPU epochs: redraw the figure at most every 30 s here; once more after the loop.
                if time.perf_counter() - last_plot > 30:
                    plot_curves(history, self.out / run_dir.CURVES)
                    last_plot = time.perf_counter()
            self.log(f"epoch {epoch:3d} | lr {lr:.2e} | train loss {row['train_loss']:.4f} dice {train_dice:.4f} | "
                     f"val loss {val_loss:.4f} dice {row['val_dice']:.4f}{' *' if improved else ''} | "
                     f"{epoch_s:.1f}s (data {data_time:.2f}s) {row['images_per_second']:.1f} img/s")
            if cfg.patience and bad_epochs >= cfg.patience:
                self.log(f"early stop: no validation improvement for {cfg.patience} epochs")
                break
            if stop:
                self.log(f"time budget of {cfg.max_minutes} min reached")
                break
        if ctx.is_main and history:
            plot_curves(history, self.out / run_dir.CURVES)
        offsets = None
        if ctx.is_main and cfg.calibrate and history:
            offsets = self.calibrate(model, val_ds, k, autocast, channels_last)
        ctx.barrier()
        summary = {"best_val_dice": best, "epochs_run": epoch, "best_epoch": max(history, key=lambda h: h["val_dice"])["epoch"] if history else None,
                   "train_seconds": round(time.perf_counter() - t_start, 1), "data_summary": data.summary,
                   "parameters": count_parameters(model), "train_config": cfg.to_dict(), "world_size": ctx.world,
                   "device": str(dev), "precision": precision}
        if offsets is not None:
            summary["logit_offsets"] = offsets.values
            summary["val_dice_calibrated"] = offsets.dice_after
        if len(history) >= 2:
            summary["epoch1_data_seconds"] = history[0]["data_seconds"]
            summary["epoch2_data_seconds"] = history[1]["data_seconds"]
        if ctx.is_main:
            (self.out / run_dir.SUMMARY).write_text(json.dumps(summary, indent=2))
        return summary

    @torch.no_grad()
    def calibrate(self, model, val_ds, k: int, autocast, channels_last: bool):
        """Fit per-class logit offsets on validation and fold them into the best
        checkpoint's head bias (training/calibration.py says why)."""
        best_path = self.out / run_dir.BEST
        ckpt = load_checkpoint(best_path)
        model.load_state_dict(ckpt.model_state)
        model.eval()
        logits, targets = [], []
        for x, y in DataLoader(val_ds, batch_size=self.cfg.batch_size):
            x = x.to(self.device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                z = model(x).float()
            # Offsets shift logits, so the fit sees logits on the label grid (bilinear is linear in them).
            if z.shape[-2:] != y.shape[-2:]:
                z = torch.nn.functional.interpolate(z, size=y.shape[-2:], mode="bilinear", align_corners=False)
            logits.append(z.cpu())
            targets.append(y)
        if not logits:
            return None
        off = fit_offsets(torch.cat(logits), torch.cat(targets), self.cfg.mode, k)
        if math.isnan(off.dice_before):  # no lesion in validation: nothing to fit, and NaN is not JSON
            self.log("calibration skipped: the validation split has no lesion pixels")
            return None
        model.head.bias += torch.tensor(off.values, dtype=model.head.bias.dtype, device=model.head.bias.device)
        prev = ckpt.meta.get("logit_offsets") or [0.0] * len(off.values)  # a resumed run may calibrate twice
        total = [round(a + b, 4) for a, b in zip(prev, off.values)]
        meta = {**ckpt.meta, "logit_offsets": total, "val_dice_calibrated": off.dice_after}
        save_checkpoint(best_path, dict(model.state_dict()), ckpt.model_config, ckpt.classes, ckpt.mode,
                        ckpt.preprocessing, meta)
        self.log(f"calibration: per-class logit offsets {off.values} folded into the head of {best_path.name}; "
                 f"validation Dice {off.dice_before:.4f} -> {off.dice_after:.4f} (fitted on validation, "
                 f"so optimistic; the test split is the honest number)")
        return dataclasses.replace(off, values=total)

    @torch.no_grad()
    def validate(self, net, loader, loss_fn, k: int, autocast) -> tuple[float, dict]:
        net.eval()
        dev = self.device
        loss_sum, n = torch.zeros((), device=dev), 0
        counts = []
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            with autocast():
                logits = net(x)
            loss_sum += loss_fn(logits, y) * len(x)
            n += len(x)
            counts.append(batch_confusion(logits, y, self.cfg.mode, k))
        c = torch.cat(counts) if counts else torch.zeros(0, len(self.metric_names), 3, dtype=torch.long, device=dev)
        pooled = self.ctx.sum(c.sum(0, keepdim=True))  # pooled Dice is exact after summing counts
        tot = self.ctx.sum(torch.stack([loss_sum, torch.tensor(float(n), device=dev)]))
        metrics = summarize(pooled.cpu().numpy(), self.metric_names)
        return (tot[0] / tot[1]).item(), metrics

    def _write_history(self, history: list[dict]) -> None:
        tmp = self.out / (run_dir.HISTORY + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            w.writeheader()
            w.writerows(history)
        tmp.replace(self.out / run_dir.HISTORY)
