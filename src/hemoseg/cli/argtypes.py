"""argparse types that refuse impossible numbers before any work starts, so a
bad flag never leaves a half-made run folder behind."""

from __future__ import annotations

import argparse


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
