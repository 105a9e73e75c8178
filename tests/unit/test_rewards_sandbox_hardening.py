"""The sandbox's isolated path, hardened: no capabilities, mounts the program cannot remount or
unmount, a size-limited private tmpfs, a memory bound for the whole process tree, no temporary
folder left after a kill, the non-root (user namespace) path, and refusal where namespaces are
unavailable. Real processes throughout; the refusal test makes the kernel refuse namespaces for
real (a user namespace whose user-namespace limit is 0, capabilities dropped).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from rewards import sandbox
from rewards.pool import FunctionSpec, SamplePool, Task

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="drives other users and namespaces from root")
needs_tools = pytest.mark.skipif(not (shutil.which("setpriv") and shutil.which("unshare")),
                                 reason="util-linux setpriv/unshare missing")

MOUNT_ATTACK = textwrap.dedent("""
    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 32, 4096, 2
    CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
    venv = {venv!r}
    def attempts(prefix):
        found = {{}}
        found[prefix + "remount / writable"] = libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None) == 0
        found[prefix + "remount the venv writable"] = libc.mount(None, venv.encode(), None, MS_REMOUNT | MS_BIND, None) == 0
        found[prefix + "unmount /tmp"] = libc.umount2(b"/tmp", MNT_DETACH) == 0
        found[prefix + "unmount /proc"] = libc.umount2(b"/proc", MNT_DETACH) == 0
        try:
            open(os.path.join(venv, "rlp-escaped"), "w").write("x")
            found[prefix + "wrote into the venv"] = True
        except OSError:
            found[prefix + "wrote into the venv"] = False
        return found
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    result = {{"caps": {{k: int(status[k], 16) for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")}}}}
    result.update(attempts(""))
    result["nested user namespace"] = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0
    if result["nested user namespace"]:
        result.update(attempts("nested: "))
    print(json.dumps(result))
""")


def mount_attack(venv: str) -> str:
    return MOUNT_ATTACK.format(venv=venv)


def sandbox_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("rlp-sandbox*")}


def test_program_has_no_capability_and_cannot_remount_or_unmount():
    venv = str(Path(sys.executable).resolve().parent.parent)
    result = sandbox.run_python(mount_attack(venv))
    outcome = json.loads(result.stdout)
    assert outcome.pop("caps") == {"CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
    outcome.pop("nested user namespace")  # allowed: its mounts stay locked (checked below)
    assert [attack for attack, worked in outcome.items() if worked] == []
    assert not (Path(venv) / "rlp-escaped").exists()


def test_private_tmpfs_is_size_limited():
    limits = sandbox.SandboxLimits(tmpfs_bytes=4 << 20, file_bytes=1 << 20)
    program = ("n = 0\ntry:\n    for i in range(100):\n        with open(f'f{i}', 'wb') as f:\n"
               "            f.write(bytes(1 << 20))\n        n += 1\nexcept OSError as exc:\n    print(exc.errno)\n"
               "print(n)")
    result = sandbox.run_python(program, limits=limits)
    errno, written = result.stdout.split()
    assert errno == "28" and int(written) < 4  # ENOSPC before 4 MiB of 1 MiB files


def test_memory_of_the_whole_process_tree_is_bounded_without_cgroups():
    """The fallback this machine uses (no cgroup v2 memory controller): each of at most
    `processes` processes gets memory_bytes / processes of address space, so four processes
    that each allocate all they can hold at most memory_bytes together."""
    limits = sandbox.SandboxLimits(memory_bytes=256 << 20, processes=4, wall_s=30)
    program = textwrap.dedent("""
        import os
        def grab():
            chunks = []
            try:
                while True:
                    chunks.append(bytearray(4 << 20))
            except MemoryError:
                pass
            return len(chunks) * 4
        children = []
        for _ in range(3):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                print(grab(), flush=True)
                os._exit(0)
            children.append(pid)
        print(grab(), flush=True)
        for pid in children:
            os.waitpid(pid, 0)
    """)
    result = sandbox.run_python(program, limits=limits)
    grabbed = [int(x) for x in result.stdout.split()]
    assert len(grabbed) >= 2  # several processes did allocate
    assert sum(grabbed) <= 256


def test_a_killed_pool_worker_leaves_no_temporary_folder():
    """The pool SIGKILLs a worker whose sample overruns; the sandbox it was running must not
    leave a folder behind (the old sandbox staged files in host folders removed in `finally`)."""
    before = sandbox_folders()
    sleeper = "```python\nimport time\ntime.sleep(60)\n```"
    with SamplePool([FunctionSpec("code", {"timeout_s": 30.0})], num_workers=1) as pool:
        outcomes = pool.run([Task(0, "q", sleeper, {"tests": [{"input": "", "output": "x"}]})], timeout_s=2.0)
    assert [o.status for o in outcomes] == ["timeout"]
    time.sleep(0.5)
    assert sandbox_folders() - before == set()


@needs_root
@needs_tools
def test_non_root_caller_gets_a_user_namespace_without_capabilities(tmp_path):
    """The sandbox driven by a non-root user (uid 1000) with the system Python: the venv lives
    under /root, so the three sandbox modules are copied to a world-readable package folder."""
    folder = Path(tempfile.mkdtemp(prefix="rlp-nonroot-test-"))
    try:
        (folder / "rewards").mkdir()
        (folder / "rewards" / "__init__.py").write_text("")
        for name in ("sandbox.py", "_sandbox_init.py", "_sandbox_runtime.py"):
            shutil.copy(ROOT / "rewards" / name, folder / "rewards" / name)
        for path in (folder, folder / "rewards"):
            path.chmod(0o755)
        for path in (folder / "rewards").iterdir():
            path.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        script = (f"import json, sys\nsys.path.insert(0, {str(folder)!r})\nfrom rewards import sandbox\n"
                  f"attack = sandbox.run_python({mount_attack('/usr')!r}, require_isolation=False)\n"
                  "print(json.dumps({'problem': sandbox.isolation_problem(), 'report': sandbox.isolation(),"
                  " 'attack': attack.stdout, 'code': attack.returncode}))")
        done = subprocess.run(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
                               "/usr/bin/python3", "-I", "-c", script],
                              capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    if seen["problem"] is not None:  # no user namespaces here: it must have said so, and refused
        assert "namespaces" in seen["problem"] and not seen["report"]["namespaces"]
        return
    assert seen["report"]["userns"] is True
    assert seen["report"]["probe"]["caps"] == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
    outcome = json.loads(seen["attack"])
    outcome.pop("caps"), outcome.pop("nested user namespace")
    assert [attack for attack, worked in outcome.items() if worked] == []


REFUSAL_CHECK = textwrap.dedent("""
    import json
    import rewards
    from rewards import sandbox
    from rl_pipeline.config import RewardsConfig
    from rl_pipeline.workers.reward import RewardScorer, validate
    seen = {"problem": sandbox.isolation_problem()}
    refused = sandbox.run_python("print('ran')")
    seen["launcher"] = [refused.returncode, refused.stdout]
    try:
        rewards.get("code")(["q"], ["print(3)"], tests=[[{"input": "", "output": "3"}]])
    except sandbox.SandboxUnavailable as exc:
        seen["reward"] = str(exc)
    for label, check in (("validate", validate), ("scorer", RewardScorer)):
        try:
            check(RewardsConfig(functions=[{"name": "format"}, {"name": "code"}]))
        except ValueError as exc:
            seen[label] = str(exc)
    import pathlib, tempfile
    from rl_pipeline.pipelines.pipeline import run_pipeline
    folder = pathlib.Path(tempfile.mkdtemp())
    (folder / "p.yaml").write_text(
        "name: t\\nstages:\\n  - {name: sft, kind: sft, recipe: {model: {path: m}}}\\n"
        "  - {name: rl, kind: grpo, recipe: {model: {path: m}, rewards: {functions: [{name: code}]}}}\\n")
    try:
        run_pipeline(folder / "p.yaml", run_dir=folder / "run")
    except ValueError as exc:
        seen["pipeline"] = [str(exc), (folder / "run").exists()]
    opted_in = rewards.get("code", allow_unisolated=True)
    seen["opted_in"] = opted_in(["q"], ["print(3)"], tests=[[{"input": "", "output": "3"}]])
    print(json.dumps(seen))
""")


@needs_root
@needs_tools
def test_without_namespaces_model_code_is_refused_unless_opted_in():
    """Fault made real: inside a user namespace whose user-namespace limit is 0, a process with
    no capabilities can create no namespace at all, like an unprivileged container."""
    jail = ("echo 0 > /proc/sys/user/max_user_namespaces && "
            "exec setpriv --bounding-set -all --inh-caps -all \"$0\" -c \"$1\"")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--fork", "sh", "-c", jail,
                           sys.executable, REFUSAL_CHECK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "refused new namespaces" in seen["problem"]
    assert seen["launcher"] == [sandbox.REFUSED, ""]
    assert "allow_unisolated" in seen["reward"]
    for label in ("validate", "scorer"):
        assert seen[label].startswith("rewards.functions[1]: model-written code cannot be isolated")
        assert "rewards.functions[1].kwargs.allow_unisolated: true" in seen[label]
        assert "\n" not in seen[label]
    message, run_dir_made = seen["pipeline"]  # refused before the first stage ran
    assert message.startswith("stages[1] (rl): rewards.functions[0]: model-written code") and not run_dir_made
    assert seen["opted_in"] == [1.0]
