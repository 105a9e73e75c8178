"""GRPO math: group advantages, the clipped surrogate, KL estimators, loss aggregation.

Pure torch: no Ray, no I/O, so every number here is unit-tested by hand.

Shapes: N sequences (N = B prompts * G samples, laid out group-contiguous: the G samples of a
prompt are adjacent), T token positions of the completion. Per-token tensors are [N, T];
`mask` is [N, T], true on completion tokens that count in the loss.

Global normalisation. Every aggregation is a mean over the WHOLE batch (all data-parallel
ranks, all gradient-accumulation micro-batches), never a mean of per-micro-batch means.
The caller passes the batch's global counts as a `LossNormaliser`: the GRPO driver counts
them from the samples before it splits the batch (`GRPOBatch.mini_batches` in batch.py: the
trained completions' sampled tokens and their number) and ships the same counts to every rank
with its micro-batches, so no rank needs an all-reduce; `LossNormaliser.of(mask)` counts a
mask that is the whole batch (one process: tests, benches). Each micro-batch loss is then a
SUM divided by that global count, so the full-batch loss is the SUM of every micro-batch loss
on every rank. Completions kept out of the loss (truncated ones under grpo.mask_truncated,
tool-result tokens) are out of the counts and of `mask` alike. Gradients must therefore be SUMMED too: DDP and
DeepSpeed AVERAGE gradients across ranks (divide by world size), and DeepSpeed's
`engine.backward` also divides by gradient_accumulation_steps (scale_wrt_gas=True), so
multiply the loss by world_size (and by gradient_accumulation_steps under DeepSpeed) before
backward. Every metric returned by `grpo_policy_loss` sums the same way to its global value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

_MAX_LOG_RATIO = 20.0  # log-ratios are clamped here before exp(): exp(20) ~ 4.9e8, no inf


# ---------------------------------------------------------------- advantages and groups


def _as_groups(rewards: Tensor, group_size: int) -> Tensor:
    """View group-contiguous rewards ([B*G] or [B, G]) as [B, G]; check the layout."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    if rewards.dim() == 2 and rewards.shape[1] == group_size:
        return rewards
    if rewards.dim() == 1 and rewards.numel() % group_size == 0:
        return rewards.view(-1, group_size)
    raise ValueError(
        f"rewards of shape {tuple(rewards.shape)} are not [B*G] or [B, G] with G={group_size}"
    )


