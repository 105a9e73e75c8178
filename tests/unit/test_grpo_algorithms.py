"""Hand-computed cases for rl_pipeline.algorithms.grpo (pure torch, no Ray, seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from rl_pipeline.algorithms.grpo import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    GRPOLossConfig,
    LossNormaliser,
    behaviour_correction,
    clipped_surrogate,
    flat_groups,
    group_advantages,
    grpo_policy_loss,
)

D = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


# ---------------------------------------------------------------- advantages


def test_advantages_use_unbiased_std():
    # rewards [1, 0, 0, 1]: mean 0.5, deviations +-0.5
    # unbiased var = 4 * 0.25 / (4 - 1) = 1/3, std = 0.57735  ->  A = +-0.5 / 0.57735 = +-0.866025
    # (the biased std 0.5 would give +-1: not what we compute)
    adv = group_advantages(t([1, 0, 0, 1]), group_size=4, eps=0.0)
    s = math.sqrt(3) / 2
    torch.testing.assert_close(adv, t([s, -s, -s, s]))
    # default eps = 1e-6 moves it by ~1.5e-6 only
    torch.testing.assert_close(group_advantages(t([1, 0, 0, 1]), 4), adv, atol=1e-5, rtol=0)


def test_advantages_group_layouts_and_flat_group():
    # two groups of G=2, group-contiguous: [2, 0] -> mean 1, unbiased std sqrt(2), A = +-1/sqrt(2)
    # [3, 3] -> flat: centred rewards are 0, 0 / (0 + eps) = 0
    rewards = t([2, 0, 3, 3])
    adv = group_advantages(rewards, group_size=2, eps=1e-12)  # eps 0 would make the flat group 0/0
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, t([r, -r, 0, 0]))
    adv_2d = group_advantages(rewards.view(2, 2), group_size=2, eps=1e-12)
    assert adv_2d.shape == (2, 2)
    torch.testing.assert_close(adv_2d.flatten(), adv)
    assert flat_groups(rewards, 2).tolist() == [False, True]


def test_advantages_without_std_scaling_dr_grpo():
    # Dr. GRPO: A = r - mean = [1, 0, 0, 1] - 0.5
    adv = group_advantages(t([1, 0, 0, 1]), group_size=4, scale_by_std=False)
    torch.testing.assert_close(adv, t([0.5, -0.5, -0.5, 0.5]))


def test_advantages_accept_int_rewards_and_reject_bad_layouts():
    assert group_advantages(torch.tensor([1, 0]), 2).is_floating_point()
    with pytest.raises(ValueError, match="G=4"):
        group_advantages(t([1, 0, 1]), 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(t([1, 0]), 1)


def test_flat_groups_with_tolerance():
    # spreads: 0, 1, 1e-9
    rewards = t([[0.5, 0.5, 0.5], [0, 1, 0], [1, 1 + 1e-9, 1]])
    assert flat_groups(rewards, 3).tolist() == [True, False, False]
    assert flat_groups(rewards, 3, atol=1e-6).tolist() == [True, False, True]
    keep = (~flat_groups(rewards, 3)).repeat_interleave(3)
    assert keep.tolist() == [False] * 3 + [True] * 6


def test_mask_truncated_drops_truncated_from_loss_mask_and_normaliser():
    from types import SimpleNamespace

    from rl_pipeline.batch import build_batch, collate_grpo

    def completion(n_tokens, truncated):
        return SimpleNamespace(token_ids=[5] * n_tokens, logprobs=[-1.0] * n_tokens, truncated=truncated,
                               policy_version=0)

    # one group of 3: completions of 2, 3 (truncated) and 1 tokens; rewards not flat
    rewards = [1.0, 0.0, 0.5]
    batch = build_batch([[1, 2]], [[completion(2, False), completion(3, True), completion(1, False)]],
                        rewards, group_advantages(t(rewards), 3).tolist(), mask_truncated=True)
    norm = batch.normaliser()
    assert (norm.tokens, norm.sequences) == (3.0, 2.0)  # 2 + 1 tokens, 2 sequences left
    mask = collate_grpo([s.as_row() for s in batch.samples], pad_id=0, device="cpu")["mask"]
    # label position t predicts token t+1: completion tokens sit at positions 1.. (prompt of 2)
    assert mask.tolist() == [[False, True, True, False], [False] * 4, [False, True, False, False]]
    assert (LossNormaliser.of(mask).tokens, LossNormaliser.of(mask).sequences) == (3.0, 2.0)


# ---------------------------------------------------------------- clipped surrogate


def test_clipped_surrogate_mixed_signs_asymmetric_eps():
    # eps_low = 0.2 -> lower bound 0.8; eps_high = 0.28 -> upper bound 1.28
    # per token: (A, rho) -> -min(rho*A, clip(rho)*A)
    #   (+1, 1.10) inside                    -> -min(1.10, 1.10) = -1.10
    #   (+1, 1.50) above, A>0: clipped       -> -min(1.50, 1.28) = -1.28  (grad 0)
    #   (+1, 0.50) below, A>0: not clipped   -> -min(0.50, 0.80) = -0.50
    #   (-1, 0.50) below, A<0: clipped       -> -min(-0.50, -0.80) = 0.80 (grad 0)
    #   (-1, 1.50) above, A<0: not clipped   -> -min(-1.50, -1.28) = 1.50
    #   (-2, 0.90) inside                    -> -min(-1.80, -1.80) = 1.80
    #   (+2, 1.25) inside 1.28 (outside a symmetric 1.2) -> -2.50, not clipped
    adv = t([1, 1, 1, -1, -1, -2, 2])
    rho = t([1.10, 1.50, 0.50, 0.50, 1.50, 0.90, 1.25])
    log_ratio = rho.log().requires_grad_(True)
    loss, low, high = clipped_surrogate(log_ratio, adv, eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, t([-1.10, -1.28, -0.50, 0.80, 1.50, 1.80, -2.50]))
    assert low.tolist() == [False, False, False, True, False, False, False]
    assert high.tolist() == [False, True, False, False, False, False, False]
    # d loss / d log_ratio = -A * rho where unclipped, 0 where clipped
    loss.sum().backward()
    expected = torch.where(low | high, torch.zeros_like(rho), -adv * rho)
    torch.testing.assert_close(log_ratio.grad, expected)


def test_policy_loss_clip_fraction_metrics():
    # one sequence of 4 valid tokens + 1 padding token (padding holds garbage: nan)
    # (A=+1, rho 1.5): high clip; (A=+1, rho 1.1): none; second seq (A=-1, rho 0.5): low clip
    nan = float("nan")
    logp = t([[math.log(1.5), math.log(1.1), nan], [math.log(0.5), nan, nan]]).requires_grad_(True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    old = torch.where(mask, 0.0, nan)
    cfg = GRPOLossConfig(eps_low=0.2, eps_high=0.2, aggregation="token-mean")
    norm = LossNormaliser.of(mask)
    loss, m = grpo_policy_loss(logp, old, t([1, -1]), mask, normaliser=norm, config=cfg)
    # token-mean over 3 tokens: (-1.2 + -1.1 + 0.8) / 3 = -0.5
    torch.testing.assert_close(loss, t(-0.5))
    # gradient: only the unclipped token moves, d/dlogp (-rho * A / 3) = -1.1 / 3; no nan leaks
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[0.0, -1.1 / 3, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(m["policy/clip_frac_high"], t(1 / 3))
    torch.testing.assert_close(m["policy/clip_frac_low"], t(1 / 3))
    torch.testing.assert_close(m["policy/clip_frac"], t(2 / 3))
    torch.testing.assert_close(m["policy/ratio_mean"], t((1.5 + 1.1 + 0.5) / 3))


# ---------------------------------------------------------------- KL estimators


@pytest.mark.parametrize(
    "logp, ref, expected, grad",
    [
        # d = logp - ref = +1: k1 = 1, grad +1; k2 = 0.5, grad d = +1;
        # k3 = e^-1 - (-1) - 1 = e^-1 = 0.367879, grad 1 - e^(ref-logp) = 1 - e^-1 = +0.632121
        # k3+ = k3's value with k2's gradient
        (-1.0, -2.0, {"k1": 1.0, "k2": 0.5, "k3": math.exp(-1), "k3+": math.exp(-1)},
         {"k1": 1.0, "k2": 1.0, "k3": 1 - math.exp(-1), "k3+": 1.0}),
        # d = -1: k1 = -1, grad +1 (k1's gradient ignores the sign of d); k2 = 0.5, grad -1;
        # k3 = e^1 - 1 - 1 = 0.718282, grad 1 - e = -1.718282
        (-2.0, -1.0, {"k1": -1.0, "k2": 0.5, "k3": math.e - 2, "k3+": math.e - 2},
         {"k1": 1.0, "k2": -1.0, "k3": 1 - math.e, "k3+": -1.0}),
    ],
)
def test_kl_estimators_values_and_gradient_signs(logp, ref, expected, grad):
    for name, estimator in KL_ESTIMATORS.items():
        x = t([logp]).requires_grad_(True)
        value = estimator(x, t([ref]))
        torch.testing.assert_close(value, t([expected[name]]), msg=name)
        value.sum().backward()
        torch.testing.assert_close(x.grad, t([grad[name]]), msg=name)


# Monte Carlo over on-policy samples: N = 400,000 draws from a 5-way categorical. One sample's
# gradient has a standard deviation below 2 here, so the mean's standard error is below
# 2 / sqrt(N) = 0.0032 per component; the tolerance 0.015 is ~5 standard errors, and the three
# targets differ from each other by more than 0.1 (asserted), so a wrong target cannot pass.
KL_MC_SAMPLES, KL_MC_TOL = 400_000, 0.015


def _kl_gradients(theta: torch.Tensor, ref_logp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact gradients wrt the logits theta of KL(pi || ref), KL(ref || pi) and zero."""
    logp = torch.log_softmax(theta, -1)
    forward = (logp.exp() * (logp - ref_logp)).sum()
    reverse = (ref_logp.exp() * (ref_logp - logp)).sum()
    return {"forward": torch.autograd.grad(forward, theta, retain_graph=True)[0],
            "reverse": torch.autograd.grad(reverse, theta)[0], "zero": torch.zeros_like(theta)}


