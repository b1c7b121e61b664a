"""`hemoseg train DATASET --out RUN`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from hemoseg.cli.argtypes import non_negative, positive, unit_interval
from hemoseg.errors import HemosegError
from hemoseg.models.config import SIZES


def register(sub) -> None:
    from hemoseg.data.augment import POLICIES
    from hemoseg.training.config import PRESETS

    p = sub.add_parser("train", help="train an Attention U-Net on a COCO export",
                       description="Train on a Roboflow COCO export. Selects the best epoch by validation "
                                   "Dice; never looks at the test split. Multi-GPU: run under torchrun or use --gpus.")
    p.add_argument("dataset", nargs="?", help="dataset folder (train/valid/test) or COCO JSON; optional with --resume")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run from its last epoch")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    p.add_argument("--preset", choices=sorted(PRESETS), help="recipe to start from (default: default)")
    p.add_argument("--mode", choices=["binary", "multiclass", "multilabel"])
    p.add_argument("--model-size", choices=sorted(SIZES), help="width preset: " +
                   ", ".join(f"{k}={v}" for k, v in SIZES.items()))
    p.add_argument("--width", type=positive(int))
    p.add_argument("--depth", type=positive(int), help="encoder levels (default 5, as in the paper)")
    p.add_argument("--no-attention", dest="attention", action="store_const", const=False,
                   help="plain U-Net baseline (same network, gates off)")
    p.add_argument("--init", type=Path, metavar="RUN",
                   help="start from this run's weights (transfer learning; e.g. a model trained on "
                        "`hemoseg synth` data). Classes are matched by name; the architecture follows RUN")
    p.add_argument("--epochs", type=positive(int))
    p.add_argument("--batch-size", type=positive(int))
    p.add_argument("--steps-per-epoch", type=positive(int))
    p.add_argument("--lr", type=positive(float))
    p.add_argument("--size", type=positive(int), help="input side length (default preset 512; paper 256)")
    p.add_argument("--patch", type=positive(int), help="train on lesion-centred crops of this side (fully convolutional "
                   "inference still sees whole images)")
    p.add_argument("--stem", type=positive(int),
                   help="the network runs at size/N (average-pooled input) and learns the class fractions "
                        "of the size-N labels, so thin bleeds keep sub-pixel borders (default preset 2; paper 1)")
    p.add_argument("--no-class-weighting", dest="class_weighting", action="store_const", const=False,
                   help="multiclass: plain CE instead of CE weighted by inverse-sqrt class pixel frequency "
                        "(the default preset weights; see docs/recipe.md)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_const", const=False,
                   help="skip fitting per-class logit offsets on validation after training (default preset fits them)")
    p.add_argument("--augmentation", choices=sorted(POLICIES),
                   help="training augmentation: the preset's by default; 'flip' (left-right only) suits short "
                        "budgets (docs/recipe.md, exp. 26)")
    p.add_argument("--coarse", type=unit_interval, metavar="SHARE",
                   help="train the first SHARE of the schedule on 2x-pooled images (about 3x the steps per "
                        "second), then at full resolution (default preset 0.4, paper 0; docs/recipe.md, exp. 31)")
    p.add_argument("--max-minutes", type=positive(float), help="wall-clock budget; the LR schedule anneals to fit it")
    p.add_argument("--deep-supervision", type=non_negative(int), metavar="N",
                   help="train extra heads on the N decoder levels below the output (0: off)")
    p.add_argument("--patience", type=positive(int), help="early stopping patience in epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=non_negative(int), help="augment per sample (albumentations) in N loader processes; default on CUDA: batched on the GPU")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--fp32", dest="amp", action="store_const", const=False,
                   help="full float32 (default: bf16 autocast on CUDA; on a CPU with bf16 units, whichever a few timed steps at the start say is faster)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--gpus", type=positive(int), help="launch N processes with torchrun (DistributedDataParallel)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run, flag_names={a.dest: a.option_strings[-1] for a in p._actions if a.option_strings})


def run(args: argparse.Namespace) -> int:
    from hemoseg.training.config import PRESETS
    from hemoseg.training.trainer import Trainer

    if args.gpus and args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args.gpus, args.argv)
    if args.resume:
        _refuse_recipe_flags(args)
        out = args.resume
        dataset = args.dataset
        if dataset is None:
            from hemoseg.training.checkpoint import load_checkpoint
            dataset = load_checkpoint(out / "last.safetensors").meta["data_summary"]["dataset"]
    else:
        if not args.dataset or not args.out:
            raise HemosegError("give a DATASET and --out RUN (or --resume RUN)")
        out, dataset = args.out, args.dataset
    width = args.width or (SIZES[args.model_size] if args.model_size else None)
    depth, attention = args.depth, args.attention
    if args.init and not args.resume:
        width, depth, attention = _architecture_of(args.init, width, depth, attention)
    cfg = PRESETS[args.preset or "default"].override(
        mode=args.mode, width=width, depth=depth, attention=attention, epochs=args.epochs, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch, lr=args.lr, size=args.size, patch=args.patch, max_minutes=args.max_minutes,
        patience=args.patience, seed=args.seed, workers=args.workers, compile=args.compile, amp=args.amp,
        augmentation=args.augmentation, class_weighting=args.class_weighting, calibrate=args.calibrate, stem=args.stem,
        deep_supervision=args.deep_supervision, coarse=args.coarse,
        init=str(args.init) if args.init and not args.resume else None)
    summary = Trainer(dataset, out, cfg, resume=bool(args.resume), force=args.force, device=args.device,
                      quiet=args.quiet).run()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best validation Dice {summary['best_val_dice']:.4f} at epoch {summary['best_epoch']} "
              f"({summary['train_seconds']:.0f} s)"
              + (f", {summary['val_dice_calibrated']:.4f} after calibration" if "val_dice_calibrated" in summary else "")
              + f"; run folder: {out}")
    return 0


# The flags a resumed run may be given: it takes everything else from its checkpoint, so that it
# goes on as it started (a flag it would silently ignore is worse than an error).
_RESUME_FLAGS = {"out", "resume", "force", "epochs", "device", "gpus", "quiet"}


def _refuse_recipe_flags(args: argparse.Namespace) -> None:
    given = [flag for dest, flag in args.flag_names.items()
             if dest not in _RESUME_FLAGS and getattr(args, dest, None) is not None]
    if given:
        flags = ", ".join(sorted(given))
        raise HemosegError(f"{flags}: a resumed run keeps the recipe it started with (only --epochs may change)",
                           args.resume)


def _architecture_of(init: Path, width, depth, attention):
    """--init fixes the network's shape; a flag that contradicts it is an error, not ignored."""
    from hemoseg.training.checkpoint import load_checkpoint

    mc = load_checkpoint(init, weights=False).model_config
    for flag, given, theirs in (("--width", width, mc.width), ("--depth", depth, mc.depth),
                                ("--no-attention", attention, mc.attention)):
        if given is not None and given != theirs:
            raise HemosegError(f"{flag} contradicts the --init model (width {mc.width}, depth {mc.depth}, "
                               f"attention {'on' if mc.attention else 'off'})", init)
    return mc.width, mc.depth, mc.attention


def _launch_torchrun(n: int, argv: list[str]) -> int:
    """Re-run this exact command under torchrun with N processes on this node. The
    children see WORLD_SIZE, so their own --gpus does not launch again."""
    # This interpreter's torchrun: a `torchrun` found on PATH may belong to another Python.
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={n}", "-m", "hemoseg", *argv])