def group_advantages(
    rewards: Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps); same shape as `rewards`.

    `rewards` is [B*G] (group-contiguous) or [B, G]. The std is the UNBIASED sample std
    (Bessel's correction, divide by G-1), as torch.std, TRL and veRL compute it; rewards
    [1, 0, 0, 1] give +-0.866, not +-1. `scale_by_std=False` gives Dr. GRPO's r_i - mean.
    A flat group (all rewards equal) gets zero advantages either way.
    """
    if not rewards.is_floating_point():
        rewards = rewards.float()
    groups = _as_groups(rewards, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (groups.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centred.reshape(rewards.shape)


def flat_groups(rewards: Tensor, group_size: int, *, atol: float = 0.0) -> Tensor:
    """[B] bool: true for groups whose rewards are all equal (max - min <= atol).

    Such groups have zero advantage and no learning signal; with dynamic sampling the driver
    drops them and refills the batch. Per-sample keep mask:
    `(~flat_groups(r, G)).repeat_interleave(G)`.
    """
    groups = _as_groups(rewards, group_size)
    spread = groups.max(dim=1).values - groups.min(dim=1).values
    return spread <= atol


# ---------------------------------------------------------------- normalisers


@dataclass(frozen=True)
class LossNormaliser:
    """Global counts over the whole batch (all ranks, all micro-batches).

    tokens: valid tokens; sequences: sequences with at least one valid token.
    """

    tokens: float
    sequences: float

    @classmethod
    def of(cls, mask: Tensor) -> "LossNormaliser":
        """The counts of `mask` [N, T] when it is the whole batch (one rank, one micro-batch)."""
        mask = mask.bool()
        return cls(tokens=float(mask.sum()), sequences=float(mask.any(dim=-1).sum()))


# ---------------------------------------------------------------- KL estimators
#
# Each estimator k(logp, ref_logp) is evaluated on tokens x sampled from pi (on-policy), and the
# loss backpropagates through logp only (not through the sampling). With d = logp - ref_logp and
# E over x ~ pi:
#
#   name  value                    E[value]             E[gradient of the loss]
#   k1    d                        KL(pi || ref)        E[grad logp] = 0: no pull towards ref
#   k2    d^2 / 2                  biased, >= 0         E[d grad logp] = grad KL(pi || ref)
#   k3    e^-d + d - 1             KL(pi || ref)        E[(1 - e^-d) grad logp] = grad KL(ref || pi)
#   k3+   k3's value, k2's grad    KL(pi || ref)        grad KL(pi || ref)
#
# (grad KL(pi || ref) = sum_x grad pi(x) (log pi(x) - log ref(x)) + sum_x grad pi(x)
#  = E[d grad logp] + 0.) So k1 is only a metric, k3 (the seeds' GRPO) pulls towards the reverse
# KL, and k2 or k3+ minimise the KL that the value reports; k3+ is the default: its logged value
# is the unbiased k3 and its gradient that of KL(pi || ref). tests/unit/test_grpo_algorithms.py
# checks every row of the table by Monte Carlo on a small categorical distribution.


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - ref_logp: unbiased for KL(pi || ref), high variance; expected gradient 0."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2: biased, >= 0; expected gradient that of KL(pi || ref)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1: the seeds' estimator, unbiased for KL(pi || ref),
    >= 0; its expected gradient is that of KL(ref || pi)."""
    delta = (ref_logp - logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(delta) - delta - 1.0


def kl_k3_value_k2_grad(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3+ : k3's value (unbiased for KL(pi || ref)) with k2's gradient (that of KL(pi || ref)),
    by the straight-through form k2 + (k3 - k2).detach()."""
    k2 = kl_k2(logp, ref_logp)
    return k2 + (kl_k3(logp, ref_logp) - k2).detach()


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "k3+": kl_k3_value_k2_grad,
}


# ---------------------------------------------------------------- aggregations


def _masked(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """loss_mat with masked positions set to exactly 0 (even if they held nan or inf)."""
    return torch.where(mask, loss_mat, torch.zeros_like(loss_mat))


def agg_token_mean(
    loss_mat: Tensor, mask: Tensor, norm: LossNormaliser, max_length: int | None
) -> Tensor:
    """DAPO: sum of every valid token's loss / global number of valid tokens."""
    return _masked(loss_mat, mask).sum() / max(norm.tokens, 1.0)


def agg_seq_mean_token_mean(
    loss_mat: Tensor, mask: Tensor, norm: LossNormaliser, max_length: int | None
) -> Tensor:
    """Seeds' GRPO: each sequence's mean over its own tokens, summed / global sequences."""
    per_seq = _masked(loss_mat, mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_seq.sum() / max(norm.sequences, 1.0)


def agg_seq_mean_token_sum_norm(
    loss_mat: Tensor, mask: Tensor, norm: LossNormaliser, max_length: int | None
) -> Tensor:
    """Dr. GRPO: each sequence's token SUM / constant max_length, summed / global sequences."""
    if max_length is None:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_length_norm")
    per_seq = _masked(loss_mat, mask).sum(dim=-1) / float(max_length)
    return per_seq.sum() / max(norm.sequences, 1.0)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, LossNormaliser, int | None], Tensor]] = {
    "seq-mean-token-mean": agg_seq_mean_token_mean,
    "token-mean": agg_token_mean,
    "seq-mean-token-sum-norm": agg_seq_mean_token_sum_norm,
}


# ---------------------------------------------------------------- the policy loss


@dataclass(frozen=True)
class GRPOLossConfig:
    """Knobs of `grpo_policy_loss`; defaults are the seeds' GRPO without the KL term."""

    eps_low: float = 0.2  # ratio clipped below at 1 - eps_low (1: no lower clip)
    eps_high: float = 0.2  # ... and above at 1 + eps_high (DAPO: 0.28)
    beta: float = 0.0  # KL coefficient; 0 means no reference model is needed
    kl_estimator: str = "k3+"  # a key of KL_ESTIMATORS (see the table above them)
    aggregation: str = "seq-mean-token-mean"  # a key of AGGREGATIONS
    max_length_norm: int | None = None  # Dr. GRPO's constant; required by seq-mean-token-sum-norm
    tis_cap: float | None = None  # truncated importance sampling cap; None disables it
    # Masked importance sampling (icepop): a token (or sequence, see is_level) whose behaviour ratio
    # pi_old / pi_sampler leaves [low, high] is dropped from the loss; inside, it is weighted by it.
    mis_band: tuple[float, float] | None = None
    is_level: str = "token"  # a key of IS_LEVELS: the ratio the correction reads, per token or sequence
    scale_advantages_by_std: bool = True  # A = (r - mean) / std; False: Dr. GRPO's r - mean

    def __post_init__(self) -> None:
        """Reject unknown names and out-of-range values with the field's name."""
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator {self.kl_estimator!r} is not one of {sorted(KL_ESTIMATORS)}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation {self.aggregation!r} is not one of {sorted(AGGREGATIONS)}"
            )
        if not (0.0 <= self.eps_low <= 1.0) or self.eps_high < 0.0:
            raise ValueError(
                f"need 0 <= eps_low <= 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}"
            )
        if self.beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.aggregation == "seq-mean-token-sum-norm" and not self.max_length_norm:
            raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_length_norm > 0")
        if self.tis_cap is not None and self.tis_cap <= 0.0:
            raise ValueError(f"tis_cap must be > 0 or None, got {self.tis_cap}")
        if self.mis_band is not None and not (len(self.mis_band) == 2 and 0.0 <= self.mis_band[0] < 1.0
                                              < self.mis_band[1]):
            raise ValueError(f"mis_band must be [low, high] with 0 <= low < 1 < high, got {self.mis_band}")
        if self.is_level not in IS_LEVELS:
            raise ValueError(f"is_level {self.is_level!r} is not one of {sorted(IS_LEVELS)}")

    @property
    def corrects_sampler(self) -> bool:
        """True when the loss reads the sampler's logprobs (a TIS cap or an MIS band)."""
        return self.tis_cap is not None or self.mis_band is not None


