"""The line a Ctrl-C prints (rl_pipeline/interrupt.py), and the grace period that ends a process
whose cleanup waits (no Ray here: a plain Python process stands for the driver)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_pipeline import interrupt


@pytest.fixture(autouse=True)
def fresh_position(monkeypatch):
    monkeypatch.setattr(interrupt, "_position", interrupt._Position())


def test_training_command_with_a_checkpoint_resumes_in_its_run_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000005")
    interrupt.in_run_dir(tmp_path)
    interrupt.at_step("grpo", 7, 100)
    argv = ["grpo", "recipes/grpo_tiny.yaml", "grpo.steps=100", "rewards.functions=[{name: math}]",
            "--run-dir", "old", "--resume"]
    assert interrupt.line(argv) == (
        f"interrupted at step 7 of 100 (grpo; checkpoint: step 5); resume with: rlp grpo recipes/grpo_tiny.yaml "
        f"grpo.steps=100 'rewards.functions=[{{name: math}}]' --run-dir {tmp_path} --resume")


def test_training_command_without_a_checkpoint_starts_again(tmp_path):
    interrupt.in_run_dir(tmp_path)
    interrupt.at_step("sft", 3, 50)
    assert interrupt.line(["-v", "sft", "r.yaml", f"--run-dir={tmp_path}"]) == (
        "interrupted at step 3 of 50 (sft; no checkpoint yet); start again with: rlp -v sft r.yaml")


def test_before_any_step_and_other_commands():
    assert interrupt.line(["grpo", "r.yaml"]) == "interrupted (no checkpoint yet); start again with: rlp grpo r.yaml"
    assert interrupt.line(["pipeline", "p.yaml", "--run-dir", "runs/p"]) == (
        "interrupted; resume with: rlp pipeline p.yaml --run-dir runs/p")
    assert interrupt.line(["eval", "r.yaml"]) == "interrupted"


DRIVER = """
import sys, time
from rl_pipeline import interrupt
interrupt.install()
interrupt.GRACE_S = 1.0
interrupt.at_step("grpo", 4, 9)
try:
    print("waiting", flush=True)
    time.sleep(600)
except KeyboardInterrupt:
    # injected fault: a cleanup that never ends (a polite close queued behind a busy actor)
    while True:
        time.sleep(0.01)
"""


@pytest.mark.timeout(60)
def test_a_cleanup_that_waits_forever_still_ends_with_the_line():
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "grpo", "r.yaml"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "waiting\n"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # GRACE_S is 1 s here
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "interrupted at step 4 of 9 (grpo; no checkpoint yet); start again with: rlp grpo r.yaml")
