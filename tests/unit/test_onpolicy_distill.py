"""On-policy distillation without Ray: per-token advantages through collate and the loss, the sign
of the reverse-KL advantage, and the recipe errors a teacher can cause (before any actor starts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl_pipeline.algorithms.distill import distill_advantages, mean_reverse_kl, reverse_kl_per_token
from rl_pipeline.algorithms.grpo import GRPOLossConfig, LossNormaliser, grpo_policy_loss
from rl_pipeline.batch import GRPOSample, collate_grpo
from rl_pipeline.config import InputError, RecipeError, parse_recipe


def _samples(per_token: bool) -> list[GRPOSample]:
    """Two completions of different lengths (so padding and offsets matter), advantage +0.75 / -1.5."""
    rows = [([1, 2, 3], [4, 5], 0.75), ([1, 2], [6, 7, 8, 9], -1.5)]
    return [GRPOSample(prompt_ids=p, completion_ids=c, sampler_logprobs=[-0.5] * len(c),
                       advantage=[a] * len(c) if per_token else a, reward=0.0, group=0, truncated=False)
            for p, c, a in rows]


def _loss_and_grad(samples: list[GRPOSample], config: GRPOLossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate_grpo([s.as_row() for s in samples], pad_id=0, device="cpu")
    torch.manual_seed(0)
    logp = (-torch.rand(batch["mask"].shape)).requires_grad_(True)
    old = logp.detach() - 0.05 * torch.arange(logp.shape[1])  # ratios differ from 1, so the clip can act
    loss, _ = grpo_policy_loss(logp, old, batch["advantages"], batch["mask"], normaliser=LossNormaliser.of(batch["mask"]),
                               config=config)
    loss.backward()
    return loss.detach(), logp.grad


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_float_and_per_token_advantages_give_the_same_loss_and_gradients(aggregation):
    config = GRPOLossConfig(aggregation=aggregation, eps_low=0.02, eps_high=0.02)
    loss_f, grad_f = _loss_and_grad(_samples(per_token=False), config)
    loss_t, grad_t = _loss_and_grad(_samples(per_token=True), config)
    assert torch.equal(loss_f, loss_t) and torch.equal(grad_f, grad_t)
    assert grad_f.abs().sum() > 0


def test_collate_places_per_token_advantages_on_their_completion_positions():
    sample = GRPOSample(prompt_ids=[1, 2, 3], completion_ids=[4, 5, 6], sampler_logprobs=[-1.0] * 3,
                        advantage=[0.1, -0.2, 0.3], reward=0.0, group=0, truncated=False)
    short = GRPOSample(prompt_ids=[1], completion_ids=[4], sampler_logprobs=[-1.0], advantage=2.0, reward=0.0,
                       group=0, truncated=False)
    batch = collate_grpo([sample.as_row(), short.as_row()], pad_id=0, device="cpu")
    assert batch["advantages"].shape == batch["mask"].shape == (2, 5)
    # Label position t predicts token t + 1: completion token j of a 3-token prompt sits at 2 + j.
    assert batch["advantages"][0].tolist() == pytest.approx([0.0, 0.0, 0.1, -0.2, 0.3])
    assert batch["advantages"][1].tolist() == [2.0, 0.0, 0.0, 0.0, 0.0]
    untrained = GRPOSample(**{**vars(sample), "trained": False})
    assert collate_grpo([untrained.as_row()], 0, "cpu")["advantages"].abs().sum() == 0


def test_a_token_the_teacher_likes_more_gets_a_positive_advantage():
    student, teacher = [-1.0, -0.2, -2.0], [-0.5, -0.2, -3.0]
    assert reverse_kl_per_token(student, teacher) == [-0.5, 0.0, 1.0]
    # -coef * (student - teacher): liked more -> +, equally -> 0, liked less -> -.
    assert distill_advantages(student, teacher, group_advantage=0.0, coef=2.0, reward_weight=0.0) == [1.0, 0.0, -2.0]
    # Mixed with the group advantage: 0.5 * 0.8 = 0.4 on every token.
    assert distill_advantages(student, teacher, 0.8, coef=1.0, reward_weight=0.5) == pytest.approx([0.9, 0.4, -0.6])


def test_the_distillation_gradient_raises_the_token_the_teacher_prefers():
    """One policy-gradient step with A_t = -(log pi - log q) on a categorical student moves its
    probability mass towards the teacher: the reverse KL falls."""
    logits = torch.zeros(3, requires_grad=True)
    teacher = torch.log(torch.tensor([0.7, 0.2, 0.1]))

    def reverse_kl() -> float:
        p = torch.softmax(logits.detach(), -1)
        return float((p * (p.log() - teacher)).sum())

    before = reverse_kl()
    for token in range(3):  # every token once, as if each had been sampled
        logp = torch.log_softmax(logits, -1)
        advantage = distill_advantages([float(logp[token].detach())], [float(teacher[token])], 0.0, 1.0, 0.0)[0]
        loss, _ = grpo_policy_loss(logp[token].view(1, 1), logp[token].detach().view(1, 1),
                                   torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool),
                                   normaliser=LossNormaliser(1.0, 1.0))
        loss = loss * float(torch.softmax(logits.detach(), -1)[token])  # weight by pi: the expectation over samples
        loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    assert float(torch.softmax(logits.detach(), -1)[0]) > 1 / 3
    assert reverse_kl() < before


def test_mean_reverse_kl_counts_sampled_tokens_only():
    pairs = [([-1.0, -1.0], [-2.0, -1.0], None), ([-1.0, -3.0], [0.0, 0.0], [1, 0])]
    # tokens: 1.0, 0.0, -1.0 (the masked -3.0 is a tool result) -> mean 0.0
    assert mean_reverse_kl(pairs) == 0.0


# ---------------------------------------------------------------- recipe errors before any actor


def _recipe(student: Path, task_dir: Path, teacher: str | None, rewards: bool = True, **teacher_keys) -> dict:
    raw = {"model": {"path": str(student)},
           "data": {"train": {"path": str(task_dir / "train.jsonl")}, "max_length": 32},
           "rollout": {"temperature": 1.0, "max_tokens": 6},
           "grpo": {"steps": 2, "prompts_per_step": 4, "group_size": 2, "prompt_template": "{prompt}"}}
    if rewards:
        raw["rewards"] = {"functions": [{"name": "math", "kwargs": {"answer_after": None}}]}
    if teacher is not None:
        raw["teacher"] = {"model": {"path": teacher}, **teacher_keys}
    return raw


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> Path:
    from rl_pipeline.data.synthetic import write_task

    out = tmp_path_factory.mktemp("task")
    write_task(out, {"train": 20, "eval": 4, "test": 4}, digits=2, ops="+", seed=0)
    return out


def test_missing_teacher_path_is_named(tiny_model_dir, small_task, tmp_path):
    from rl_pipeline.pipelines.grpo import check_grpo_inputs

    recipe = parse_recipe(_recipe(tiny_model_dir, small_task, str(tmp_path / "no-such-teacher")))
    with pytest.raises(InputError, match="teacher.model.path"):
        check_grpo_inputs(recipe)


def test_teacher_with_another_vocabulary_is_refused(tiny_model_dir, small_task, tmp_path):
    from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model
    from rl_pipeline.pipelines.grpo import check_grpo_inputs

    other = build_tiny_model(tmp_path / "other", TinyModelSpec(layers=1, vocab_size=192))
    recipe = parse_recipe(_recipe(tiny_model_dir, small_task, str(other)))
    with pytest.raises(InputError, match=r"teacher.model: .*does not share the student's vocabulary \(192 vs 128"):
        check_grpo_inputs(recipe)


def test_pure_distillation_needs_no_rewards_but_grpo_does(tiny_model_dir, small_task):
    from rl_pipeline.pipelines.grpo import check_grpo_inputs

    inputs = check_grpo_inputs(parse_recipe(_recipe(tiny_model_dir, small_task, str(tiny_model_dir), rewards=False)))
    assert inputs.correct_component is None and len(inputs.train) == 20
    with pytest.raises(RecipeError, match="section 'rewards' is required"):
        check_grpo_inputs(parse_recipe(_recipe(tiny_model_dir, small_task, None, rewards=False)))
    with pytest.raises(RecipeError, match="section 'rewards' is required"):  # mixing needs rewards to mix
        check_grpo_inputs(parse_recipe(_recipe(tiny_model_dir, small_task, str(tiny_model_dir), rewards=False,
                                               reward_weight=0.5)))


def test_teacher_section_rejects_bad_keys(tiny_model_dir, small_task):
    with pytest.raises(RecipeError, match="teacher.coef"):
        parse_recipe(_recipe(tiny_model_dir, small_task, "t", coef=0))
    with pytest.raises(RecipeError, match="teacher.temperature: unknown key"):
        parse_recipe(_recipe(tiny_model_dir, small_task, "t", temperature=2.0))


def test_a_pipeline_grpo_stage_carries_the_teacher(tmp_path):
    import yaml

    from rl_pipeline.pipelines.pipeline import load_plan

    stage = {"model": {"path": "{run_dir}/student"}, "data": {"train": {"path": "t.jsonl"}},
             "rollout": {"temperature": 1.0}, "grpo": {"steps": 3},
             "teacher": {"model": {"path": "{run_dir}/teacher/final_model"}, "reward_weight": 0.5}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "stages": [{"name": "opd", "kind": "grpo", "recipe": stage}]}))
    plan = load_plan(path, tmp_path / "run")
    teacher = plan.stages[0].recipe.teacher
    assert teacher.model.path == f"{tmp_path / 'run'}/teacher/final_model" and teacher.reward_weight == 0.5
