"""Issue 27, classes 2-4, against the sandbox through the `code` reward and the `python` tool:

2. the host's files: a program that searches the whole filesystem for a dataset of expected
   outputs (in a temporary folder and inside the project tree) must find neither;
3. limits shared across sandboxes: honest threaded programs scored concurrently must all pass,
   also beside a program that parks as many threads as it can;
4. memory outside the bound: memfd, /dev/shm, tmpfs (the private /tmp and a tmpfs mounted in a
   nested user namespace), SysV shared memory and pipes must not hold more than the run's
   memory setting beside its address space (so at most about twice the setting in all).

Every attack was run against the sandbox before this round's fix and succeeded (except
/dev/shm and pipes, held before too); real processes throughout, no fakes.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import rewards
from rewards import sandbox
from rl_pipeline.tools.builtin import python as python_tool

ROOT = Path(__file__).resolve().parents[2]
ISOLATION = sandbox.isolation()
pytestmark = pytest.mark.skipif(not ISOLATION.get("namespaces"), reason=f"no namespaces here: {ISOLATION}")
MiB = 1 << 20


def code_scores(programs: list[str], tests: list, **kwargs) -> list[float]:
    fn = rewards.get("code", **kwargs)
    completions = [f"```python\n{p}\n```" for p in programs]
    return fn(["q"] * len(programs), completions, tests=tests)


# ---------------------------------------------------------------- class 2: the host's files

SEARCH = textwrap.dedent("""
    import json, os, sys
    marker, seen, found = {marker!r}, 0, ""
    for top, dirs, files in os.walk("/"):
        if top in ("/proc", "/sys", "/dev"):
            dirs[:] = []
            continue
        for name in files:
            seen += 1
            path = os.path.join(top, name)
            if not name.endswith((".jsonl", ".json")):
                continue
            try:
                if os.path.getsize(path) > 1 << 20:
                    continue
                for line in open(path, errors="replace"):
                    if marker in line:
                        found = json.loads(line)["output"]
            except (OSError, ValueError, KeyError):
                pass
    print(found or "nothing")
    print(json.dumps({{"seen": seen, "top": sorted(os.listdir("/")),
                      "visible": [p for p in {probes!r} if os.path.exists(p)]}}), file=sys.stderr)
