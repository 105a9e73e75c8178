"""SFT loss: masked next-token cross-entropy as a token mean over the GLOBAL batch.

Every rank and every gradient-accumulation micro-batch divides its summed loss by the number of
target tokens in the whole global batch (all ranks, all micro-batches), so the sum of the
micro-batch losses is exactly the global token mean. The common alternative, the mean of
per-micro-batch means, over-weights tokens of short micro-batches; tests/unit pin the difference.
"""

from __future__ import annotations

import torch


def count_target_tokens(loss_mask: torch.Tensor) -> int:
    """Targets of a [B, T] loss mask under the next-token shift (position 0 is never a target)."""
    return int(loss_mask[:, 1:].sum())


def masked_nll_sum(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of -log p over target tokens. logprobs: [B, T-1] (shifted); loss_mask: [B, T]."""
    return -(logprobs * loss_mask[:, 1:].to(logprobs.dtype)).sum()


def sft_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor, global_target_tokens: int) -> torch.Tensor:
    """This micro-batch's share of the global token-mean cross-entropy."""
    if global_target_tokens <= 0:
        raise ValueError("global batch has no target tokens")
    return masked_nll_sum(logprobs, loss_mask) / global_target_tokens