def clipped_surrogate(
    log_ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A), rho = exp(log_ratio).

    Returns (loss [N, T], clipped_low, clipped_high): the bool masks mark tokens where the
    clipped branch wins strictly, so their gradient is zero (A < 0 with rho < 1-eps_low;
    A > 0 with rho > 1+eps_high).
    """
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    clipped_low = (advantages < 0) & (ratio < 1.0 - eps_low)
    clipped_high = (advantages > 0) & (ratio > 1.0 + eps_high)
    return -torch.minimum(unclipped, clipped), clipped_low, clipped_high


def _sequence_sum(log_w: Tensor, mask: Tensor) -> Tensor:
    return (log_w * mask).sum(dim=-1, keepdim=True).expand_as(log_w)


def _sequence_mean(log_w: Tensor, mask: Tensor) -> Tensor:
    return _sequence_sum(log_w, mask) / mask.sum(dim=-1, keepdim=True).clamp(min=1)


# Which behaviour log-ratio log(pi_old / pi_sampler) a token's correction reads: its own, its
# sequence's (the sum: the sequence's true importance ratio), or the sequence's per-token mean
# (the geometric mean of the token ratios: a ratio of one typical token, length-independent).
IS_LEVELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token": lambda log_w, mask: log_w,
    "sequence": _sequence_sum,
    "geometric": _sequence_mean,
}


def behaviour_correction(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor,
                         config: GRPOLossConfig) -> tuple[Tensor, Tensor]:
    """The off-policy correction between the policy that sampled (the engines, possibly some
    versions behind) and pi_old: per token a detached weight and a keep mask. With an MIS band,
    tokens (or whole sequences, by is_level) whose ratio leaves [low, high] get weight 0 and
    keep False; with a TIS cap, weights are truncated at it. Masked positions read ratio 1."""
    log_w = torch.where(mask, (old_logp - sampler_logp).detach(), torch.zeros_like(old_logp))
    log_w = IS_LEVELS[config.is_level](log_w, mask.to(log_w.dtype)).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    weights = torch.exp(log_w)
    keep = torch.ones_like(mask)
    if config.mis_band is not None:
        low, high = config.mis_band
        keep = (weights >= low) & (weights <= high)
        weights = torch.where(keep, weights, torch.zeros_like(weights))
    if config.tis_cap is not None:
        weights = weights.clamp(max=config.tis_cap)
    return weights, keep


# A policy term per token: (log_ratio [N, T] = logp - old_logp with the gradient through logp,
# advantages [N, T], mask [N, T], config) -> (loss [N, T], clipped_low, clipped_high), the bool
# masks marking tokens whose ratio left the clip range below / above (metrics only).
TokenLoss = Callable[[Tensor, Tensor, Tensor, "GRPOLossConfig"], tuple[Tensor, Tensor, Tensor]]


def clipped_surrogate_loss(log_ratio: Tensor, advantages: Tensor, mask: Tensor,
                           config: GRPOLossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """GRPO's (PPO's) per-token term, the `TokenLoss` of the GRPO entry."""
    return clipped_surrogate(log_ratio, advantages, config.eps_low, config.eps_high)


def grpo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                     normaliser: LossNormaliser, config: GRPOLossConfig = GRPOLossConfig(),
                     ref_logp: Tensor | None = None, sampler_logp: Tensor | None = None,
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """`policy_loss` with GRPO's clipped surrogate (see there)."""
    return policy_loss(clipped_surrogate_loss, logp, old_logp, advantages, mask, normaliser=normaliser,
                       config=config, ref_logp=ref_logp, sampler_logp=sampler_logp)


