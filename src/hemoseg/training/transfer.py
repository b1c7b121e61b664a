"""Start a run from another run's weights (`hemoseg train --init RUN`).

No head-CT weights can be downloaded here, but a model trained on `hemoseg
synth` data has already learned skull, ventricles and the look of each kind of
bleed. A small real dataset (bhsd-mini-coco has 24 training slices, five of
them subdural) then only has to adapt it instead of learning everything from
a handful of examples.

Output channels are matched by class name, so a class the source model knew
starts from its learned detector and any other class starts fresh. Between
softmax and sigmoid heads the logits are converted: a sigmoid logit for class
c is the softmax's z_c - z_background, and a softmax row is the sigmoid logit
against a zero background.
"""

from __future__ import annotations

import torch

from hemoseg.errors import HemosegError

BACKGROUND = "background"
OUTPUT_LAYERS = ("head.", "aux_heads.")  # the 1x1 convolutions whose channels are classes


def channel_names(mode: str, classes: list[str]) -> list[str]:
    """What each output channel of a head means, by class name."""
    if mode == "multiclass":
        return [BACKGROUND, *classes]
    if mode == "binary":
        return [classes[0] if len(classes) == 1 else "lesion"]
    return list(classes)


def channel_map(src_mode: str, src_classes: list[str], dst_mode: str,
                dst_classes: list[str]) -> list[list[tuple[int, float]]]:
    """For each destination channel, the source channels (index, coefficient)
    whose weighted sum initialises it; empty: no counterpart, keep the fresh init."""
    src = {name: i for i, name in enumerate(channel_names(src_mode, src_classes))}
    out: list[list[tuple[int, float]]] = []
    for name in channel_names(dst_mode, dst_classes):
        if name not in src:
            out.append([])
        elif src_mode == "multiclass" and dst_mode != "multiclass":
            out.append([(src[name], 1.0), (src[BACKGROUND], -1.0)])
        else:
            out.append([(src[name], 1.0)])
    return out


def load_init(model: torch.nn.Module, ckpt, dst_mode: str, dst_classes: list[str]) -> list[str]:
    """Copy `ckpt`'s weights into `model`; the class names that kept a learned detector.

    Everything but the output layers must have the same shape (the CLI takes the
    architecture from the source run); a mismatch is an error, not a silent
    partial load."""
    state = model.state_dict()
    src = ckpt.model_state
    mapping = channel_map(ckpt.mode, list(ckpt.classes.names), dst_mode, dst_classes)
    new = {}
    for key, value in state.items():
        if key.startswith(OUTPUT_LAYERS):
            if key in src:
                new[key] = _mapped(value, src[key], mapping)
            continue
        if key not in src or src[key].shape != value.shape:
            got = "missing" if key not in src else tuple(src[key].shape)
            raise HemosegError(f"--init checkpoint does not fit this network: {key} is {got}, "
                               f"needs {tuple(value.shape)}")
        new[key] = src[key]
    model.load_state_dict({**state, **new})
    names = channel_names(dst_mode, dst_classes)
    return [n for n, m in zip(names, mapping) if m and n != BACKGROUND]


def _mapped(fresh: torch.Tensor, learned: torch.Tensor, mapping) -> torch.Tensor:
    out = fresh.clone()
    for j, sources in enumerate(mapping):
        if sources:
            out[j] = sum(c * learned[i] for i, c in sources).to(out.dtype)
    return out
