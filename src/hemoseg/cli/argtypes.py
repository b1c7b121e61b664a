"""argparse types that refuse impossible numbers before any work starts, so a
bad flag never leaves a half-made run folder behind."""

from __future__ import annotations

import argparse

from hemoseg.errors import HemosegError


def _bounded(kind, ok, words: str):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return v
    return parse


def positive(kind):
    return _bounded(kind, lambda v: v > 0, "positive")


def non_negative(kind):
    return _bounded(kind, lambda v: v >= 0, "zero or more")


# A share of something that must keep a remainder (a share of 1 would leave nothing after it).
unit_interval = _bounded(float, lambda v: 0 <= v < 1, "at least 0 and below 1")


def parse_classes(spec: str) -> dict[int, str]:
    classes = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise HemosegError(f"--classes: '{part}' is not VALUE=NAME (e.g. '1=Epidural hemorrhage')")
        if int(value) in classes:
            raise HemosegError(f"--classes: label value {int(value)} is named twice")
        classes[int(value)] = name.strip()
    if len(set(classes.values())) != len(classes):
        raise HemosegError("--classes: two label values have the same name")
    return classes
