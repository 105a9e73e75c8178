"""The algorithm registry and its built-in entries, against values computed by hand (pure torch).

Each new entry is checked where it differs from GRPO: GSPO clips the sequence's ratio (a token
beyond GRPO's clip range still moves when its sequence is inside), CISPO clips the importance
weight and keeps every token's gradient, Dr. GRPO and DAPO change settings (presets) that a
recipe's own keys override. The registry reports bad names, paths and kwargs by name.
"""

from __future__ import annotations

import math

import pytest
import torch

from rl_pipeline.algorithms import Algorithm, AlgorithmError, AlgorithmSpec, register, registered, resolve
from rl_pipeline.algorithms.grpo import GRPOLossConfig, LossNormaliser, grpo_policy_loss
from rl_pipeline.config import RecipeError, parse_recipe

D = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def _loss_and_grad(algorithm: Algorithm, logp_values, advantages, old=None):
    logp = t(logp_values).requires_grad_(True)
    mask = torch.ones_like(logp, dtype=torch.bool)
    old = torch.zeros_like(logp) if old is None else t(old)
    loss, metrics = algorithm.loss(logp, old, t(advantages), mask, normaliser=LossNormaliser.of(mask))
    loss.backward()
    return loss.detach(), logp.grad, metrics


def test_the_built_ins_are_registered():
    assert {"grpo", "dr_grpo", "dapo", "gspo", "cispo", "on_policy_distill"} <= set(registered())


def test_the_grpo_entry_is_grpo_policy_loss():
    settings = GRPOLossConfig(eps_low=0.2, eps_high=0.28, aggregation="token-mean")
    logp = t([[math.log(1.5), math.log(0.7)], [math.log(0.5), math.log(1.1)]])
    mask = torch.ones_like(logp, dtype=torch.bool)
    norm = LossNormaliser.of(mask)
    expected, _ = grpo_policy_loss(logp, torch.zeros_like(logp), t([1.0, -1.0]), mask, normaliser=norm, config=settings)
    got, _ = resolve("grpo")(settings).loss(logp, torch.zeros_like(logp), t([1.0, -1.0]), mask, normaliser=norm)
    torch.testing.assert_close(got, expected)


def test_gspo_clips_the_sequence_ratio_not_the_tokens():
    # log-ratios 0.1 and 0.3 (old logp 0): s = exp((0.1 + 0.3) / 2) = exp(0.2) = 1.221403, A = +1.
    # eps 0.3: s < 1.3, inside the range, although token 2 alone (exp(0.3) = 1.349859) is outside.
    # Per token: value -s A; gradient of the sequence mean: -s A / 2 for each token (the paper's
    # d(-s A)/d logp_t = -s A / |o|).
    s = math.exp(0.2)
    gspo = resolve("gspo")(GRPOLossConfig(eps_low=0.3, eps_high=0.3))
    loss, grad, metrics = _loss_and_grad(gspo, [[0.1, 0.3]], [1.0])
    torch.testing.assert_close(loss, t(-s))
    torch.testing.assert_close(grad, t([[-s / 2, -s / 2]]))
    assert float(metrics["policy/clip_frac"]) == 0.0
    # GRPO on the same tokens clips token 2: its gradient is 0 there
    _, grpo_grad, _ = _loss_and_grad(resolve("grpo")(GRPOLossConfig(eps_low=0.3, eps_high=0.3)), [[0.1, 0.3]], [1.0])
    torch.testing.assert_close(grpo_grad, t([[-math.exp(0.1) / 2, 0.0]]))


def test_gspo_clips_a_whole_sequence_beyond_its_range():
    # eps_high 0.1: s = 1.221403 > 1.1 with A > 0: every token takes the clipped value -1.1, no gradient
    gspo = resolve("gspo")(GRPOLossConfig(eps_low=0.1, eps_high=0.1))
    loss, grad, metrics = _loss_and_grad(gspo, [[0.1, 0.3]], [1.0])
    torch.testing.assert_close(loss, t(-1.1))
    torch.testing.assert_close(grad, t([[0.0, 0.0]]))
    torch.testing.assert_close(metrics["policy/clip_frac_high"], t(1.0))


def test_cispo_clips_the_weight_and_keeps_every_tokens_gradient():
    # log-ratios +0.5 and -0.5: rho = 1.648721, 0.606531; eps_high 0.28, no lower clip (eps_low 1):
    # w = 1.28, 0.606531. A = +1, token-mean over 2 tokens:
    # loss = -(1.28 + 0.606531) / 2 = -0.943265; gradient -w A / 2 = -0.64, -0.303265
    cispo = resolve("cispo")(GRPOLossConfig(eps_low=1.0, eps_high=0.28, aggregation="token-mean"))
    loss, grad, metrics = _loss_and_grad(cispo, [[0.5, -0.5]], [1.0])
    w = math.exp(-0.5)
    torch.testing.assert_close(loss, t(-(1.28 + w) / 2))
    torch.testing.assert_close(grad, t([[-0.64, -w / 2]]))
    torch.testing.assert_close(metrics["policy/clip_frac_high"], t(0.5))
    # GRPO with the same range gives the clipped token no gradient at all
    grpo = resolve("grpo")(GRPOLossConfig(eps_low=0.2, eps_high=0.28, aggregation="token-mean"))
    _, grpo_grad, _ = _loss_and_grad(grpo, [[0.5, -0.5]], [1.0])
    assert float(grpo_grad[0, 0]) == 0.0


