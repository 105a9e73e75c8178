"""What `rlp` prints: without --verbose, the actors' output (vLLM, DeepSpeed, their warnings)
stays in the Ray session's log files and the console says where in one line; an actor's error
still reaches the console. With --verbose the actors' output is on the console too. The driver's
own library chatter (DeepSpeed's "Setting accelerator to CPU", transformers' progress bars) is
off the console unless verbose.

Each case runs a small driver in its own process, configured as the CLI configures it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = """
import sys
from rl_pipeline import console
console.configure(verbose=sys.argv[1] == "verbose")
import ray
from rl_pipeline.cluster import connect
from rl_pipeline.config import ClusterConfig

@ray.remote(num_cpus=0)
class Noisy:
    def speak(self):
        import logging, warnings
        print("ACTOR-PRINTS-THIS", file=sys.stderr, flush=True)
        warnings.warn("ACTOR-WARNS-THIS")
        return "done"

    def fail(self):
        raise ValueError("ACTOR-ERROR-REACHES-THE-CONSOLE")

with connect(ClusterConfig(num_cpus=1)):
    actor = Noisy.remote()
    print(ray.get(actor.speak.remote()), flush=True)
    import time; time.sleep(2)  # Ray forwards worker output once a second or so
    ray.get(actor.fail.remote())
"""


def run_driver(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, mode], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


@pytest.mark.timeout(300)
def test_actor_output_stays_in_the_session_logs_and_errors_reach_the_console():
    done = run_driver("quiet")
    console = done.stdout + done.stderr
    assert done.returncode != 0 and "ACTOR-ERROR-REACHES-THE-CONSOLE" in console, console[-3000:]
    assert "ACTOR-PRINTS-THIS" not in console and "ACTOR-WARNS-THIS" not in console, console[-3000:]
    assert "INFO worker.py" not in console  # Ray's own start-up lines
    where = re.search(r"Started a local Ray instance; the actors' output \(vLLM, DeepSpeed\) is in (\S+)/logs "
                      r"\(rlp --verbose shows it here\)", console)
    assert where, console[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in Path(where.group(1), "logs").glob("worker-*"))
    assert "ACTOR-PRINTS-THIS" in logs and "ACTOR-WARNS-THIS" in logs  # where the line says


@pytest.mark.timeout(300)
def test_verbose_shows_the_actor_output_on_the_console():
    done = run_driver("verbose")
    console = done.stdout + done.stderr
    assert "ACTOR-PRINTS-THIS" in console and "ACTOR-WARNS-THIS" in console, console[-3000:]
    assert "ACTOR-ERROR-REACHES-THE-CONSOLE" in console


LIBRARIES = """
import sys
from rl_pipeline import console
console.configure(verbose=sys.argv[1] == "verbose")
import deepspeed  # announces the CPU accelerator when it first looks for one
from deepspeed.accelerator import get_accelerator
get_accelerator()
from rl_pipeline.models.tiny import build_tiny_model
build_tiny_model(sys.argv[2])  # transformers' save_pretrained shows a "Writing model shards" bar
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_the_drivers_library_chatter_only_when_verbose(tmp_path, mode):
    done = subprocess.run([sys.executable, "-c", LIBRARIES, mode, str(tmp_path / "model")], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr  # DeepSpeed's logger writes to stdout
    shown = "Setting accelerator to CPU" in console and "Writing model shards" in console
    hidden = "Setting accelerator to CPU" not in console and "Writing model shards" not in console
    assert shown if mode == "verbose" else hidden, console[-3000:]
