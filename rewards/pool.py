"""A process pool that runs reward functions one sample at a time, with a hard per-sample timeout.

Why not ``signal.alarm`` or threads: an alarm only fires on a process's main thread (inside a
Ray actor or a thread pool it silently never fires, or raises), and a thread cannot be
stopped. Here every worker is a separate Python process (``python -m rewards.pool``, its own
process group) talking over a pipe; a sample that runs past its deadline gets its worker's
whole process group SIGKILLed and a fresh worker started, and is reported as a timeout. A
worker that dies (segfault, out of memory) is replaced and its sample reported as an error.

A batch has one deadline too (``deadline``, a ``time.monotonic()`` instant): when it passes,
the samples still running are killed as above and those not yet started are not run; all of
them are reported as timeouts. So a batch never takes longer than its deadline, however many
samples it has and however slow the function is (not samples x timeout / workers).

Functions are named as in :func:`rewards.get` (registered name, ``module:function``,
``/abs/path/file.py:function``) and resolved inside each worker, so the pool works the same
from a plain script, a test, or a Ray actor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FunctionSpec:
    """A reward function as the pool workers build it: ``rewards.get(name, **kwargs)``."""

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """Score one sample with function ``function`` (an index into the pool's specs)."""

    function: int
    prompt: str
    completion: str
    columns: dict[str, Any]


@dataclass
class Outcome:
    """``status`` is ``ok``, ``error`` (raised or worker died), ``invalid`` (bad output) or ``timeout``."""

    status: str
    score: float | None = None
    error: str | None = None
    started: bool = True  # False: a timeout of a sample the batch deadline left in the queue


class _Worker:
    def __init__(self, specs: list[FunctionSpec]) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewards.pool", str(child_read), str(child_write), str(os.getpid())],
            pass_fds=(child_read, child_write), start_new_session=True,
        )
        os.close(child_read)
        os.close(child_write)
        self.reader = Connection(parent_read, writable=False)
        self.writer = Connection(parent_write, readable=False)
        self.writer.send(specs)
        self.ready = False  # set when the worker has imported and resolved every function
        self.task: int | None = None
        self.deadline = time.monotonic() + START_TIMEOUT_S

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.reader.close()
        self.writer.close()


