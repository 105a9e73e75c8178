"""Run an untrusted Python program in a sandbox and return what it printed.

Each run gets its own process group (``setsid``), a fresh temporary directory (its only
writable place), a scrubbed environment (``PATH``, ``LANG``, ``HOME``/``TMPDIR`` = its
directory, nothing of the caller's), resource limits (CPU seconds, address space, file size,
process count, open files) and a wall-clock timeout; afterwards the whole process group is
SIGKILLed and the directory removed. The launcher (``_sandbox_init.py``) adds, where the
kernel allows: new network, mount, PID, IPC and UTS namespaces (so there is no network at
all, only a down loopback; every process the program started dies with it, even after
``setsid``; the rest of the filesystem is read-only), and when running as root a switch to
uid/gid 65534 (root ignores RLIMIT_NPROC).

Where namespaces are unavailable (no root and unprivileged user namespaces disabled) the
program still runs with the limits, group kill and scrubbed environment, but the network is
NOT isolated, a child that calls ``setsid()`` can outlive the run, and files writable by the
caller's user stay writable; :func:`isolation` reports this and a warning is logged once.

Programs run as ``python -I -S -B``: the standard library only, no site-packages, no user
site, no environment-driven imports. As root the interpreter must be executable by uid 65534,
so a system Python (e.g. ``/usr/bin/python3``) is used when the caller's lives under ``/root``.

Stdout/stderr go to files the program cannot see (so RLIMIT_FSIZE also caps them) and are read
back up to ``max_output_bytes``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_sandbox_init.py")
NOBODY = 65534
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
_WARNED: set[str] = set()


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 32
    open_files: int = 64
    tmpfs_bytes: int = 1 << 20
    max_output_bytes: int = 1 << 20


@dataclass
class SandboxResult:
    """Outcome of one run: exit code (negative of a signal if killed), outputs, timing."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    isolation: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_python(
    source: str,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``source`` as ``main.py`` with ``stdin``; ``files`` are extra files beside it."""
    files = {"main.py": source, **(files or {})}
    return run(["main.py"], stdin=stdin, limits=limits, files=files, env=env, python=python)


def run(
    args: list[str],
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``python -I -S -B *args`` in a new sandbox directory holding ``files``."""
    limits = limits or SandboxLimits()
    interpreter = python or sandbox_python()
    private = Path(tempfile.mkdtemp(prefix="rlp-sandbox-io-"))  # outputs: unseen by the program
    workdir = Path(tempfile.mkdtemp(prefix="rlp-sandbox-"))
    try:
        _populate(workdir, files or {})
        cfg = _launch_config(interpreter, args, workdir, private, limits, env or {})
        return _execute(cfg, stdin, private, limits)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def isolation() -> dict:
    """Which layers a run gets on this machine (runs a trivial program once)."""
    return run_python("pass", limits=SandboxLimits(wall_s=10)).isolation


def sandbox_python() -> str:
    """An interpreter the sandbox user can execute: ours if world-executable, else a system one."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (os.path.realpath(sys.executable), *PYTHON_CANDIDATES):
        if os.path.exists(candidate) and _world_executable(candidate):
            return candidate
    raise RuntimeError(
        "no Python interpreter executable by the sandbox user (uid 65534) was found: "
        f"{sys.executable} is not world-executable and none of {PYTHON_CANDIDATES} exists"
    )


def _world_executable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    if not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)


def _populate(workdir: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = workdir / name
        if target.resolve().parent != workdir.resolve():
            raise ValueError(f"sandbox file name {name!r} must be a plain file name")
        target.write_text(text)
    if os.geteuid() == 0:
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, NOBODY, NOBODY)
    workdir.chmod(0o700)


def _launch_config(
    interpreter: str, args: list[str], workdir: Path, private: Path, limits: SandboxLimits,
    extra_env: dict[str, str],
) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir),
           "TMPDIR": str(workdir), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
           **extra_env}
    return {
        "argv": [interpreter, "-I", "-S", "-B", *args],
        "env": env,
        "workdir": str(workdir),
        "report_path": str(private / "report.json"),
        "init_pid_path": str(private / "init_pid"),
        "uid": NOBODY, "gid": NOBODY,
        "limits": asdict(limits),
    }


def _execute(cfg: dict, stdin: str, private: Path, limits: SandboxLimits) -> SandboxResult:
    (private / "stdin").write_text(stdin)
    start = time.monotonic()
    timed_out = False
    with open(private / "stdin", "rb") as fin, open(private / "stdout", "wb") as fout, \
            open(private / "stderr", "wb") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg)],
            stdin=fin, stdout=fout, stderr=ferr, cwd="/", env={"PATH": "/usr/bin:/bin"},
            start_new_session=True, close_fds=True,
        )
        try:
            returncode = proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            returncode = proc.wait()
    _wait_namespace_gone(private / "init_pid")
    wall = time.monotonic() - start
    report = _read_report(private / "report.json")
    _warn_if_weak(report)
    return SandboxResult(
        returncode=returncode,
        stdout=_read_capped(private / "stdout", limits.max_output_bytes),
        stderr=_read_capped(private / "stderr", limits.max_output_bytes),
        timed_out=timed_out,
        wall_s=wall,
        isolation=report,
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_namespace_gone(init_pid_path: Path, limit_s: float = 5.0) -> None:
    """After a kill, wait until the namespace's init has exited: the kernel reaps every process
    of the namespace before its init is gone, so nothing of the run is left when we return."""
    try:
        pid = int(init_pid_path.read_text())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)
    logger.warning("sandbox: the namespace of pid %d still has processes %.0f s after the kill", pid, limit_s)


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"namespaces": None, "error": "launcher wrote no report"}


def _warn_if_weak(report: dict) -> None:
    if report.get("namespaces") is False and "no-namespaces" not in _WARNED:
        _WARNED.add("no-namespaces")
        logger.warning(
            "sandbox: the kernel refused new namespaces (errno %s): programs run with resource "
            "limits and a scrubbed environment but WITH network access and without PID/mount "
            "isolation", report.get("unshare_errno"),
        )
