"""Reward-model loss: Bradley-Terry over (chosen, rejected) pairs, as a pair mean over the GLOBAL batch.

Shapes: `r_chosen`, `r_rejected` are [P] scalar rewards of the P pairs of one micro-batch;
`margin` (optional) is [P]. Every rank and accumulation micro-batch divides its summed loss by
the number of pairs in the whole global batch, so the micro-batch losses sum to the global pair
mean whatever the rank count (the convention of algorithms/sft.py).

    bt_t     = -log sigmoid(r_c - r_r - m)          Bradley-Terry with a margin m (Llama 2's RM)
    center_t = coef * (r_c + r_r)^2                 reward centering (TRL's center_rewards_coefficient)
    loss     = sum_t (bt_t + center_t) / global_pairs
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_losses(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                         margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair -log sigmoid(r_c - r_r - margin) (logsigmoid keeps large gaps finite)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def centering_penalties(r_chosen: torch.Tensor, r_rejected: torch.Tensor, coef: float) -> torch.Tensor:
    """Per-pair coef * (r_c + r_r)^2: pulls the mean reward of a pair towards 0."""
    return coef * (r_chosen + r_rejected) ** 2


def rm_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, global_pairs: int,
            margin: torch.Tensor | None = None, center_coef: float = 0.0) -> torch.Tensor:
    """This micro-batch's share of the global pair-mean loss (Bradley-Terry + centering)."""
    if global_pairs <= 0:
        raise ValueError("global batch has no pairs")
    per_pair = bradley_terry_losses(r_chosen, r_rejected, margin)
    if center_coef:
        per_pair = per_pair + centering_penalties(r_chosen, r_rejected, center_coef)
    return per_pair.sum() / global_pairs


def pair_counts(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """Sums a caller divides by the pair count: pairs ranked right (ties count as wrong), the
    reward margin r_c - r_r, and the reward itself (both sides)."""
    return {
        "correct": float((r_chosen > r_rejected).sum()),
        "margin_sum": float((r_chosen - r_rejected).sum()),
        "reward_sum": float((r_chosen + r_rejected).sum()) / 2,
        "pairs": int(r_chosen.numel()),
    }
