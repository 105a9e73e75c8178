"""Run an untrusted Python program in a sandbox and return what it printed.

Each run gets its own process group (``setsid``), a scrubbed environment (``PATH``, ``LANG``,
``HOME``/``TMPDIR`` = its folder, nothing of the caller's), resource limits (CPU seconds,
address space, file size, process count, open files) and a wall-clock timeout; afterwards the
whole process group is SIGKILLed. Configuration, program files, stdin, stdout, stderr and the
launcher's report all travel through pipes: a run writes nothing on the host's disk, so a
caller killed mid-run (a pool worker past its timeout) leaves no folder behind.

The launcher (``_sandbox_init.py``) puts the program in new network, mount, PID, IPC and UTS
namespaces (no network at all, only a down loopback; every process the program started dies
with it, even after ``setsid``) and on a new root (``pivot_root``) that holds only the Python
runtime, read-only (the layout from :func:`rewards._sandbox_runtime.runtime_layout`: the
interpreter, its standard library, the folders of the libraries it loads), ``/dev/null``,
``/dev/zero``, ``/dev/urandom``, a fresh ``/proc`` and a private tmpfs of ``tmpfs_bytes`` at
``/tmp`` (its files in ``/tmp/sandbox``, the only writable place): the host's tree (project,
home folders, datasets, ``/work``, ``/srv``, ``/opt``, ``/mnt``) is not there to read. The
program holds no capability, so it can remount nothing, and may create no namespace of any
kind. As root it runs as uid/gid 65534 in a user namespace of its own (mapped to host 65534); a
non-root caller's program is uid 0 without capabilities of the launcher's user namespace.
Either way the user namespace is the run's own, so ``RLIMIT_NPROC`` counts this run's
processes and threads only (kernel 5.14 and later), not those of every concurrent sandbox.

Fail closed. Where the kernel refuses namespaces (unprivileged containers, a non-root pod
without user namespaces) the launcher refuses to run the program (exit 126) unless the caller
passes ``require_isolation=False`` (trusted local experiments only): then it runs with the
limits but with the network on, the host's files visible, the caller's files writable, and its
files in a host temporary folder that a kill of the launcher can leave behind. A layer that
fails to build (a mount, the seccomp filter on an unknown architecture) ends the run before
the program starts. :func:`isolation_problem` says, from a probe program run once per process,
whether this machine isolates fully (no capability, no network, own PID namespace, nothing of
the host's tree, no memfd, no nested user namespace, a kernel that counts processes per
user namespace).

Memory. ``memory_bytes`` bounds the whole process tree without cgroups: each process gets
``memory_bytes / processes`` of address space (RLIMIT_AS) and at most ``processes`` processes
or threads may exist (RLIMIT_NPROC, per run). Memory that RLIMIT_AS does not count is closed
or bounded: ``memfd_create``, ``memfd_secret`` and ``io_uring_setup`` are refused (seccomp);
SysV shared memory and message queues are off in the run's IPC namespace; ``/dev/shm`` is an
empty read-only folder; the only tmpfs is ``/tmp`` (``tmpfs_bytes``), and no nested namespace
can mount another; pipe buffers are bounded by the kernel's per-user soft limit
(``fs.pipe-user-pages-soft``, 64 MiB by default, shared by every sandbox of uid 65534) plus
64 KiB per open pipe. No cgroup is created: a memory-limited child cgroup needs a delegated
cgroup v2 subtree, which neither the development nor the CI machine has; a worker run under a
memory-limited cgroup (a Kubernetes container limit) is bounded by that as well.

Programs run as ``python -I -S -B``: the standard library only, no site-packages, no user
site, no environment-driven imports. As root the interpreter must be executable by uid 65534,
so a system Python (e.g. ``/usr/bin/python3``) is used when the caller's lives under ``/root``;
the launcher runs on that interpreter too (it starts in ~6 ms, a venv's pyenv Python in ~20).
The interpreter must not live under ``/tmp`` (the new root is built there).

Not stopped: a program may use its CPU and memory budget as it likes; socket buffers stay at
the kernel's defaults (``SO_SNDBUF``/``SO_RCVBUF`` are ignored), and they and other kernel
objects a process may hold per open file are bounded only through ``open_files`` x
``processes``; it sees the host's kernel (``uname``, ``/proc/cpuinfo``,
``/proc/meminfo``) and the names of the runtime's system libraries.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rewards._sandbox_runtime import runtime_layout

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_sandbox_init.py")
# The launcher is imported, not run as a script, so its bytecode comes from __pycache__ (about
# 3 ms of compiling per run saved). Its folder goes last on sys.path: this package's math.py and
# code.py must not shadow the standard library's modules.
BOOT = ("import sys; sys.path.append(sys.argv[1]); import _sandbox_init; "
        "sys.exit(_sandbox_init.main(int(sys.argv[2]), int(sys.argv[3])))")
NOBODY = 65534
REFUSED = 126  # the launcher's exit code when it would not run without isolation
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
CHUNK = 4096  # a pipe write of at most PIPE_BUF bytes never blocks once select says writable


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run; ``memory_bytes`` bounds the whole process tree."""

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 8
    open_files: int = 64
    tmpfs_bytes: int = 32 << 20
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
    require_isolation: bool = True,
) -> SandboxResult:
    """Run ``source`` as ``main.py`` with ``stdin``; ``files`` are extra files beside it."""
    files = {"main.py": source, **(files or {})}
    return run(["main.py"], stdin=stdin, limits=limits, files=files, env=env, python=python,
               require_isolation=require_isolation)