def policy_loss(
    token_loss: TokenLoss,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    normaliser: LossNormaliser,
    config: GRPOLossConfig = GRPOLossConfig(),
    ref_logp: Tensor | None = None,
    sampler_logp: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """This micro-batch's share of a policy-gradient loss, and its share of every metric.

    logp [N, T] (requires grad), old_logp / ref_logp / sampler_logp [N, T], advantages [N]
    (one per sequence) or [N, T], mask [N, T]. Per token:
    tis_w * token_loss + beta * KL_t (GRPO's token_loss: -min(rho*A, clip(rho)*A)), aggregated by
    `config.aggregation` with the GLOBAL `normaliser` (see the module docstring). Masked positions may hold anything.
    Metrics (detached scalars) sum over micro-batches and ranks to their global value:
    loss/* in the loss's aggregation, policy/* as means over valid tokens.
    """
    mask = mask.bool()
    if config.beta > 0.0 and ref_logp is None:
        raise ValueError(f"beta={config.beta} needs ref_logp (the reference model's logprobs)")
    if config.corrects_sampler and sampler_logp is None:
        raise ValueError(f"tis_cap={config.tis_cap} / mis_band={config.mis_band} needs sampler_logp "
                         "(the engine's logprobs)")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    zero = torch.zeros_like(logp)
    logp, old_logp = torch.where(mask, logp, zero), torch.where(mask, old_logp, zero).detach()
    log_ratio = logp - old_logp

    pg_mat, clip_low, clip_high = token_loss(log_ratio, advantages.expand_as(logp), mask, config)
    aggregate = AGGREGATIONS[config.aggregation]

    def token_mean(values: Tensor) -> Tensor:
        return agg_token_mean(values.detach().to(logp.dtype), mask, normaliser, None)

    metrics: dict[str, Tensor] = {
        "policy/clip_frac_low": token_mean(clip_low),
        "policy/clip_frac_high": token_mean(clip_high),
        "policy/clip_frac": token_mean(clip_low | clip_high),
        "policy/ratio_mean": token_mean(torch.exp(log_ratio.clamp(max=_MAX_LOG_RATIO))),
        "policy/kl_old": token_mean(kl_k3(logp, old_logp)),
    }
    if config.corrects_sampler:
        sampler_logp = torch.where(mask, sampler_logp, zero)
        weights, keep = behaviour_correction(old_logp, sampler_logp, mask, config)
        pg_mat = pg_mat * weights
        metrics["policy/tis_weight_mean"] = token_mean(weights)
        # k3 estimate of KL(sampler || pi_old) on the sampled tokens: how far behind the sampler was
        metrics["offpolicy/kl_behaviour"] = token_mean(kl_k3(sampler_logp, old_logp))
        if config.tis_cap is not None:
            metrics["policy/tis_truncated_frac"] = token_mean(weights >= config.tis_cap)  # at the cap
        if config.mis_band is not None:
            metrics["offpolicy/masked_frac"] = token_mean(~keep)
    loss = aggregate(pg_mat, mask, normaliser, config.max_length_norm)
    metrics["loss/policy"] = loss.detach()
    if ref_logp is not None:
        ref_logp = torch.where(mask, ref_logp, zero).detach()
        kl_mat = KL_ESTIMATORS[config.kl_estimator](logp, ref_logp)
        kl_loss = aggregate(kl_mat, mask, normaliser, config.max_length_norm)
        metrics["loss/kl"] = kl_loss.detach()
        metrics["policy/kl_ref"] = token_mean(kl_mat)
        if config.beta > 0.0:
            loss = loss + config.beta * kl_loss
    metrics["loss/total"] = loss.detach()
    return loss, metrics
