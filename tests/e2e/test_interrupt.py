"""Ctrl-C on a real `rlp grpo` (its own process, its own local Ray): the run stops within seconds
wherever the driver waits, exits 130, and its last line says the step reached and the exact
command that resumes.

SIGINT goes to the driver's pid alone (`kill -INT`), the harder case: the actors, busy with the
call the driver waits on, are not interrupted with it. Waits made to happen on purpose:
- on a reward: an injected slow function (`stalls`) sleeps 600 s a sample once the run's first
  checkpoint exists (the function itself looks, so the stall is step 2's scoring however fast
  the steps go); it touches `entered` when it starts sleeping, so the signal lands while the
  driver waits on the reward service;
- on the engines: right after the local Ray instance starts, while the vLLM engines start up.
The test timeout (60 s per wait) is a generous bound for "within 10 s", not a measurement.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RLP = str(Path(sys.executable).with_name("rlp"))
ROOT = Path(__file__).resolve().parents[2]

STALLS = textwrap.dedent("""
    import os, time

    def stalls(prompts, completions, marker, entered, **_):
        if os.path.exists(marker):
            open(entered, "a").close()
            time.sleep(600)  # injected fault: a reward far slower than anything should be
        return [0.0]
""")


def overrides(model_dir: Path, task_dir: Path, out: Path, functions: list[dict]) -> list[str]:
    return [f"output_dir={out}", f"model.path={model_dir}", f"data.train.path={task_dir / 'train.jsonl'}",
            f"data.eval.path={task_dir / 'test.jsonl'}", "grpo.steps=3", "grpo.save_every=1",
            "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.eval_every=0", "trainer.micro_batch_size=8",
            "rollout.max_tokens=4", "tracking.tensorboard=false", f"rewards.functions={json.dumps(functions)}",
            "rewards.batch_timeout_s=1200"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    # A terminal's foreground job has SIGINT at its default; a suite started in the background
    # would pass "ignore SIGINT" down, so restore it.
    return subprocess.Popen([RLP, "grpo", "recipes/grpo_tiny.yaml", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert proc.poll() is None, f"rlp ended early:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def interrupt(proc: subprocess.Popen, log: Path) -> str:
    """SIGINT to the driver alone; the exit within the bound; the last line of its console."""
    os.kill(proc.pid, signal.SIGINT)
    try:
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text().strip().splitlines()[-1]


@pytest.mark.timeout(900)
def test_ctrl_c_while_waiting_on_a_reward_stops_with_the_resume_line(tiny_model_dir, task_dir, tmp_path):
    reward_file, entered = tmp_path / "my_rewards.py", tmp_path / "entered"
    reward_file.write_text(STALLS)
    marker = tmp_path / "run" / "checkpoints" / "latest"  # step 2's scoring stalls
    functions = [{"name": "math", "kwargs": {"answer_after": None}},
                 {"name": f"{reward_file}:stalls", "kwargs": {"marker": str(marker), "entered": str(entered)}}]
    args = overrides(tiny_model_dir, task_dir, tmp_path, functions) + ["--run-dir", str(tmp_path / "run")]
    log = tmp_path / "console.log"
    proc = start(args, log)
    wait_for(entered.exists, proc, log)
    last = interrupt(proc, log)
    assert last.startswith("interrupted at step 1 of 3 (grpo; checkpoint: step 1); resume with: "), last
    # the exact command (shell-quoted where a value has spaces), with --run-dir and --resume
    assert shlex.split(last.partition("resume with: ")[2]) == ["rlp", "grpo", "recipes/grpo_tiny.yaml", *args[:-2],
                                                              "--run-dir", str(tmp_path / "run"), "--resume"]


@pytest.mark.timeout(900)
def test_ctrl_c_while_the_engines_start_stops_with_the_line(tiny_model_dir, task_dir, tmp_path):
    functions = [{"name": "math", "kwargs": {"answer_after": None}}]
    log = tmp_path / "console.log"
    proc = start(overrides(tiny_model_dir, task_dir, tmp_path, functions), log)
    wait_for(lambda: "Started a local Ray instance" in log.read_text(), proc, log)
    last = interrupt(proc, log)
    assert last.startswith("interrupted (no checkpoint yet); start again with: rlp grpo recipes/grpo_tiny.yaml "), last
