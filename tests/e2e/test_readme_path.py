"""README.md's "Each stage alone" block, run as written: every command of the block, in order, in
an empty folder beside a link to recipes/, as a new user runs them (rlp and python on PATH).

Each command must exit 0 and leave what the next one reads; the outputs must make sense: GRPO
logs steps and an evaluation, `rlp eval` prints an accuracy, the distilled dataset has rows and
the command `rlp distill` prints next is the README's next command with a recipe filled in (no
data.train.format: the messages format is detected), the tool-use SFT stops at its answer
accuracy and GRPO with the calculator trains on groups with unequal rewards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_pipeline.tracking import read_metrics
from tests.e2e.readme_commands import readme_commands

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- tests/e2e/test_readme_path.py runs this block -->"


def run_block(cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run every command of the README block in `cwd`; stop at the first that fails."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done, timings = {}, []
    for command in readme_commands(MARKER):
        start = time.perf_counter()
        proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        timings.append(f"{time.perf_counter() - start:6.1f} s  {command}")
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        done[command] = proc
    print("\n".join(timings))  # pytest -s shows where the time goes
    return done


def the(done: dict[str, subprocess.CompletedProcess], *parts: str) -> tuple[str, str]:
    """(command, stdout) of the one README command that contains every part."""
    hits = [c for c in done if all(p in c for p in parts)]
    assert len(hits) == 1, f"expected one README command with {parts}, found {hits}"
    return hits[0], done[hits[0]].stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_stand_alone_path_runs_as_written(tmp_path):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    done = run_block(tmp_path)
    runs = tmp_path / "runs"

    for model in ("tiny-model", "sft-base/final_model", "grpo-tiny/final_model", "expert/final_model",
                  "sft-distilled/final_model", "sft-tools/final_model", "grpo-tools/final_model"):
        assert (runs / model / "config.json").exists(), model

    grpo = read_metrics(runs / "grpo-tiny" / "metrics.jsonl")
    assert grpo[0]["step"] == 0 and "eval/accuracy" in grpo[0] and grpo[-1]["step"] >= 1

    _, evaluated = the(done, "rlp eval")
    accuracy = re.search(r"accuracy\S*:\s*([0-9.]+)", evaluated)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0, evaluated

    # distill -> sft: the printed next command is the README's, with a recipe in place of RECIPE
    _, distilled = the(done, "rlp distill")
    printed = re.search(r"next: rlp sft RECIPE (data\.train\.path=\S+)", distilled)
    assert printed, distilled
    stats = json.loads((runs / "distill-tiny" / "stats.json").read_text())
    rows = sum(1 for f in (runs / "distill-tiny" / "data").glob("*.jsonl") for _ in f.open())
    assert rows > 0 and stats["kinds"]["expert"]["accepted"] > 0, stats["kinds"]
    sft_on_distilled, _ = the(done, "rlp sft", printed.group(1))
    assert "data.train.format" not in sft_on_distilled
    assert read_metrics(runs / "sft-distilled" / "metrics.jsonl"), "SFT on the distilled data logged nothing"

    # the tool-use chain connects: SFT stops at its answer accuracy, so GRPO's groups are not all
    # flat (the trap was "every group had equal rewards" at every step) and the policy calls the
    # tool. That the full recipe learns is measured in its header (30 steps, not run here).
    tools_sft = read_metrics(runs / "sft-tools" / "metrics.jsonl")
    checks = [r["val_accuracy"] for r in tools_sft if "val_accuracy" in r]
    assert checks and checks[-1] >= 0.3, f"tool-use SFT never reached its stop accuracy: {checks}"
    tools_grpo = read_metrics(runs / "grpo-tools" / "metrics.jsonl")
    steps = [r for r in tools_grpo if "reward/total/mean" in r]
    assert len(steps) == 4 and all(r["train/groups_dropped"] < r["train/groups_total"] for r in steps), \
        "a step trained on nothing"
    assert all(r["tool/calculator/calls_per_trajectory"] > 0 for r in steps)
    held_out = [r["eval/accuracy"] for r in tools_grpo if "eval/accuracy" in r]
    assert len(held_out) == 2 and held_out[0] > 0, held_out
    print(f"GRPO with the calculator: held-out greedy {held_out[0]:.3f} -> {held_out[1]:.3f} in 4 steps")