def run(
    args: list[str],
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
    require_isolation: bool = True,
) -> SandboxResult:
    """Run ``python -I -S -B *args`` in a fresh sandbox folder holding ``files``."""
    limits = limits or SandboxLimits()
    for name in files or {}:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"sandbox file name {name!r} must be a plain file name")
    cfg = {
        "argv": [python or sandbox_python(), "-I", "-S", "-B", *args],
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONHASHSEED": "0", **(env or {})},
        "files": dict(files or {}),
        "uid": NOBODY, "gid": NOBODY,
        "layout": runtime_layout(python or sandbox_python()),
        "limits": asdict(limits),
        "require_isolation": require_isolation,
    }
    return _execute(cfg, stdin.encode(), limits)


PROBE = r"""
import ctypes, json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
caps = {key: int(status[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
points = [line.split()[4].replace("\\040", " ") for line in open("/proc/self/mountinfo")]
writable = [p for p in points if p != "/tmp" and not p.startswith("/dev/") and os.access(p, os.W_OK)]
try:
    os.close(os.memfd_create("probe"))
    memfd = True
except (OSError, AttributeError):
    memfd = False
nested = ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0
print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "caps": caps, "interfaces": interfaces,
                  "no_new_privs": int(status.get("NoNewPrivs", "0")), "writable_mounts": writable,
                  "root": sorted(os.listdir("/")), "memfd": memfd, "nested_userns": nested}))
"""
ROOT_ENTRIES = {"usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "dev", "etc", "proc", "tmp"}


@functools.lru_cache(maxsize=1)
def isolation() -> dict:
    """Which layers a run gets on this machine: the launcher's report plus what a probe program
    saw from inside (capabilities, network interfaces, uid, pid, writable mounts); cached."""
    result = run_python(PROBE, limits=SandboxLimits(wall_s=30), require_isolation=False)
    report = dict(result.isolation)
    try:
        report["probe"] = json.loads(result.stdout)
    except ValueError:
        report["probe"] = None
        report["probe_error"] = (result.stderr or f"exit code {result.returncode}").strip()[-300:]
    return report


def isolation_problem(report: dict | None = None) -> str | None:
    """Why model-written code would not be isolated here (one phrase), or None when it is."""
    report = isolation() if report is None else report
    if not report.get("namespaces"):
        return (f"the kernel refused new namespaces (errno {report.get('unshare_errno')}): no network, PID "
                "or mount isolation; run as root or enable unprivileged user namespaces")
    probe = report.get("probe")
    if not probe:
        return f"the isolation probe failed: {report.get('probe_error', 'no output')}"
    held = {name: bits for name, bits in probe["caps"].items() if bits}
    problems = [
        (held, f"the program keeps capabilities {held}"),
        (not probe["no_new_privs"], "no_new_privs is not set"),
        (probe["interfaces"] != ["lo"], f"network interfaces {probe['interfaces']} are visible"),
        (probe["pid"] != 2, f"the program is pid {probe['pid']}, not in its own PID namespace"),
        (os.geteuid() == 0 and probe["uid"] != NOBODY, f"a root caller's program runs as uid {probe['uid']}"),
        (probe["writable_mounts"], f"mounts {probe['writable_mounts']} are writable"),
        (set(probe["root"]) - ROOT_ENTRIES, f"the host's {sorted(set(probe['root']) - ROOT_ENTRIES)} are visible"),
        (probe["memfd"], "memfd_create is allowed (memory outside the address-space limit)"),
        (probe["nested_userns"], "the program can create user namespaces (and mount a tmpfs of any size)"),
        (report.get("old_kernel"), f"kernel {os.uname().release} counts RLIMIT_NPROC per host user across all "
                                   "sandboxes (5.14 and later count it per user namespace)"),
    ]
    return next((text for failed, text in problems if failed), None)


class SandboxUnavailable(RuntimeError):
    """Model-written code would run without isolation here, and nobody opted in."""


def isolation_error(where: str) -> str | None:
    """The one-line refusal for the reward at ``where`` (e.g. ``rewards.functions[0]``), or None."""
    problem = isolation_problem()
    if problem is None:
        return None
    return (f"{where}: model-written code cannot be isolated on this machine ({problem}); for a trusted "
            f"local experiment only, opt in with {where}.kwargs.allow_unisolated: true")


def ensure_isolation(where: str) -> None:
    """Raise :class:`SandboxUnavailable` unless this machine isolates model-written code."""
    message = isolation_error(where)
    if message is not None:
        raise SandboxUnavailable(message)


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


def _execute(cfg: dict, stdin: bytes, limits: SandboxLimits) -> SandboxResult:
    config_read, config_write = os.pipe()
    report_read, report_write = os.pipe()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [cfg["argv"][0], "-I", "-S", "-c", BOOT, str(LAUNCHER.parent), str(config_read), str(report_write)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
            env={"PATH": "/usr/bin:/bin"}, start_new_session=True, pass_fds=(config_read, report_write),
        )
    finally:
        os.close(config_read)
        os.close(report_write)
    try:
        with open(config_write, "wb") as f:  # the launcher reads all of it before anything else
            f.write(json.dumps(cfg).encode())
    except BrokenPipeError:
        pass
    try:
        stdout, stderr, timed_out = _communicate(proc, stdin, start + limits.wall_s, limits.max_output_bytes)
    finally:
        _kill_group(proc.pid)
        returncode = proc.wait()
        report = _read_report(report_read)
    _wait_namespace_gone(report.get("init_pid"))
    return SandboxResult(
        returncode=returncode,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        wall_s=time.monotonic() - start,
        isolation=report,
    )


def _communicate(proc: subprocess.Popen, stdin: bytes, deadline: float, cap: int) -> tuple[bytes, bytes, bool]:
    """Feed stdin and collect up to ``cap`` bytes of each output until the launcher exits or
    the deadline passes; output beyond ``cap`` is read and dropped (memory stays bounded)."""
    outputs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        if pending:
            selector.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(outputs[proc.stdout.fileno()]), bytes(outputs[proc.stderr.fileno()]), True
            for key, _ in selector.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:CHUNK]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                buffer = outputs[key.fd]
                buffer += chunk[:max(0, cap - len(buffer))]
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    return bytes(outputs[proc.stdout.fileno()]), bytes(outputs[proc.stderr.fileno()]), timed_out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_report(fd: int, limit_s: float = 5.0) -> dict:
    """The launcher's JSON lines, merged; read until every holder (launcher, init) is gone."""
    data = bytearray()
    deadline = time.monotonic() + limit_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline and selector.select(max(0.0, deadline - time.monotonic())):
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
    os.close(fd)
    report: dict = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            report.update(json.loads(line))
        except ValueError:
            pass
    if "namespaces" not in report:
        report.update(namespaces=None, error="launcher wrote no report")
    return report


def _wait_namespace_gone(pid: int | None, limit_s: float = 5.0) -> None:
    """After a kill, wait until the namespace's init has exited: the kernel reaps every process
    of the namespace before its init is gone, so nothing of the run is left when we return."""
    if pid is None:
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