@pytest.mark.parametrize("name, target", [("k1", "zero"), ("k2", "forward"), ("k3", "reverse"), ("k3+", "forward")])
def test_kl_estimators_expected_gradient_matches_the_analytic_one(name, target):
    """E over x ~ pi of grad k(log pi(x), log ref(x)), backpropagated through log pi only (as the
    loss does), equals grad KL(pi || ref) for k2 and k3+, grad KL(ref || pi) for k3, 0 for k1."""
    theta = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([0.0, 0.9, -0.7, 1.1, 0.3], dtype=torch.float64), -1)
    exact = _kl_gradients(theta, ref_logp)
    assert (exact["forward"] - exact["reverse"]).abs().max() > 0.1 and exact["forward"].abs().max() > 0.1
    logp = torch.log_softmax(theta, -1)
    x = torch.multinomial(logp.exp().detach(), KL_MC_SAMPLES, replacement=True,
                          generator=torch.Generator().manual_seed(0))
    (estimated,) = torch.autograd.grad(KL_ESTIMATORS[name](logp[x], ref_logp[x]).mean(), theta)
    torch.testing.assert_close(estimated, exact[target], atol=KL_MC_TOL, rtol=0)


def test_default_kl_estimator_pulls_towards_the_reference_by_forward_kl():
    """The default estimator, in the loss config and the recipe, is one whose expected gradient is
    that of KL(pi || ref) (k1 and k3 are not)."""
    from rl_pipeline.config import GRPOConfig

    assert GRPOLossConfig().kl_estimator in ("k2", "k3+")
    assert GRPOConfig().kl_estimator == GRPOLossConfig().kl_estimator


