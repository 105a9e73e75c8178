"""Ctrl-C: `rlp` stops within seconds wherever the driver waits, and says in one line how to resume.

The drivers note where a run is: `progress.StepProgress` the stage and the steps done,
`checkpoint.RunDir` the run directory (whose `checkpoints/latest` says what a resume restarts
from). On a Ctrl-C the CLI prints one line from that, e.g.
`interrupted at step 7 of 100 (grpo; checkpoint: step 5); resume with: rlp grpo RECIPE ... --run-dir DIR --resume`,
and exits with status 130.

Why a watcher thread as well as KeyboardInterrupt: Python runs a SIGINT handler only on the main
thread, between bytecodes, and the cleanup a KeyboardInterrupt runs may itself wait (an actor
busy with a long call answers a polite `close` only after it; a thread blocked in `ray.get`
cannot be joined). The signal's C-level handler writes its number to a wakeup socket at once,
whatever the main thread is doing; a daemon thread reading that socket gives the cleanup
`GRACE_S` seconds, then prints the line and ends the process. A second Ctrl-C ends it at once.
A local Ray instance `rlp` started is stopped by `ray_reaper` when this process ends, however it
ends; a cluster's Ray ends the job's actors when the driver disconnects.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 8.0  # a Ctrl-C ends the process by then, even if the cleanup still waits
EXIT_CODE = 130  # 128 + SIGINT, what shells report for a job stopped by Ctrl-C
TRAINING_COMMANDS = ("sft", "grpo", "rm")  # resumed with --run-dir DIR --resume
RERUN_COMMANDS = ("pipeline", "demo", "distill")  # resumed by running the same command again


@dataclass
class _Position:
    stage: str | None = None
    step: int = 0
    total: int = 0
    run_dir: Path | None = None


_position = _Position()
_state = {"requested_at": None, "reported": False}
_lock = threading.Lock()


def at_step(stage: str, step: int, total: int) -> None:
    """Steps done so far in `stage` (StepProgress calls this)."""
    _position.stage, _position.step, _position.total = stage, step, total


def in_run_dir(path: str | Path) -> None:
    """The run directory of the running stage (RunDir.open calls this)."""
    _position.run_dir = Path(path)


def requested() -> bool:
    """Whether a Ctrl-C (SIGINT) arrived: cleanups skip what could wait on busy actors."""
    return _state["requested_at"] is not None


def install() -> None:
    """Route SIGINT to KeyboardInterrupt plus the watcher; call once, on the main thread."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return  # started with Ctrl-C ignored (a background job): keep it so
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, _on_sigint)
    threading.Thread(target=_watch, args=(reader, writer), name="rlp-interrupt", daemon=True).start()


def _on_sigint(signum, frame) -> None:
    _note()
    raise KeyboardInterrupt


def _note() -> bool:
    """Record a Ctrl-C; True when it is the first."""
    with _lock:
        first = _state["requested_at"] is None
        if first:
            _state["requested_at"] = time.monotonic()
        return first


def _watch(reader: socket.socket, writer: socket.socket) -> None:
    # `writer` stays referenced here: the wakeup fd must stay open as long as the process lives.
    seen = 0
    while True:
        data = reader.recv(64)
        if not data:
            return
        new = data.count(signal.SIGINT)
        if not new:
            continue  # another signal with a Python handler
        seen += new
        _note()
        if seen > 1:
            finish()  # a second Ctrl-C: no more waiting
        threading.Thread(target=_finish_after, args=(GRACE_S,), name="rlp-interrupt-grace", daemon=True).start()


def _finish_after(seconds: float) -> None:
    time.sleep(seconds)
    finish()


def finish() -> None:
    """Print the interrupted line (once) and end the process with status 130, without waiting
    for threads still blocked on actors (the interpreter's exit would join them)."""
    with _lock:
        if not _state["reported"]:
            _state["reported"] = True
            sys.stdout.flush()
            print(line(sys.argv[1:]), file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)


def line(argv: list[str]) -> str:
    """`interrupted at step N of M (...); resume with: rlp ...` for the command in `argv`."""
    command = next((a for a in argv if not a.startswith("-")), "")
    head, notes, then = "interrupted", [], None
    if _position.stage is not None:
        head = f"interrupted at step {_position.step} of {_position.total}"
        notes.append(_position.stage)
    if command in TRAINING_COMMANDS:
        checkpoint, rest = _latest_checkpoint(_position.run_dir), _without_run_dir(argv)
        if checkpoint is not None:
            notes.append(f"checkpoint: step {checkpoint}")
            then = f"resume with: {_rlp(rest + ['--run-dir', str(_position.run_dir), '--resume'])}"
        else:  # nothing to resume from: a fresh run (its own run directory) starts over
            notes.append("no checkpoint yet")
            then = f"start again with: {_rlp(rest)}"
    elif command in RERUN_COMMANDS:
        then = f"resume with: {_rlp(argv)}"
    text = head + (f" ({'; '.join(notes)})" if notes else "")
    return f"{text}; {then}" if then else text


def _latest_checkpoint(run_dir: Path | None) -> int | None:
    """The step of run_dir's newest complete checkpoint (`checkpoints/latest`: `step_00000005`)."""
    if run_dir is None:
        return None
    try:
        return int((run_dir / "checkpoints" / "latest").read_text().strip().rpartition("_")[2])
    except (OSError, ValueError):
        return None


def _without_run_dir(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--run-dir":
            skip = True
        elif not (arg == "--resume" or arg.startswith("--run-dir=")):
            out.append(arg)
    return out


def _rlp(args: list[str]) -> str:
    return shlex.join(["rlp", *args])
