"""Cores this process may use (its affinity mask, not the machine's total): a
container or `taskset` often grants fewer than os.cpu_count() reports. Kept free
of heavy imports so any stage can ask."""

from __future__ import annotations

import os


def cpu_threads() -> int:
    return max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 1)
