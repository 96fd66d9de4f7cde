"""The run-length and learning-rate schedule both trainers share (``duplex train``, ``duplex codec train``).

A run ends by steps or by a wall-clock budget, whichever comes first, and the learning rate follows the
same measure of progress, so a run cut short by its budget still ends at the low end of its schedule.
"""
from __future__ import annotations

import math


def run_progress(step: int, steps: int, seconds: float = 0.0, max_seconds: float = 0.0) -> float:
    """How far the run is, 0..1: by steps, or by the wall-clock budget (``max_seconds`` > 0) when that is
    nearer its end."""
    done = step / max(1, steps)
    if max_seconds > 0:
        done = max(done, seconds / max_seconds)
    return min(1.0, done)


def warmup_cosine(step: int, progress: float, *, peak: float, floor: float, warmup: int, steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine down to ``floor`` over the rest of the
    run's ``progress`` (the warm-up's share of the run counts as its first ``warmup / steps``)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    start = warmup / max(1, steps)
    t = min(1.0, max(0.0, (progress - start) / max(1e-9, 1 - start)))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t))