class SamplePool:
    """``num_workers`` processes scoring samples; :meth:`run` returns one Outcome per task."""

    def __init__(self, specs: list[FunctionSpec], num_workers: int = 2) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.specs = list(specs)
        self.workers = [_Worker(self.specs) for _ in range(num_workers)]
        self.restarts = 0

    def run(self, tasks: list[Task], timeout_s: float, deadline: float = float("inf")) -> list[Outcome]:
        """One Outcome per task: each sample within ``timeout_s``, the whole batch by ``deadline``
        (a ``time.monotonic()`` instant; samples not scored by then are timeouts)."""
        outcomes: list[Outcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        while queue or any(w.task is not None for w in self.workers):
            if time.monotonic() >= deadline:
                self._stop(queue, outcomes, "the batch deadline")
                break
            for worker in self.workers:
                if worker.ready and worker.task is None and queue:
                    self._send(worker, queue.popleft(), tasks, timeout_s, outcomes)
            waiting = [w for w in self.workers if w.task is not None or not w.ready]
            wait_s = max(0.0, min([w.deadline for w in waiting] + [deadline]) - time.monotonic())
            ready = wait([w.reader for w in waiting], timeout=wait_s)
            for worker in waiting:
                if worker.reader in ready:
                    if self._receive(worker, outcomes) == "invalid":
                        # A function that breaks the API fails the batch: no need to score the rest.
                        self._stop(queue, outcomes, "a function's invalid output")
                        return outcomes  # type: ignore[return-value]
                elif time.monotonic() >= worker.deadline:
                    self._expire(worker, outcomes, timeout_s)
        return outcomes  # type: ignore[return-value]

    def _stop(self, queue: deque[int], outcomes: list[Outcome | None], why: str) -> None:
        """Kill the samples in flight and give up on the queued ones (timeouts, naming `why`)."""
        for worker in list(self.workers):
            if worker.task is not None:
                outcomes[worker.task] = Outcome("timeout", error=f"still running at {why}")
                self._replace(worker)  # its replacement starts now, ready before the next batch
        while queue:
            outcomes[queue.popleft()] = Outcome("timeout", error=f"not started by {why}", started=False)

    def _expire(self, worker: _Worker, outcomes: list[Outcome | None], timeout_s: float) -> None:
        if worker.task is None:
            raise RuntimeError(f"a reward worker did not start within {START_TIMEOUT_S:g} s")
        outcomes[worker.task] = Outcome("timeout", error=f"timed out after {timeout_s:g} s")
        self._replace(worker)

    def _send(self, worker: _Worker, index: int, tasks: list[Task], timeout_s: float,
              outcomes: list[Outcome | None]) -> None:
        try:
            worker.writer.send((index, tasks[index]))
        except (BrokenPipeError, OSError):
            outcomes[index] = Outcome("error", error="reward worker process died before the sample")
            self._replace(worker)
            return
        worker.task, worker.deadline = index, time.monotonic() + timeout_s

    def _receive(self, worker: _Worker, outcomes: list[Outcome | None]) -> str | None:
        """Read the worker's message; returns the status of the sample it finished, if any."""
        try:
            message = worker.reader.recv()
        except (EOFError, OSError):
            if worker.task is None:
                raise RuntimeError(f"a reward worker exited at start (code {worker.proc.wait()})") from None
            code = worker.proc.wait()
            outcomes[worker.task] = Outcome("error", error=f"reward worker process died (exit code {code})")
            self._replace(worker)
            return "error"
        if message == "ready":
            worker.ready = True
            return None
        index, outcome = message
        outcomes[index] = outcome
        worker.task = None
        return outcome.status

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.restarts += 1
        fresh = _Worker(self.specs)
        self.workers[self.workers.index(worker)] = fresh

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []

    def __enter__(self) -> SamplePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _score_one(fn: Any, task: Task) -> Outcome:
    from rewards import RewardOutputError

    if isinstance(fn, str):  # the function could not be built: report its traceback
        return Outcome("error", error=fn)
    try:
        columns = {key: [value] for key, value in task.columns.items()}
        score = fn([task.prompt], [task.completion], **columns)[0]
    except RewardOutputError as exc:
        return Outcome("invalid", error=str(exc))
    except BaseException:  # noqa: BLE001 - a reward may raise anything, even SystemExit
        return Outcome("error", error=traceback.format_exc())
    return Outcome("ok", score=score)


def _build(spec: FunctionSpec) -> Any:
    """The callable for a spec, warmed up (heavy imports done), or the traceback as a string."""
    import rewards

    try:
        fn = rewards.get(spec.name, **spec.kwargs)
        warmup = getattr(fn.target, "warmup", None)
        if callable(warmup):
            warmup()
        return fn
    except BaseException:  # noqa: BLE001
        return traceback.format_exc()


def _die_with(parent_pid: int) -> None:
    """SIGKILL this worker when its parent dies (Linux), so a killed service leaves no workers."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def worker_main(read_fd: int, write_fd: int, parent_pid: int) -> None:
    """Body of a pool worker process: build the functions, then score samples until EOF."""
    _die_with(parent_pid)
    reader, writer = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    specs: list[FunctionSpec] = reader.recv()
    fns = [_build(spec) for spec in specs]
    writer.send("ready")
    while True:
        try:
            index, task = reader.recv()
        except EOFError:
            return
        writer.send((index, _score_one(fns[task.function], task)))


if __name__ == "__main__":
    from rewards.pool import worker_main as _main  # classes must pickle as rewards.pool.*

    logging.basicConfig(level=logging.WARNING)
    _main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
