"""Sandbox launcher: ``python -I -S _sandbox_init.py CONFIG_FD REPORT_FD``, stdlib only.

It is the first process of a sandboxed execution (started by ``rewards.sandbox`` in its own
process group, with a scrubbed environment). It reads its configuration (argv, environment,
limits and the files to run) as JSON from the pipe ``CONFIG_FD`` and writes JSON lines about
what it applied to the pipe ``REPORT_FD``; nothing of a run touches the host's disk, so a
launcher killed at any point leaves no folder behind. Layers:

1. namespaces: new network (loopback only, down: no connection leaves), mount, PID, IPC and
   UTS namespaces. As root directly; otherwise inside a new user namespace if the kernel
   allows unprivileged ones. Where neither works the launcher refuses to run the program
   (exit 126) unless the caller passed ``require_isolation: false``.
2. in the new PID namespace a small init process (pid 1) forks the program and, when the
   program exits, exits too: the kernel then kills every process left in the namespace,
   including ones that called ``setsid()`` to leave the process group.
3. in the mount namespace: a fresh ``/proc``; a private tmpfs of ``tmpfs_bytes`` over ``/tmp``
   holding the program's files in ``/tmp/sandbox`` (its working folder, the only writable
   place); read-only empty tmpfs over ``/var/tmp`` and ``/dev/shm``; every other mount
   remounted read-only.
4. in the program process: resource limits (CPU seconds, address space, file size, process
   count, open files, no core dumps); every capability dropped from the bounding, ambient and
   (by the uid switch or the empty bounding set at exec) permitted and effective sets, so it
   cannot remount, unmount or mount anything; ``no_new_privs``; a parent-death signal; and,
   when started as root, uid/gid 65534 so that the process-count limit holds.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SANDBOX_DIR = "/tmp/sandbox"
SKIP_READONLY = ("/proc", "/sys", "/dev", "/tmp")
REFUSED = 126
CAP_SETUID = 7

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, value: int, arg3: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(arg3), 0, 0), f"prctl {option}")


def enter_namespaces() -> dict:
    """Unshare what the kernel allows; returns which layers are in place."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(flags) == 0:
        return {"namespaces": True, "userns": False}
    if _libc.unshare(flags | CLONE_NEWUSER) == 0:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                           ("/proc/self/gid_map", f"0 {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
        return {"namespaces": True, "userns": True}
    return {"namespaces": False, "userns": False, "unshare_errno": ctypes.get_errno()}


def setup_mounts(cfg: dict) -> list[str]:
    """Private mounts, fresh /proc, a private size-limited /tmp holding the program's files,
    read-only empty /var/tmp and /dev/shm, everything else read-only."""
    tmpfs_bytes = cfg["limits"]["tmpfs_bytes"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=755")
    mounted = ["/proc", "/tmp"]
    for path in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=755")
            mounted.append(path)
    write_files(SANDBOX_DIR, cfg["files"], cfg["uid"] if cfg["switch_uid"] else None, cfg["gid"])
    return mounted + _remount_readonly(keep=set(mounted))


def write_files(folder: str, files: dict[str, str], uid: int | None, gid: int | None) -> None:
    """The program's files in its working folder, owned by the user it runs as."""
    os.mkdir(folder, 0o700)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    if uid is not None:
        for path in (folder, *(os.path.join(folder, name) for name in files)):
            os.chown(path, uid, gid)


def _remount_readonly(keep: set[str]) -> list[str]:
    done = []
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        point = point.replace("\\040", " ")
        if point in keep or any(point == p or point.startswith(p + "/") for p in SKIP_READONLY):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        try:
            st = os.statvfs(point)
            flags |= (MS_NOSUID if st.f_flag & os.ST_NOSUID else 0) | (MS_NODEV if st.f_flag & os.ST_NODEV else 0)
            flags |= MS_NOEXEC if st.f_flag & os.ST_NOEXEC else 0
            _mount(None, point, None, flags)
            done.append(point)
        except OSError as exc:
            print(f"sandbox: cannot remount {point} read-only: {exc}", file=sys.stderr)
    return done


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets: after the exec below no capability can come back,
    whether the process runs as uid 65534 or as uid 0 of its own user namespace."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def limit_and_exec(cfg: dict) -> None:
    """In the program process: rlimits, drop privileges, exec. Never returns."""
    lim = cfg["limits"]
    cpu = int(lim["cpu_s"])
    per_process = lim["memory_bytes"] // max(1, lim["processes"])  # the tree: at most memory_bytes
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (per_process, per_process))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["isolated"]:
        drop_capabilities()
    if cfg["switch_uid"]:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir(cfg["cwd"])
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def run_init(cfg: dict, report_fd: int) -> int:
    """Pid 1 of the namespace (or the plain launcher): start the program, reap, return its status."""
    if cfg["isolated"]:
        _send(report_fd, {"mounts": setup_mounts(cfg)})
        cfg["cwd"] = SANDBOX_DIR
    else:
        cfg["cwd"] = cfg["unisolated_dir"]
    cfg["env"].update(HOME=cfg["cwd"], TMPDIR=cfg["cwd"])
    pid = os.fork()
    if pid == 0:
        try:
            limit_and_exec(cfg)
        finally:
            os._exit(127)
    status = 0
    while True:  # reap every child; the program's status is what we report
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = st
            break
    return _exit_code(status)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _has_capability(cap: int) -> bool:
    with open("/proc/self/status") as f:
        effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(effective >> cap & 1)


def _send(report_fd: int, record: dict) -> None:
    os.write(report_fd, (json.dumps(record) + "\n").encode())


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _run_unisolated(cfg: dict, report_fd: int) -> int:
    """Only on an explicit opt-in: the program runs in a host temporary folder with the limits."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="rlp-sandbox-unisolated-")
    try:
        write_files(os.path.join(folder, "sandbox"), cfg["files"], cfg["uid"] if cfg["switch_uid"] else None, cfg["gid"])
        os.chmod(folder, 0o755)
        cfg["unisolated_dir"] = os.path.join(folder, "sandbox")
        return run_init(cfg, report_fd)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    cfg = json.loads(_read_all(int(sys.argv[1])))
    report_fd = int(sys.argv[2])
    os.set_inheritable(report_fd, False)  # the program never gets it (it closes at exec)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    report = enter_namespaces()
    cfg["userns"], cfg["isolated"] = report["userns"], report["namespaces"]
    # root switches the program to uid 65534; uid 0 of a user namespace (or a root without
    # CAP_SETUID, as in an unprivileged container) cannot, and keeps its uid without capabilities
    cfg["switch_uid"] = os.geteuid() == 0 and not cfg["userns"] and _has_capability(CAP_SETUID)
    _send(report_fd, report)
    if not report["namespaces"]:
        if cfg["require_isolation"]:
            return REFUSED
        return _run_unisolated(cfg, report_fd)
    pid = os.fork()  # the child is pid 1 of the new PID namespace
    if pid == 0:
        code = 127
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            code = run_init(cfg, report_fd)
        finally:
            os._exit(code)
    _send(report_fd, {"init_pid": pid})  # a pipe, not a file: no mount can hide it
    _, status = os.waitpid(pid, 0)
    return _exit_code(status)


if __name__ == "__main__":
    sys.exit(main())
