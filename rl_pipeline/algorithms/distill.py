"""On-policy distillation's per-token advantage (pure: no Ray, no I/O).

The student pi samples a completion o at temperature T; the teacher q scores the same tokens at
the same T. The reverse KL KL(pi || q) = E_{o ~ pi}[sum_t log pi(o_t | .) - log q(o_t | .)], so
each sampled token carries the single-sample estimate k_t = log pi(o_t) - log q(o_t) (k1 of
algorithms/grpo.py, per token). Using A_t = -coef * k_t as a per-token advantage in the policy
gradient (the advantage is a constant: no gradient flows into it) descends the reverse KL, as in
the on-policy distillation of veRL / NeMo-RL / Thinking Machines: tokens the teacher likes more
than the student (k_t < 0) are pushed up, tokens it likes less are pushed down. The student's
log-probability is the sampler's (pi_old of the step), which is what the loss's ratio is taken
against.

Mixing with rewards: A_t = reward_weight * A_group(i) - coef * k_t, where A_group(i) is GRPO's
group-relative advantage of the completion (algorithms/grpo.group_advantages).
"""

from __future__ import annotations

from statistics import fmean


def reverse_kl_per_token(student_logprobs: list[float], teacher_logprobs: list[float]) -> list[float]:
    """k_t = log pi_student(o_t) - log pi_teacher(o_t) for each sampled token of one completion."""
    if len(student_logprobs) != len(teacher_logprobs):
        raise ValueError(f"{len(student_logprobs)} student logprobs but {len(teacher_logprobs)} teacher logprobs")
    return [s - t for s, t in zip(student_logprobs, teacher_logprobs)]


def distill_advantages(student_logprobs: list[float], teacher_logprobs: list[float], group_advantage: float,
                       coef: float, reward_weight: float) -> list[float]:
    """Per-token advantages of one completion: reward_weight * group_advantage - coef * k_t.

    E.g. student -1.0, teacher -0.5 (the teacher likes the token more): k = -0.5, A = +0.5 * coef."""
    return [reward_weight * group_advantage - coef * k
            for k in reverse_kl_per_token(student_logprobs, teacher_logprobs)]


def mean_reverse_kl(pairs: list[tuple[list[float], list[float], list[int] | None]]) -> float:
    """Mean k_t over every sampled token of a batch: (student, teacher, loss_mask or None) per completion;
    tokens whose mask is 0 (tool results, not sampled) do not count."""
    values = [k for student, teacher, mask in pairs
              for j, k in enumerate(reverse_kl_per_token(student, teacher)) if mask is None or mask[j]]
    return fmean(values) if values else 0.0
