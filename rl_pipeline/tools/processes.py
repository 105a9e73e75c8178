"""User tools run in worker processes, so a call that overruns its limit can be stopped.

A thread cannot be stopped, and a call that holds the GIL (a big-int power, a long C loop)
freezes every driver thread, the one that would enforce the timeout included. So every tool not
registered ``inline`` (the built-ins bound their own cost) runs in a worker process
(``python -m rl_pipeline.tools.processes``, its own process group, SIGKILLed if the driver
dies) that imports the tools itself from :attr:`Tool.locator`. Each call checks a worker out
(an idle one, or a new one; start-up is not counted against the call's limit), and waits for
its answer at most ``timeout_s``: past that the worker's whole process group is SIGKILLed and
the call answered ``error: timeout``; a worker that dies answers an error and is dropped.

Why not ``rewards.pool.SamplePool``: its workers score reward functions in batches from one
loop; here each driver thread of :class:`~rl_pipeline.tools.calls.ToolRunner` owns one worker
for one call. The process plumbing (pipes, a new session, death with the parent) is the same.
Answers come back as JSON bytes of bounded size, never pickles: a worker runs code that reads
the policy's arguments, and unpickling its bytes in the driver would run whatever they say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

START_TIMEOUT_S = 60.0
MAX_OUTPUT_CHARS = 256_000  # a tool's output is cut here in the worker (the rollout keeps far less)
MAX_ANSWER_BYTES = 4 << 20  # a longer answer is an error: the worker broke its own cut


class _Worker:
    """One worker process and its two pipes (requests in, JSON answers out)."""

    def __init__(self, tools: dict[str, tuple[str, dict[str, Any]]]) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rl_pipeline.tools.processes", str(child_read), str(child_write), str(os.getpid())],
            pass_fds=(child_read, child_write), start_new_session=True, stdin=subprocess.DEVNULL,
        )
        os.close(child_read)
        os.close(child_write)
        self.reader = Connection(parent_read, writable=False)
        self.writer = Connection(parent_write, readable=False)
        self.writer.send((tools, sys.path))  # the driver's path: tools import as they did here

    def answer(self, timeout_s: float) -> dict[str, Any] | None:
        """The next JSON answer, or None when none came within `timeout_s`."""
        if not self.reader.poll(timeout_s):
            return None
        return json.loads(self.reader.recv_bytes(MAX_ANSWER_BYTES))

    def kill(self) -> int:
        """SIGKILL the worker's process group (the tool's children too); its exit code."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        self.reader.close()
        self.writer.close()
        return code


class ToolProcesses:
    """Worker processes for the tools ``{call name: (locator, kwargs)}``; :meth:`call` is thread-safe."""

    def __init__(self, tools: dict[str, tuple[str, dict[str, Any]]]) -> None:
        self.tools = tools
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()
        self.closed = False
        # Workers are started from this one long-lived thread: a worker dies with the thread that
        # started it (PR_SET_PDEATHSIG is per thread), and the runner's threads come and go.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tool-spawn")

    def call(self, name: str, arguments: dict[str, Any], timeout_s: float, on_start=lambda: None) -> tuple[str, str]:
        """(output, status) of one call; status ok | error | timeout. `on_start` runs when the
        worker is ready and the call's run time starts."""
        worker, problem = self._checkout()
        if worker is None:
            return f"error: the tool's worker process did not start: {problem}", "error"
        on_start()
        try:
            worker.writer.send_bytes(json.dumps({"name": name, "arguments": arguments}).encode())
            answer = worker.answer(timeout_s)
        except (OSError, EOFError, ValueError) as exc:  # died, or an answer too long or not JSON
            code = worker.kill()
            why = f"exit code {code}" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
            return f"error: tool {name!r} failed in its worker process ({why})", "error"
        if answer is None:
            worker.kill()
            return f"error: timeout: tool {name!r} ran past its {timeout_s:g} s limit and was stopped", "timeout"
        self._checkin(worker)
        return str(answer.get("output")), "ok" if answer.get("status") == "ok" else "error"

    def _checkout(self) -> tuple[_Worker | None, str]:
        with self.lock:
            if self.idle:
                return self.idle.pop(), ""
        try:
            worker = self.spawner.submit(_Worker, self.tools).result()
        except (OSError, RuntimeError) as exc:  # no process to be had (fork failed), or closed
            return None, f"{type(exc).__name__}: {exc}"
        try:
            ready = worker.answer(START_TIMEOUT_S)
        except (OSError, EOFError, ValueError) as exc:
            ready = {"status": "error", "output": f"it exited ({type(exc).__name__})"}
        if ready is None or ready.get("status") != "ready":
            worker.kill()
            return None, (ready or {}).get("output", f"no answer within {START_TIMEOUT_S:g} s")
        return worker, ""

    def _checkin(self, worker: _Worker) -> None:
        with self.lock:
            if not self.closed:
                self.idle.append(worker)
                return
        worker.kill()

    def close(self) -> None:
        """Kill the idle workers; a worker still busy is killed when its call returns."""
        with self.lock:
            self.closed, idle, self.idle = True, self.idle, []
        for worker in idle:
            worker.kill()
        self.spawner.shutdown(wait=False)


def _run(tools: dict[str, Any], request: dict[str, Any]) -> dict[str, str]:
    try:
        return {"status": "ok", "output": tools[request["name"]](request["arguments"])[:MAX_OUTPUT_CHARS]}
    except BaseException as exc:  # noqa: BLE001 - a tool may raise anything, even SystemExit
        try:
            return {"status": "error", "output": f"error: {type(exc).__name__}: {exc}"}
        except BaseException:  # noqa: BLE001 - an exception whose str() raises
            return {"status": "error", "output": f"error: {type(exc).__name__}"}


def worker_main(read_fd: int, write_fd: int, parent_pid: int) -> None:
    """Body of a worker: import the tools, say ready, then answer calls until the pipe closes."""
    from rewards.pool import _die_with  # the reward pool's death-with-parent, shared on purpose
    from rl_pipeline.tools import Tool, resolve

    _die_with(parent_pid)
    reader, writer = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    specs: dict[str, tuple[str, dict[str, Any]]]
    specs, path = reader.recv()
    sys.path[:] = path
    try:
        tools = {name: Tool(name, resolve(locator), kwargs) for name, (locator, kwargs) in specs.items()}
    except BaseException:  # noqa: BLE001 - reported to the caller, which answers the call with it
        writer.send_bytes(json.dumps({"status": "failed", "output": traceback.format_exc(limit=3)}).encode())
        return
    writer.send_bytes(b'{"status": "ready"}')
    while True:
        try:
            request = json.loads(reader.recv_bytes())
        except EOFError:
            return
        # ensure_ascii: a str with an unpaired surrogate still encodes (the driver cleans it).
        writer.send_bytes(json.dumps(_run(tools, request)).encode())


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
