"""A local Ray instance started by `rlp` does not outlive the driver, even one killed by SIGKILL.

The fault: the driver process is SIGKILLed (and only it, as `kill -9 PID` does) while its local
Ray instance runs a task; Ray's raylet agents (DashboardAgent, RuntimeEnvAgent) used to stay for
60-100 s. What must hold: within a short bounded wait no process of that Ray session is left.
A clean exit leaves none either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from rl_pipeline.ray_reaper import session_processes

DRIVER = """
import sys, time
import ray
from rl_pipeline.cluster import connect
from rl_pipeline.config import ClusterConfig

with connect(ClusterConfig(num_cpus=1)):
    print(ray.get_runtime_context().gcs_address, flush=True)
    from ray._private.worker import _global_node
    print(_global_node.get_session_dir_path(), flush=True)
    print(ray.get(ray.remote(lambda: "worker up").remote()), flush=True)  # a worker process too
    if sys.argv[1] == "hang":
        time.sleep(600)
"""


def _start_driver(mode: str) -> tuple[subprocess.Popen, str]:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    driver.stdout.readline()
    session_dir = driver.stdout.readline().strip()
    assert driver.stdout.readline().strip() == "worker up"
    return driver, session_dir


def _names(processes) -> list[str]:
    out = []
    for p in processes:
        try:
            out.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return out


def _wait_until_gone(session_dir: str, within_s: float) -> list:
    deadline = time.monotonic() + within_s
    left = session_processes(session_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = session_processes(session_dir)
    return left


def _kill(processes) -> None:
    for p in processes:  # cleanup after a failure: only this session's processes, by pid
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.mark.timeout(300)
def test_sigkill_of_the_driver_leaves_no_process_of_its_local_ray():
    driver, session_dir = _start_driver("hang")
    deadline = time.monotonic() + 60  # the agents start a moment after the raylet
    while time.monotonic() < deadline:
        running = session_processes(session_dir, spare=frozenset({driver.pid}))
        names = " ".join(_names(running))
        if "DashboardAgent" in names and "RuntimeEnvAgent" in names:
            break
        time.sleep(0.2)
    assert "DashboardAgent" in names and "RuntimeEnvAgent" in names and "raylet" in names, names

    driver.send_signal(signal.SIGKILL)  # the fault
    driver.wait()
    left = _wait_until_gone(session_dir, within_s=20)  # the agents alone used to stay 60 s and more
    _kill(left)
    assert not left, f"left running after the driver died: {_names(left)}"


@pytest.mark.timeout(300)
def test_a_clean_exit_leaves_no_process_of_its_local_ray():
    driver, session_dir = _start_driver("exit")
    assert driver.wait(timeout=120) == 0
    left = _wait_until_gone(session_dir, within_s=20)
    _kill(left)
    assert not left, f"left running after the driver exited: {_names(left)}"
