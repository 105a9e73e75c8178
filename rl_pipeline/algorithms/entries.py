"""The built-in algorithms: GRPO and its published variants, each a registered `Algorithm`.

- grpo: advantages (r - mean) / std per group; -min(rho A, clip(rho, 1-eps_l, 1+eps_h) A) per
  token; no presets (the recipe's settings).
- dr_grpo: advantages r - mean; GRPO's term; each completion's token sum over a constant length.
- dapo: GRPO's advantages and term with clip-higher (eps_high 0.28), token-mean, dynamic sampling.
- gspo: GRPO's advantages; the clipped surrogate on the sequence's ratio (eps 3e-4 / 4e-4).
- cispo: GRPO's advantages; -sg(clip(rho)) A log pi, so every token keeps its gradient; no lower
  clip, token-mean.
- on_policy_distill: a teacher's per-token advantages; GRPO's term; keeps flat groups.
tests/unit/test_algorithms.py checks each against values computed by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl_pipeline.algorithms.distill import distill_advantages
from rl_pipeline.algorithms.grpo import GRPOLossConfig, clipped_surrogate
from rl_pipeline.algorithms.registry import Algorithm, register

_MAX_LOG_RATIO = 20.0  # as in algorithms/grpo.py: exp() of a clamped log-ratio never overflows


@register("grpo")
class GRPO(Algorithm):
    """DeepSeekMath's GRPO with the recipe's knobs: clip range (clip-higher with eps_high > eps_low),
    KL estimator and coefficient, loss aggregation, truncated importance sampling (tis_cap)."""


@register("dr_grpo")
class DrGRPO(Algorithm):
    """Dr. GRPO (Liu et al. 2025): no std scaling of the advantages, and each completion's token sum
    divided by a constant length, so neither group difficulty nor response length biases the update."""

    presets = {"scale_advantages_by_std": False, "loss_aggregation": "seq-mean-token-sum-norm"}


@register("dapo")
class DAPO(Algorithm):
    """DAPO's settings (Yu et al. 2025) as a preset: clip-higher (eps_high 0.28), token-level loss,
    dynamic sampling (flat groups dropped, up to two refill rounds), truncated completions masked
    (overlong filtering), no KL term."""

    presets = {"eps_low": 0.2, "eps_high": 0.28, "loss_aggregation": "token-mean", "drop_flat_groups": True,
               "max_refill_rounds": 2, "mask_truncated": True, "kl_coef": 0.0}


@register("gspo")
class GSPO(Algorithm):
    """GSPO (Zheng et al. 2025): the importance ratio of a whole sequence,
    s_i = exp(mean_t (log pi(o_it) - log pi_old(o_it))), clipped to [1 - eps_low, 1 + eps_high]
    (the paper's 3e-4 / 4e-4), in the GSPO-token form: every token of o_i carries the value s_i with
    the gradient s_i * grad log pi(o_it), so with the per-sequence mean aggregation the gradient is
    the paper's s_i A_i * mean_t grad log pi(o_it)."""

    presets = {"eps_low": 3e-4, "eps_high": 4e-4, "loss_aggregation": "seq-mean-token-mean"}

    def token_loss(self, log_ratio: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        valid = mask.to(log_ratio.dtype)
        sequence = (log_ratio * valid).sum(dim=-1, keepdim=True) / valid.sum(dim=-1, keepdim=True).clamp(min=1)
        # value: the sequence's log-ratio on every token; gradient: that token's log pi
        log_ratio_seq = sequence.detach() + log_ratio - log_ratio.detach()
        return clipped_surrogate(log_ratio_seq, advantages, self.settings.eps_low, self.settings.eps_high)


@register("cispo")
class CISPO(Algorithm):
    """CISPO (MiniMax-M1, 2025): the importance weight rho is clipped and detached, and every token keeps
    its gradient: per token -sg(clip(rho, 1 - eps_low, 1 + eps_high)) * A * log pi. Written as
    -sg(w A) * pi / sg(pi), whose value is -w A (comparable with GRPO's loss) and whose gradient is
    CISPO's -w A grad log pi. No lower clip (eps_low 1), eps_high 0.28, token-level loss."""

    presets = {"eps_low": 1.0, "eps_high": 0.28, "loss_aggregation": "token-mean"}

    def token_loss(self, log_ratio: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        low, high = 1.0 - self.settings.eps_low, 1.0 + self.settings.eps_high
        ratio = torch.exp(log_ratio.detach().clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
        weight = ratio.clamp(low, high)
        loss = -(weight * advantages).detach() * torch.exp(log_ratio - log_ratio.detach())
        return loss, ratio < low, ratio > high


@register("on_policy_distill")
class OnPolicyDistill(Algorithm):
    """On-policy distillation (recipe `teacher:`): a frozen teacher scores every sampled token, and each
    token's advantage is reward_weight * A_group - coef * (log pi_student - log pi_teacher), the
    negative reverse-KL estimate at the sampled token (algorithms/distill.py); GRPO's surrogate on top.
    Groups with equal rewards still teach. The recipe's teacher.coef and teacher.reward_weight are the
    kwargs."""

    needs_teacher = True
    keeps_flat_groups = True

    def __init__(self, settings: GRPOLossConfig = GRPOLossConfig(), coef: float = 1.0,
                 reward_weight: float = 0.0) -> None:
        super().__init__(settings)
        self.coef, self.reward_weight = coef, reward_weight

    def token_advantages(self, advantage: float, sampler_logprobs: list[float],
                         teacher_logprobs: list[float] | None) -> list[float]:
        if teacher_logprobs is None:
            raise ValueError("on_policy_distill needs the teacher's logprobs of every sampled token")
        return distill_advantages(sampler_logprobs, teacher_logprobs, advantage, self.coef, self.reward_weight)
