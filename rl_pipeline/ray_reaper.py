"""A local Ray instance started by `rlp` does not outlive it, even after a SIGKILL.

Ray ties its head processes (GCS, raylet) to the driver that started them, but the raylet's two
agents (DashboardAgent, RuntimeEnvAgent) outlive a raylet that died unexpectedly by 60-100 s:
they first try to report the death to the GCS, which is gone too, and wait out a 60 s timeout.

`watch(session_dir)` starts this module as a small process in its own session, reading a pipe
whose only writer is the driver. The pipe reaches end-of-file when the driver closes it or
dies, however it dies; the reaper then kills every process that still has a file open in the
Ray session's folder (each process of a session keeps its log files there: GCS, raylet, agents,
workers, and the processes those start) and their children, and exits. Other Ray instances on
the machine have other session folders and are never touched.

This module imports no rl_pipeline code: the reaper starts in a fraction of a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

GIVE_UP_AFTER_S = 30.0  # processes that are still starting keep appearing for a moment


def watch(session_dir: str) -> "Reaper":
    """Start the reaper for the Ray session in `session_dir`; close it when the instance is shut down."""
    read_end, write_end = os.pipe()  # both non-inheritable: no other child holds the write end
    try:
        process = subprocess.Popen([sys.executable, "-m", "rl_pipeline.ray_reaper", session_dir, str(os.getpid())],
                                   stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return Reaper(process, write_end)


class Reaper:
    def __init__(self, process: subprocess.Popen, write_end: int) -> None:
        self.process, self.write_end = process, write_end

    def close(self, wait_s: float = 10.0) -> None:
        """After `ray.shutdown()`: the reaper kills what is left of the session and exits. After a
        Ctrl-C the driver does not wait for it: the user is waiting for the prompt."""
        from rl_pipeline import interrupt  # runs in the driver only, never in the reaper process

        if interrupt.requested():
            wait_s = 0.0
        if self.write_end is not None:
            os.close(self.write_end)
            self.write_end = None
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass  # it goes on alone; the driver need not wait for it


def session_processes(session_dir: str, spare: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Processes with a file open under `session_dir`, and every descendant of those; never
    this process or those in `spare` (a living driver may still hold its own Ray log file)."""
    prefix = str(Path(session_dir).resolve()) + os.sep
    spare = spare | {os.getpid()}
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        if process.pid in spare:
            continue
        try:
            if any(f.path.startswith(prefix) for f in process.open_files()):
                found[process.pid] = process
                for child in process.children(recursive=True):
                    found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [p for pid, p in found.items() if pid not in spare]


def reap(session_dir: str, spare: frozenset[int] = frozenset(), give_up_after_s: float = GIVE_UP_AFTER_S) -> None:
    """SIGKILL the session's processes until none is left (or `give_up_after_s` passed)."""
    deadline = time.monotonic() + give_up_after_s
    while time.monotonic() < deadline:
        left = session_processes(session_dir, spare)
        if not left:
            return
        for process in left:
            try:
                process.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        psutil.wait_procs(left, timeout=2)


def main(session_dir: str, driver_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle
    while sys.stdin.buffer.read(65536):  # nothing is ever written: returns b"" at end-of-file
        pass
    reap(session_dir, spare=frozenset({driver_pid}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
