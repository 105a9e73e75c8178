"""Hostile programs through the `code` reward: each attack must be contained, score 0, and leave
the host unchanged (no process left, no file written, no connection made, no secret leaked).

Every program below prints what it would print if the attack succeeded, and that is the test's
expected output, so a score of 1.0 would mean the attack worked. Real processes throughout.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

import rewards
from rewards import sandbox

ISOLATION = sandbox.isolation()
needs_namespaces = pytest.mark.skipif(
    not ISOLATION.get("namespaces"), reason=f"kernel refused namespaces here: {ISOLATION}"
)
LIMITS = {"timeout_s": 4.0, "cpu_s": 1, "memory_mb": 256}


def score(program: str, stdin: str, expected: str, **kwargs) -> float:
    fn = rewards.get("code", **{**LIMITS, **kwargs})
    return fn(["q"], [f"```python\n{program}\n```"], tests=[[{"input": stdin, "output": expected}]])[0]


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def eventually_empty(probe, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    assert score("while True:\n    pass\nprint('done')", "", "done") == 0.0
    # The CPU limit, not the wall timer, ends it: SIGXCPU, and no timeout recorded.
    result = sandbox.run_python("while True:\n    pass", limits=sandbox.SandboxLimits(cpu_s=1, wall_s=10))
    assert result.returncode == 128 + 24 and not result.timed_out  # SIGXCPU


def test_sleeping_program_is_stopped_by_the_wall_timeout():
    result = sandbox.run_python("import time\ntime.sleep(60)", limits=sandbox.SandboxLimits(wall_s=1.0))
    assert result.timed_out and result.wall_s >= 1.0


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC is per user; only a root host drops to uid 65534")
def test_fork_bomb_is_capped_and_cleaned_up():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\nprint('forked')"
    assert score(bomb, "", "forked", timeout_s=2.0) == 0.0
    counted = ("import os, time\nn = 0\nfor _ in range(1000):\n    try:\n        pid = os.fork()\n"
               "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
               "    n += 1\nprint('forked', n)")
    marker = f"rlp-forks-{uuid.uuid4().hex}.py"  # in every child's command line; other sandboxes may run
    result = sandbox.run([marker], files={marker: counted}, limits=sandbox.SandboxLimits(processes=32))
    forked = int(result.stdout.split()[1])
    assert 0 < forked < 32  # the process-count limit, not the 1000 the program wanted
    assert eventually_empty(lambda: processes_with(marker)) == []


def test_ten_gigabyte_allocation_fails_inside():
    assert score("x = bytearray(10 * 2**30)\nprint('allocated')", "", "allocated") == 0.0
    result = sandbox.run_python("x = bytearray(10 * 2**30)", limits=sandbox.SandboxLimits(memory_bytes=256 << 20))
    assert result.returncode == 1 and "MemoryError" in result.stderr


@needs_namespaces
def test_writes_outside_the_temp_dir_are_refused(tmp_path):
    tag = uuid.uuid4().hex
    targets = [tmp_path / f"escaped-{tag}", Path.cwd() / f"escaped-{tag}", Path(f"/tmp/escaped-{tag}"),
               Path(f"/var/tmp/escaped-{tag}"), Path(f"/dev/shm/escaped-{tag}"), Path.home() / f"escaped-{tag}"]
    program = (f"paths = {[str(t) for t in targets]!r}\nwrote = 0\nfor p in paths:\n    try:\n"
               "        open(p, 'w').write('x')\n        wrote += 1\n    except OSError:\n        pass\n"
               "open('inside.txt', 'w').write('fine')\nprint('wrote', wrote)")
    assert score(program, "", f"wrote {len(targets)}") == 0.0
    result = sandbox.run_python(program)
    assert result.stdout.split() == ["wrote", "0"]  # and writing its own directory worked
    assert [t for t in targets if t.exists()] == []


@needs_namespaces
def test_network_connections_fail():
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    host_ip = socket.gethostbyname(socket.gethostname())
    program = (f"import socket\nok = 0\nfor host in ['127.0.0.1', {host_ip!r}, '1.1.1.1']:\n    try:\n"
               f"        socket.create_connection((host, {port}), timeout=1).close()\n        ok += 1\n"
               "    except OSError:\n        pass\nprint('connected', ok)")
    try:
        assert score(program, "", "connected 3") == 0.0
        result = sandbox.run_python(program)
        assert result.stdout.split() == ["connected", "0"]
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == []


def test_parent_environment_is_not_visible(monkeypatch):
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("RLP_SANDBOX_SECRET", secret)
    program = ("import os, glob\nfound = os.environ.get('RLP_SANDBOX_SECRET', '')\n"
               "for path in glob.glob('/proc/*/environ'):\n    try:\n"
               "        data = open(path, 'rb').read().decode(errors='replace')\n    except OSError:\n"
               "        continue\n    if 'RLP_SANDBOX_SECRET=' in data:\n"
               "        found = data.split('RLP_SANDBOX_SECRET=')[1].split(chr(0))[0]\nprint(found)")
    assert score(program, "", secret) == 0.0
    result = sandbox.run_python(program)
    assert result.returncode == 0 and secret not in result.stdout


@needs_namespaces
def test_background_children_do_not_outlive_the_run():
    marker = f"rlp-bg-{uuid.uuid4().hex}"
    program = (
        "import os, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{marker}-popen'],"
        " start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}-daemon'])\n"
        "    os._exit(0)\n"
        "print('spawned')"
    )
    assert score(program, "1 2", "3") == 0.0  # it prints 'spawned', not the sum
    result = sandbox.run_python(program)
    assert result.stdout.strip() == "spawned"
    assert eventually_empty(lambda: processes_with(marker)) == []


def test_isolation_report_on_this_machine():
    """Documents what the sandbox got here; on a root host every layer must be in place."""
    if os.geteuid() == 0:
        assert ISOLATION["namespaces"] is True
        assert {"/proc", "/tmp", "/"} <= set(ISOLATION["mounts"])


def test_every_run_behaves_while_two_busy_loops_load_the_cores():
    """The launcher once wrote its namespace's init pid into a folder that pid 1 had already
    covered with the private /tmp: about 1 run in 12 ended at once with exit 1 under load.
    100 runs while two busy loops hold both cores: each must exit 0 with its own output."""
    import subprocess
    import sys

    loads = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass"]) for _ in range(2)]
    try:
        results = [sandbox.run_python("print(int(input()) * 2)", stdin=f"{i}\n",
                                      limits=sandbox.SandboxLimits(wall_s=30.0, cpu_s=10))
                   for i in range(100)]
    finally:
        for load in loads:
            load.kill()
            load.wait()
    wrong = [(i, r.returncode, r.stderr[-200:]) for i, r in enumerate(results)
             if not r.ok or r.stdout.split() != [str(2 * i)]]
    assert wrong == []
