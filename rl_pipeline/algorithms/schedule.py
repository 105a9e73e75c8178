"""Learning-rate schedules: linear warmup, then cosine or linear decay to a floor, or constant.

`lr_at(step)` is pure so the schedule is unit-tested to the last digit; the trainer wraps it in
a torch LambdaLR (multiplier = lr_at(step) / peak lr).
"""

from __future__ import annotations

import math


def lr_at(step: int, peak: float, floor: float, warmup_steps: int, total_steps: int, kind: str) -> float:
    """The learning rate used for optimiser step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    raise ValueError(f"unknown schedule '{kind}'; choose cosine, linear or constant")


def lambda_for(peak: float, floor: float, warmup_steps: int, total_steps: int, kind: str):
    """Multiplier function for torch.optim.lr_scheduler.LambdaLR with base lr = peak."""
    return lambda step: lr_at(step, peak, floor, warmup_steps, total_steps, kind) / peak