def test_kl_term_is_added_with_beta():
    # ratio 1 and A = 0, so the loss is beta * token-mean of k3; one token with d = +1
    logp, ref = t([[-1.0]]), t([[-2.0]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    cfg = GRPOLossConfig(beta=0.1, kl_estimator="k3")
    loss, m = grpo_policy_loss(logp, logp, t([0.0]), mask, ref_logp=ref,
                               normaliser=LossNormaliser.of(mask), config=cfg)
    torch.testing.assert_close(loss, t(0.1 * math.exp(-1)))
    torch.testing.assert_close(m["loss/kl"], t(math.exp(-1)))
    torch.testing.assert_close(m["policy/kl_ref"], t(math.exp(-1)))


# ---------------------------------------------------------------- aggregation


def test_each_aggregation_on_a_ragged_mask():
    # row 0: 3 valid tokens [1, 2, 3]; row 1: 1 valid token [4]; row 2: fully masked (truncated)
    # masked positions hold nan: they must not leak
    nan = float("nan")
    loss_mat = t([[1, 2, 3], [4, nan, nan], [nan, nan, nan]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    norm = LossNormaliser.of(mask)
    assert (norm.tokens, norm.sequences) == (4.0, 2.0)

    def aggregate(name: str) -> torch.Tensor:
        return AGGREGATIONS[name](loss_mat, mask, norm, 4)  # max_length 4: only Dr. GRPO uses it

    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    torch.testing.assert_close(aggregate("token-mean"), t(2.5))
    # seq-mean-token-mean: (6/3 + 4/1) / 2 sequences = 3.0
    torch.testing.assert_close(aggregate("seq-mean-token-mean"), t(3.0))
    # seq-mean-token-sum-norm with max length 4: (6/4 + 4/4) / 2 = 1.25
    torch.testing.assert_close(aggregate("seq-mean-token-sum-norm"), t(1.25))


def _random_batch(n=8, length=7, seed=0, pad_with_nan=False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 1, 4, 0, 6, 2, 7, 3])[:n]  # ragged, one fully masked
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    logp = -torch.rand(n, length, generator=g, dtype=D) * 3
    old = logp + 0.3 * torch.randn(n, length, generator=g, dtype=D)  # ratios in and out of clip
    ref = logp + 0.5 * torch.randn(n, length, generator=g, dtype=D)
    sampler = old + 0.4 * torch.randn(n, length, generator=g, dtype=D)
    adv = torch.randn(n, generator=g, dtype=D)
    if pad_with_nan:  # padding may hold garbage; neither loss nor gradient may see it
        nan = float("nan")
        logp, old, ref, sampler = (torch.where(mask, x, nan) for x in (logp, old, ref, sampler))
    return logp, old, ref, sampler, adv, mask


@pytest.mark.parametrize("kl_estimator", sorted(KL_ESTIMATORS))
@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batches_sum_to_the_full_batch_loss_and_gradient(aggregation, kl_estimator):
    logp, old, ref, sampler, adv, mask = _random_batch(pad_with_nan=True)
    cfg = GRPOLossConfig(eps_low=0.2, eps_high=0.28, beta=0.05, kl_estimator=kl_estimator,
                         aggregation=aggregation, max_length_norm=10, tis_cap=1.5)
    leaf = logp.clone().requires_grad_(True)
    full, full_metrics = grpo_policy_loss(leaf, old, adv, mask, ref_logp=ref, sampler_logp=sampler,
                                          normaliser=LossNormaliser.of(mask), config=cfg)
    full.backward()
    full_grad, leaf.grad = leaf.grad.clone(), None

    # micro-batches of 3, 3, 2 rows, each trimmed to its own longest row (as a collator pads)
    parts = [torch.arange(0, 3), torch.arange(3, 6), torch.arange(6, 8)]
    widths = [max(int(mask[p].sum(-1).max()), 1) for p in parts]
    norm = LossNormaliser.of(mask)  # counted once for the whole batch, as the driver does
    total, summed = torch.zeros((), dtype=D), {}
    for p, w in zip(parts, widths):
        loss, metrics = grpo_policy_loss(leaf[p, :w], old[p, :w], adv[p], mask[p, :w],
                                         ref_logp=ref[p, :w], sampler_logp=sampler[p, :w],
                                         normaliser=norm, config=cfg)
        loss.backward()
        total = total + loss.detach()
        for k, v in metrics.items():
            summed[k] = summed.get(k, 0.0) + v
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(leaf.grad, full_grad)
    assert summed.keys() == full_metrics.keys()
    for k in full_metrics:
        torch.testing.assert_close(summed[k], full_metrics[k], msg=k)


def test_dr_grpo_aggregation_needs_max_length():
    with pytest.raises(ValueError, match="max_length_norm"):
        GRPOLossConfig(aggregation="seq-mean-token-sum-norm")


# ---------------------------------------------------------------- mu = 1 gradient


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_mu_one_gradient_equals_minus_advantage_times_logp(aggregation):
    # old_logp = logp.detach(): the ratio is exactly 1 and nothing is clipped, yet
    # d rho / d logp = rho = 1, so the gradient is that of the plain -A * logp surrogate
    logp, _, _, _, adv, mask = _random_batch(seed=1)
    lengths = mask.sum(-1).clamp(min=1)
    a = logp.clone().requires_grad_(True)
    loss, metrics = grpo_policy_loss(a, a.detach(), adv, mask, normaliser=LossNormaliser.of(mask),
                                     config=GRPOLossConfig(aggregation=aggregation))
    loss.backward()
    b = logp.clone().requires_grad_(True)
    per_token = -adv.unsqueeze(-1) * b * mask
    if aggregation == "token-mean":  # sum over all valid tokens / number of valid tokens
        ref_loss = per_token.sum() / mask.sum()
    else:  # 1/N_valid_seqs * sum_i 1/|o_i| sum_t
        ref_loss = (per_token.sum(-1) / lengths).sum() / mask.any(-1).sum()
    ref_loss.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert metrics["policy/clip_frac"].item() == 0.0
    torch.testing.assert_close(metrics["policy/ratio_mean"], t(1.0))


# ---------------------------------------------------------------- truncated importance sampling


def test_tis_weights_are_truncated_and_detached():
    # exp(old - sampler) = [0.5, 3.0, 1.5]; cap 2 -> [0.5, 2.0, 1.5]
    sampler = torch.zeros(1, 3, dtype=D, requires_grad=True)
    old = t([[math.log(0.5), math.log(3.0), math.log(1.5)]])
    all3 = torch.ones(1, 3, dtype=torch.bool)
    weights, keep = behaviour_correction(old, sampler, all3, GRPOLossConfig(tis_cap=2.0))
    torch.testing.assert_close(weights, t([[0.5, 2.0, 1.5]]))
    assert keep.all() and not weights.requires_grad

    # in the loss: ratio 1, A = +1, so per token -w; token-mean = -(0.5 + 2 + 1.5) / 3 = -4/3
    logp = old.clone().requires_grad_(True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    cfg = GRPOLossConfig(aggregation="token-mean", tis_cap=2.0)
    loss, m = grpo_policy_loss(logp, old, t([1.0]), mask, sampler_logp=sampler,
                               normaliser=LossNormaliser.of(mask), config=cfg)
    torch.testing.assert_close(loss, t(-4 / 3))
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[-0.5, -2.0, -1.5]]) / 3)  # weights are constants
    assert sampler.grad is None
    torch.testing.assert_close(m["policy/tis_weight_mean"], t(4 / 3))
    torch.testing.assert_close(m["policy/tis_truncated_frac"], t(1 / 3))


def test_mis_drops_tokens_or_whole_sequences_outside_the_band_and_weights_the_rest():
    # behaviour ratios exp(old - sampler): row 0 [0.5, 3.0, 1.5], row 1 [1.2, 0.9, (masked) 50]
    old = t([[math.log(0.5), math.log(3.0), math.log(1.5)], [math.log(1.2), math.log(0.9), math.log(50.0)]])
    sampler = torch.zeros(2, 3, dtype=D)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    band = (0.6, 2.0)
    w, keep = behaviour_correction(old, sampler, mask, GRPOLossConfig(mis_band=band))
    torch.testing.assert_close(w, t([[0.0, 0.0, 1.5], [1.2, 0.9, 1.0]]))  # masked position: ratio 1
    assert keep.tolist() == [[False, False, True], [True, True, True]]
    # per sequence: row 0's ratio 0.5 * 3 * 1.5 = 2.25 leaves the band (whole row dropped), row 1's 1.08 stays
    w, keep = behaviour_correction(old, sampler, mask, GRPOLossConfig(mis_band=band, is_level="sequence"))
    torch.testing.assert_close(w, t([[0.0, 0.0, 0.0], [1.08, 1.08, 1.08]]))
    # geometric: row 0's (2.25) ** (1/3) = 1.31 stays, row 1's 1.08 ** (1/2) = 1.039
    w, _ = behaviour_correction(old, sampler, mask, GRPOLossConfig(mis_band=band, is_level="geometric"))
    torch.testing.assert_close(w, t([[2.25 ** (1 / 3)] * 3, [1.08 ** 0.5] * 3]))
    # in the loss (ratio 1, A = +1, token-mean): the masked tokens get no gradient, the others -w / n
    logp = old.clone().requires_grad_(True)
    cfg = GRPOLossConfig(aggregation="token-mean", mis_band=band)
    loss, m = grpo_policy_loss(logp, old, t([1.0, 1.0]), mask, sampler_logp=sampler,
                               normaliser=LossNormaliser.of(mask), config=cfg)
    loss.backward()
    torch.testing.assert_close(logp.grad, -t([[0.0, 0.0, 1.5], [1.2, 0.9, 0.0]]) / 5)
    torch.testing.assert_close(m["offpolicy/masked_frac"], t(2 / 5))
    k3 = [r - math.log(r) - 1 for r in (0.5, 3.0, 1.5, 1.2, 0.9)]  # KL(sampler || old), sampled tokens
    torch.testing.assert_close(m["offpolicy/kl_behaviour"], t(sum(k3) / 5))


# ---------------------------------------------------------------- config errors


def test_config_and_missing_inputs_fail_with_the_field_name():
    with pytest.raises(ValueError, match="kl_estimator 'k4'"):
        GRPOLossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="aggregation 'mean'"):
        GRPOLossConfig(aggregation="mean")
    mask = torch.ones(1, 2, dtype=torch.bool)
    x = torch.zeros(1, 2, dtype=D)
    norm = LossNormaliser.of(mask)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_policy_loss(x, x, t([1.0]), mask, normaliser=norm, config=GRPOLossConfig(beta=0.1))
    with pytest.raises(ValueError, match="sampler_logp"):
        grpo_policy_loss(x, x, t([1.0]), mask, normaliser=norm, config=GRPOLossConfig(tis_cap=2.0))
    with pytest.raises(ValueError, match="sampler_logp"):
        grpo_policy_loss(x, x, t([1.0]), mask, normaliser=norm, config=GRPOLossConfig(mis_band=(0.5, 2.0)))
    with pytest.raises(ValueError, match="mis_band"):
        GRPOLossConfig(mis_band=(1.2, 2.0))
    with pytest.raises(ValueError, match="is_level 'seq'"):
        GRPOLossConfig(is_level="seq")