def test_cispo_negative_advantage_pushes_down_with_the_clipped_weight():
    # rho 2 (log 0.693147), A = -1, eps_high 0.28: w = 1.28; loss 1.28; gradient +1.28 (descent lowers logp)
    cispo = resolve("cispo")(GRPOLossConfig(eps_low=1.0, eps_high=0.28, aggregation="token-mean"))
    loss, grad, _ = _loss_and_grad(cispo, [[math.log(2.0)]], [-1.0])
    torch.testing.assert_close(loss, t(1.28))
    torch.testing.assert_close(grad, t([[1.28]]))


def test_dr_grpo_and_dapo_presets_fill_what_the_recipe_leaves_out():
    base = {"model": {"path": "m"}}
    dr = parse_recipe({**base, "grpo": {"algorithm": {"name": "dr_grpo"}}}).grpo
    assert (dr.scale_advantages_by_std, dr.loss_aggregation) == (False, "seq-mean-token-sum-norm")
    dapo = parse_recipe({**base, "grpo": {"algorithm": {"name": "dapo"}, "eps_high": 0.3}}).grpo
    assert (dapo.eps_high, dapo.eps_low, dapo.loss_aggregation, dapo.max_refill_rounds) == (0.3, 0.2, "token-mean", 2)
    gspo = parse_recipe({**base, "grpo": {"algorithm": {"name": "gspo"}}}).grpo
    assert (gspo.eps_low, gspo.eps_high) == (3e-4, 4e-4)
    assert parse_recipe({**base, "grpo": {}}).grpo.eps_high == 0.2  # grpo: the recipe's defaults


def test_dr_grpo_advantages_are_not_scaled_by_the_std():
    # rewards [1, 0, 0, 1]: r - mean = +-0.5 (GRPO would divide by the std 0.57735: +-0.866025)
    dr = resolve("dr_grpo")(GRPOLossConfig(scale_advantages_by_std=False))
    torch.testing.assert_close(dr.advantages(t([1, 0, 0, 1]), 4), t([0.5, -0.5, -0.5, 0.5]))


def test_on_policy_distill_turns_teacher_logprobs_into_token_advantages():
    # coef 2, reward_weight 0.5, group advantage 1: A_t = 0.5 * 1 - 2 * (student - teacher)
    distill = AlgorithmSpec("on_policy_distill", {"coef": 2.0, "reward_weight": 0.5}).build()
    assert distill.token_advantages(1.0, [-1.0, -0.5], [-0.5, -0.5]) == [0.5 + 1.0, 0.5]
    assert distill.keeps_flat_groups and distill.needs_teacher
    assert resolve("grpo")().token_advantages(0.7, [-1.0, -2.0], None) == [0.7, 0.7]


def test_a_teacher_section_selects_on_policy_distillation_and_other_names_refuse_it():
    base = {"model": {"path": "m"}, "teacher": {"model": {"path": "t"}}}
    assert parse_recipe({**base, "grpo": {}}).grpo.algorithm.name == "on_policy_distill"
    with pytest.raises(RecipeError, match="teacher: the section is used by on_policy_distill only"):
        parse_recipe({**base, "grpo": {"algorithm": {"name": "gspo"}}})


def test_unknown_names_paths_and_kwargs_are_named(tmp_path):
    with pytest.raises(RecipeError, match="grpo.*unknown algorithm 'gpso'.*cispo, dapo"):
        parse_recipe({"model": {"path": "m"}, "grpo": {"algorithm": {"name": "gpso"}}})
    with pytest.raises(AlgorithmError, match="cannot import"):
        resolve(str(tmp_path / "missing.py") + ":Mine")
    not_an_algorithm = tmp_path / "plain.py"
    not_an_algorithm.write_text("def Mine():\n    return 1\n")
    with pytest.raises(AlgorithmError, match="not a subclass of rl_pipeline.algorithms.Algorithm"):
        resolve(f"{not_an_algorithm}:Mine")
    with pytest.raises(AlgorithmError, match=r"'gspo'.*kwargs \{'tau': 1\}"):
        AlgorithmSpec("gspo", {"tau": 1}).build()


def test_a_registered_user_algorithm_is_found_by_name_and_a_clash_is_refused():
    @register("test_half_advantage")
    class HalfAdvantage(Algorithm):
        def advantages(self, rewards, group_size):
            return super().advantages(rewards, group_size) / 2

    assert resolve("test_half_advantage") is HalfAdvantage
    torch.testing.assert_close(HalfAdvantage().advantages(t([1, 0]), 2), t([0.5, -0.5]) / 0.707107 / 2,
                               atol=1e-5, rtol=0)
    with pytest.raises(AlgorithmError, match="already registered"):
        register("grpo")(HalfAdvantage)
