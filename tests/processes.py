"""Fault injection shared by the resume tests: start a CLI run in its own process group, wait
for a checkpoint, then SIGKILL the whole group (the driver and the local Ray it started)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_checkpoint(cmd: list[str], run_dir: Path, step: int, timeout_s: float, env=None) -> None:
    """Run `cmd`; once run_dir's latest checkpoint is at `step` or later, SIGKILL its process group."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest, wanted = run_dir / "checkpoints" / "latest", f"step_{step:08d}"
    deadline = time.time() + timeout_s
    while not (latest.exists() and latest.read_text().strip() >= wanted) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    assert latest.exists(), "no checkpoint appeared in time"
    proc.send_signal(signal.SIGKILL)  # the fault: the driver dies without any cleanup
    proc.wait()
    try:  # what is left of its group: the local Ray instance it started
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert not (run_dir / "final_model").exists(), "killed too late: the run had already finished"