""")


@pytest.fixture
def datasets(tmp_path):
    """A row of expected outputs in a temporary folder and in the project tree (removed after)."""
    marker, answer = f"rlp-prompt-{uuid.uuid4().hex}", f"rlp-answer-{uuid.uuid4().hex}"
    inside = ROOT / f"rlp-round2-dataset-{uuid.uuid4().hex[:8]}"
    inside.mkdir()
    try:
        for folder in (tmp_path, inside):
            (folder / "train.jsonl").write_text(json.dumps({"prompt": marker, "output": answer}) + "\n")
            folder.chmod(0o755)
        yield marker, answer, [str(tmp_path / "train.jsonl"), str(inside / "train.jsonl")]
    finally:
        shutil.rmtree(inside)


def test_a_whole_filesystem_search_finds_no_dataset(datasets):
    marker, answer, paths = datasets
    probes = [*paths, str(ROOT), "/work", "/root", "/home", "/srv", "/opt", "/mnt", "/etc/hostname",
              "/usr/local", "/var", "/sys"]
    program = SEARCH.format(marker=marker, probes=probes)
    [score] = code_scores([program], [[{"input": "", "output": answer}]], timeout_s=60.0, cpu_s=30)
    assert score == 0.0  # before the fix: 1.0 (the project tree's copy was found)
    result = sandbox.run_python(program, limits=sandbox.SandboxLimits(wall_s=60, cpu_s=30))
    found, seen = result.stdout.strip(), json.loads(result.stderr.splitlines()[-1])
    assert found == "nothing" and seen["visible"] == []
    assert set(seen["top"]) <= {"usr", "lib", "lib64", "lib32", "libx32", "bin", "tmp", "proc", "dev", "etc"}
    assert seen["seen"] > 100  # the walk did run: it saw the interpreter's standard library


def test_the_python_tool_sees_neither_the_project_nor_the_dataset(datasets):
    _, answer, paths = datasets
    program = ("import os\nfor p in " + repr([*paths, str(ROOT / "README.md"), "/work", "/root/.bashrc"]) + ":\n"
               "    try:\n        print(p, open(p).read()[:200])\n    except OSError as exc:\n"
               "        print(p, 'hidden', exc.errno)\nprint(sorted(os.listdir('/')))")
    output = python_tool(program)
    assert answer not in output and "# " not in output  # before the fix: both datasets and README
    assert all(line.split()[1] == "hidden" for line in output.splitlines()[:-1]), output


def test_the_runtime_still_works_inside():
    """What honest programs use: the standard library with its C extensions, subprocesses of
    the same interpreter, /dev/null and /dev/urandom, threads, asyncio, a socket buffer size
    (ignored, not refused), the private /tmp."""
    program = textwrap.dedent("""
        import asyncio, decimal, hashlib, json, os, random, socket, sqlite3, subprocess, sys, tempfile
        import threading, zlib
        assert hashlib.sha256(b"x").hexdigest() and zlib.compress(b"x") and decimal.Decimal("1.5") * 2
        assert asyncio.run(asyncio.sleep(0, result=3)) == 3
        socket.socketpair()[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sqlite3.connect(":memory:").execute("select 1").fetchall()
        out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True)
        subprocess.run([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL, check=True)
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("ok")
        t = threading.Thread(target=lambda: None)
        t.start(); t.join()
        print(out.stdout.strip(), len(os.urandom(8)), os.getcwd(), "é")
    """)
    result = sandbox.run_python(program)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["42", "8", "/tmp/sandbox", "é"]


# ------------------------------------------------------- class 3: limits shared across sandboxes

HONEST = textwrap.dedent("""
    import threading, time
    total = [0]
    def work(i):
        time.sleep(0.2)
        total[0] += i
    for _ in range(6):  # rounds of three workers over about 1.2 s
        workers = [threading.Thread(target=work, args=(i,)) for i in (1, 2, 3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    print(int(input()) + total[0])
""")
PARKER = textwrap.dedent("""
    import threading, time
    parked = 0
    for _ in range(500):
        try:
            threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
            parked += 1
        except RuntimeError:
            break
    print(int(input()) + 36)  # correct, like its siblings
    time.sleep(2.5)
""")


def threaded_rows(programs: list[str]) -> tuple[list[str], list]:
    return programs, [[{"input": f"{i}\n", "output": str(i + 36)}] for i in range(len(programs))]


def test_eight_honest_threaded_programs_pass_when_scored_together():
    assert code_scores(*threaded_rows([HONEST] * 8), max_parallel=8, timeout_s=20.0) == [1.0] * 8


def test_a_thread_parking_program_does_not_change_its_siblings_scores():
    scores = code_scores(*threaded_rows([PARKER] + [HONEST] * 7), max_parallel=8, timeout_s=20.0)
    assert scores == [1.0] * 8  # before the fix: the siblings scored 0


def test_python_tool_calls_do_not_share_a_thread_limit():
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(python_tool, PARKER.replace("input()", "'0'"), timeout_s=10.0)]
        calls += [pool.submit(python_tool, HONEST.replace("input()", f"'{i}'"), timeout_s=10.0) for i in range(3)]
        outputs = [call.result() for call in calls]
    assert [o.strip() for o in outputs] == ["36", "36", "37", "38"]


# ------------------------------------------------------------ class 4: memory outside the bound

HOLD = textwrap.dedent("""
    import ctypes, os
    MiB = 1 << 20
    target = {target} * MiB
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    keep, held = [], 0

    def memfd():
        global held
        while held < target:
            fd = os.memfd_create("x")
            keep.append(fd)
            for _ in range(16):
                os.write(fd, bytes(MiB))
                held += MiB

    def dev_shm():
        global held
        from multiprocessing import shared_memory
        keep.append(shared_memory.SharedMemory(create=True, size=MiB))
        held += MiB
        while held < target:
            with open(f"/dev/shm/f{{held}}", "wb") as f:
                f.write(bytes(MiB))
            held += MiB

    def tmpfs():
        global held
        os.mkdir("m")
        try:  # the private /tmp first: bounded by tmpfs_bytes
            while held < target:
                with open(f"/tmp/f{{held}}", "wb") as f:
                    f.write(bytes(MiB))
                held += MiB
        except OSError:
            pass
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
            raise OSError(ctypes.get_errno(), "unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {{uid}} 1"), ("gid_map", f"0 {{gid}} 1")):
            with open(f"/proc/self/{{name}}", "w") as f:
                f.write(text)
        if libc.mount(b"tmpfs", b"m", b"tmpfs", 0, b"size=8g") != 0:
            raise OSError(ctypes.get_errno(), "mount")
        while held < target:
            with open(f"m/f{{held}}", "wb") as f:
                f.write(bytes(MiB))
            held += MiB

    def sysv_shm():
        global held
        while held < target:
            shm = libc.shmget(0, 16 * MiB, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
            if shm < 0:
                raise OSError(ctypes.get_errno(), "shmget")
            address = libc.shmat(shm, None, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "shmat")
            ctypes.memset(address, 1, 16 * MiB)
            libc.shmdt(ctypes.c_void_p(address))  # detached: it no longer counts as address space
            held += 16 * MiB

    def pipes():
        global held
        import fcntl
        children = [os.fork() for _ in range(1)]
        while held < target:
            try:
                r, w = os.pipe()
            except OSError:  # out of file descriptors
                break
            try:
                fcntl.fcntl(w, 1031, MiB)  # F_SETPIPE_SZ
            except OSError:
                pass
            os.set_blocking(w, False)
            try:
                while True:
                    held += os.write(w, bytes(65536))
            except BlockingIOError:
                pass
            os.close(w)  # the data stays while the read end is open
            keep.append(r)
        if children[0] == 0:
            print("held", held // MiB, flush=True)
            os._exit(0)
        os.waitpid(children[0], 0)

    def sockets():
        global held
        import socket
        children = [os.fork() for _ in range(1)]
        try:
            while held < target:
                a, b = socket.socketpair()
                for end in (a, b):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30)
                a.setblocking(False)
                try:
                    while True:
                        held += a.send(bytes(65536))
                except BlockingIOError:
                    pass
                a.close()  # what it sent stays queued at the other end
                keep.append(b)
        except OSError:  # out of file descriptors
            pass
        if children[0] == 0:
            print("held", held // MiB, flush=True)
            os._exit(0)
        os.waitpid(children[0], 0)

    try:
        {means}()
    except OSError as exc:
        print("stopped", exc)
    print("held", held // MiB, flush=True)
""")
MEANS = ["memfd", "dev_shm", "tmpfs", "sysv_shm", "pipes", "sockets"]


@pytest.mark.parametrize("means", MEANS)
def test_memory_held_outside_the_address_space_is_bounded(means):
    memory = 128 * MiB
    limits = sandbox.SandboxLimits(memory_bytes=memory, processes=4, wall_s=30, cpu_s=10)
    result = sandbox.run_python(HOLD.format(target=4 * memory // MiB, means=means), limits=limits)
    held = sum(int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("held"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert held * MiB <= memory, result.stdout  # before the fix: memfd, tmpfs, sysv_shm held 512 MiB


def test_the_python_tool_refuses_the_same_means():
    program = textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            os.memfd_create("x")
            print("memfd open")
        except OSError:
            print("memfd refused")
        print("userns", "open" if libc.unshare(0x10000000) == 0 else "refused")
        print("shm", "open" if libc.shmget(0, 1 << 20, 0o1600) >= 0 else "refused")
    """)
    assert python_tool(program).split() == ["memfd", "refused", "userns", "refused", "shm", "refused"]


def test_a_kernel_that_counts_processes_per_host_user_is_refused():
    """Before 5.14 RLIMIT_NPROC is per host user whatever the namespace: the report of such a
    kernel (this one's, with the launcher's flag set) must make the machine count as unisolated."""
    assert sandbox.isolation_problem(ISOLATION) is None
    problem = sandbox.isolation_problem({**ISOLATION, "old_kernel": True})
    assert problem is not None and "RLIMIT_NPROC" in problem
