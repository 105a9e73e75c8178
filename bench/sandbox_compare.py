"""Compare the hand-written sandbox (``rewards.sandbox``) with bubblewrap on attacks held,
executions per second and CPU time per execution (launcher, init and program together: the
start-up cost, steady under load where wall-clock rates are not). Needs root; bubblewrap (the
Debian package ``bubblewrap``) is compared where installed, else skipped. Run:

    .venv/bin/python bench/sandbox_compare.py [--runs 200]
    PYTHONPATH=<other checkout> .venv/bin/python bench/sandbox_compare.py   # that checkout's sandbox

bubblewrap is driven the way a reward would use it: started as uid 65534 (``setpriv``, so the
process-count limit applies), every namespace unshared, ``/`` read-only, a fresh ``/proc`` and
``/dev``, a size-limited tmpfs at ``/tmp`` as the working folder, every capability dropped, the
same resource limits (set before ``setpriv``, inherited) and the same wall timeout with a
process-group kill. Each attack program prints what it managed; a row says whether the sandbox
held (the attack failed) under each system.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; keep the `rewards` package first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rewards import sandbox  # noqa: E402

LIMITS = sandbox.SandboxLimits(wall_s=10.0, cpu_s=2, memory_bytes=1 << 30, processes=8)
ATTACKS = {  # name -> (program, "held" when its last output line is this)
    "network: connect out": ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
                             "    print('open')\nexcept OSError:\n    print('held')", "held"),
    "capabilities left": ("s = open('/proc/self/status').read()\n"
                          "caps = [int(s.split(k + ':')[1].split()[0], 16) for k in ('CapEff', 'CapPrm', 'CapBnd')]\n"
                          "print('held' if not any(caps) else caps)", "held"),
    "remount / writable": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                           "print('open' if libc.mount(None, b'/', None, 32 | 4096, None) == 0 else 'held')", "held"),
    "unmount /tmp": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                     "print('open' if libc.umount2(b'/tmp', 2) == 0 else 'held')", "held"),
    "write outside the tmpfs": ("import os\nok = 0\nfor p in ('/usr/rlp-x', '/var/tmp/rlp-x', '/root/rlp-x', '/etc/rlp-x'):\n"
                                "    try:\n        open(p, 'w').write('x')\n        ok += 1\n        os.unlink(p)\n"
                                "    except OSError:\n        pass\nprint('held' if ok == 0 else ok)", "held"),
    "fill the tmpfs (100 MiB)": ("try:\n    for i in range(100):\n        open(f'/tmp/f{i}', 'wb').write(bytes(1 << 20))\n"
                                 "    print('open')\nexcept OSError:\n    print('held')", "held"),
    "fork 100 processes": ("import os, time\nn = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n"
                           "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n"
                           "    n += 1\nprint('held' if n < 100 else 'open')", "held"),
    "allocate 4 GiB": ("try:\n    x = bytearray(4 << 30)\n    print('open')\nexcept MemoryError:\n    print('held')", "held"),
    "see host processes": ("import os\nprint('held' if len([p for p in os.listdir('/proc') if p.isdigit()]) < 5 else 'open')",
                           "held"),
    "read the project tree": (f"try:\n    open({str(Path(__file__).resolve())!r}).read()\n    print('open')\n"
                              "except OSError:\n    print('held')", "held"),
    "memfd of 64 MiB": ("import os\ntry:\n    os.write(os.memfd_create('x'), bytes(64 << 20))\n    print('open')\n"
                        "except OSError:\n    print('held')", "held"),
    "nested user namespace": ("import ctypes\nprint('open' if ctypes.CDLL(None).unshare(0x10000000) == 0 else 'held')",
                              "held"),
    "SysV shared memory": ("import ctypes\nprint('open' if ctypes.CDLL(None).shmget(0, 1 << 20, 0o1600) >= 0 else 'held')",
                           "held"),
}


def run_bwrap(source: str, stdin: str, limits: sandbox.SandboxLimits) -> tuple[int, str]:
    cmd = ["setpriv", "--reuid", str(sandbox.NOBODY), "--regid", str(sandbox.NOBODY), "--clear-groups",
           "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
           "--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp",
           "--chdir", "/tmp", "--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
           "--", sandbox.sandbox_python(), "-I", "-S", "-B", "-c", source]

    def limit() -> None:
        per_process = limits.memory_bytes // limits.processes
        for what, value in ((resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_AS, per_process),
                            (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NOFILE, limits.open_files),
                            (resource.RLIMIT_NPROC, limits.processes)):
            resource.setrlimit(what, (value, value))

    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=limit, text=True)
    try:
        out, _ = proc.communicate(stdin, timeout=limits.wall_s)
    except subprocess.TimeoutExpired:  # killed only then: a killed bwrap leaves a zombie to pid 1
        os.killpg(proc.pid, signal.SIGKILL)
        out = ""
    proc.wait()
    _reap_orphans()
    return proc.returncode, out


def _reap_orphans() -> None:
    """bwrap's intermediate processes exit after their parent: as the subreaper (set in main)
    this process reaps them, else they stay zombies of uid 65534 and use up RLIMIT_NPROC."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_rlp(source: str, stdin: str, limits: sandbox.SandboxLimits) -> tuple[int, str]:
    result = sandbox.run_python(source, stdin=stdin, limits=limits)
    return result.returncode, result.stdout


SYSTEMS = {"rewards.sandbox": run_rlp, **({"bubblewrap": run_bwrap} if shutil.which("bwrap") else {})}


def throughput(system, runs: int, threads: int) -> tuple[float, float]:
    """Executions per second, and CPU milliseconds per execution of every process it started."""
    adder = "a, b = map(int, input().split())\nprint(a + b)"

    def one(i: int) -> bool:
        return system(adder, f"{i} 1\n", LIMITS)[1].split() == [str(i + 1)]

    start, cpu = time.monotonic(), _children_cpu_s()
    with ThreadPoolExecutor(threads) as pool:
        ok = sum(pool.map(one, range(runs)))
    assert ok == runs, f"{runs - ok} runs gave a wrong answer"
    return runs / (time.monotonic() - start), 1000 * (_children_cpu_s() - cpu) / runs


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants: launcher, init, program
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    import ctypes

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: see _reap_orphans
    version = (subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
               if "bubblewrap" in SYSTEMS else "bubblewrap not installed: skipped")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {version}; "
          f"sandbox {Path(sandbox.__file__).resolve()}")
    print("| attack | " + " | ".join(SYSTEMS) + " |\n|---|" + "---|" * len(SYSTEMS))
    held = dict.fromkeys(SYSTEMS, 0)
    for name, (program, want) in ATTACKS.items():
        cells = []
        for label, system in SYSTEMS.items():
            _, out = system(textwrap.dedent(program), "", LIMITS)
            ok = (out.strip().splitlines() or ["(no output)"])[-1] == want
            held[label] += ok
            cells.append("held" if ok else f"NOT held ({out.strip()[-40:]!r})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| attacks held | " + " | ".join(f"{held[s]}/{len(ATTACKS)}" for s in SYSTEMS) + " |")
    for threads in (1, 2):
        rates = {label: throughput(system, args.runs, threads) for label, system in SYSTEMS.items()}
        print(f"| executions/s, {threads} thread(s), {args.runs} runs | "
              + " | ".join(f"{rates[s][0]:.1f}" for s in SYSTEMS) + " |")
        print(f"| CPU ms per execution, {threads} thread(s) | " + " | ".join(f"{rates[s][1]:.1f}" for s in SYSTEMS) + " |")
    print(json.dumps({"held": held}))


if __name__ == "__main__":
    main()
