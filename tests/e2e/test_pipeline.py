"""`rlp pipeline` as a user runs it: the demo recipe, shrunk to a few minutes, through the CLI.

Checks that the stages ran in order, report.md holds numbers for base/sft/grpo, curves.png and
the metrics files exist; then that Ctrl-C (SIGINT) mid-GRPO stops cleanly (no Ray or vLLM
process of the run left, no half-written stage) and rerunning the same command finishes it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rl_pipeline.tracking import read_metrics

RLP = str(Path(sys.executable).with_name("rlp"))
DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
ORDER = ["base", "expert", "distill", "sft", "grpo"]


def small_demo(tmp_path: Path) -> Path:
    """The demo recipe with every stage cut to seconds (numbers are meaningless, the flow is not)."""
    raw = yaml.safe_load(DEMO.read_text())
    raw["prepare"]["task"].update(train=600, eval=16, test=16)
    steps = {"base": 6, "expert": 6, "sft": 4}
    for stage in raw["stages"]:
        recipe = stage["recipe"]
        if stage["name"] in steps:
            recipe["sft"]["max_steps"] = steps[stage["name"]]
            recipe["trainer"]["micro_batch_size"] = 2 if stage["name"] == "sft" else 16
        if stage["kind"] == "distill":
            recipe["data"]["train"]["limit"] = 16
            recipe["rollout"]["max_tokens"] = 12
            # Keep everything: an expert trained for 6 steps is never right and rarely stops.
            recipe["distill"].update(threshold=0.0, drop_truncated=False, min_response_tokens=0, dedupe=False)
        if stage["kind"] == "grpo":
            recipe["grpo"].update(steps=6, prompts_per_step=4, group_size=4, eval_every=3, save_every=2)
            recipe["rollout"]["max_tokens"] = 12
    raw["report"]["recipe"]["rollout"]["max_tokens"] = 12
    path = tmp_path / "demo_small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def processes_in_group(pgid: int) -> list[str]:
    """Live processes of a process group. The pipeline runs as the leader of its own group, and
    the local Ray it starts (GCS, raylet, dashboard) inherits that group; Ray's workers and the
    vLLM engines inside them exit when their raylet does."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    return [" ".join(r) for r in rows if len(r) == 4 and int(r[1]) == pgid and not r[2].startswith("Z")]


@pytest.mark.slow
def test_pipeline_stops_cleanly_on_ctrl_c_then_finishes_every_stage_in_order_and_reports(tmp_path):
    """One small-demo run (the stages cost a minute of start-ups each time) checked twice: Ctrl-C
    mid-GRPO stops cleanly, and the rerun finishes it, having run every stage once in order, with
    a report; a third run skips every stage."""
    recipe, run_dir = small_demo(tmp_path), tmp_path / "demo"
    raw = yaml.safe_load(recipe.read_text())
    # Long enough to be mid-GRPO when the first checkpoint (step 2) appears and Ctrl-C follows
    # within half a second; short enough that the rerun's remaining steps take seconds.
    raw["stages"][-1]["recipe"]["grpo"]["steps"] = 12
    recipe.write_text(yaml.safe_dump(raw))
    log = tmp_path / "first_run.log"
    # A terminal's foreground job has SIGINT at its default; a suite started in the background
    # (`pytest &` in a script) would pass "ignore SIGINT" down to the pipeline, so restore it.
    with log.open("w") as out:
        proc = subprocess.Popen([RLP, "pipeline", str(recipe), "--run-dir", str(run_dir)],
                                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        latest = run_dir / "grpo" / "checkpoints" / "latest"
        deadline = time.time() + 1200
        while not latest.exists() and time.time() < deadline:
            assert proc.poll() is None, "the pipeline ended before GRPO checkpointed"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground group
        assert proc.wait(timeout=120) != 0
    deadline = time.time() + 30  # Ray takes a few seconds to stop
    while (left := processes_in_group(proc.pid)) and time.time() < deadline:
        time.sleep(1)
    assert not left, f"processes of the interrupted run are still alive: {left}"
    assert not (run_dir / "grpo" / "STAGE_DONE.json").exists()
    assert not list(run_dir.rglob("*.tmp")), "a half-written file was left behind"
    starts = [m.group(1) for m in re.finditer(r"stage (\w+) \(\w+\): starting", log.read_text())]
    assert starts == ORDER

    again = subprocess.run([RLP, "pipeline", str(recipe), "--run-dir", str(run_dir)],
                           capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already finished, skipped") == len(ORDER) - 1, "only GRPO was left to finish"
    for name in ORDER:
        assert (run_dir / name / "STAGE_DONE.json").exists(), name
    report = (run_dir / "report.md").read_text()
    for label in ("base", "sft", "grpo"):
        row = re.search(rf"^\| {label} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", report, re.M)
        assert row, f"no numeric row for {label} in report.md:\n{report}"
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert "[view.html](view.html)" in report  # the page of every stage, written after report.md
    page = (run_dir / "view.html").read_text()
    assert all(f'"name":"{name}"' in page for name in ORDER) and '"kind":"train"' in page
    steps = [r["step"] for r in read_metrics(run_dir / "grpo" / "metrics.jsonl")]
    assert steps == list(range(0, 13)), "each GRPO step (and the step-0 evaluation) exactly once across the resume"
    assert any((run_dir / "grpo" / "tensorboard").iterdir())

    third = subprocess.run([RLP, "pipeline", str(recipe), "--run-dir", str(run_dir)],
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stderr.count("already finished, skipped") == len(ORDER)
