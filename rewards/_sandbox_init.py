"""Sandbox launcher: runs as a script (``python -I -S _sandbox_init.py CONFIG_JSON``), stdlib only.

It is the first process of a sandboxed execution (started by ``rewards.sandbox`` in its own
process group, with a scrubbed environment) and confines the program it runs, layer by layer,
each layer best effort (what was applied is written as JSON to ``report_path``):

1. namespaces: new network (loopback only, down: no connection leaves), mount, PID, IPC and
   UTS namespaces. As root directly; otherwise inside a new user namespace if the kernel
   allows unprivileged ones; otherwise none (the caller logs that the network is open).
2. in the new PID namespace a small init process (pid 1) forks the program and, when the
   program exits, exits too: the kernel then kills every process left in the namespace,
   including ones that called ``setsid()`` to leave the process group.
3. in the mount namespace: a fresh ``/proc``; read-only empty tmpfs over ``/tmp``,
   ``/var/tmp`` and ``/dev/shm``, with only the sandbox's own directory bind-mounted (writable)
   at ``/tmp/sandbox``; every other mount remounted read-only.
4. in the program process: resource limits (CPU seconds, address space, file size, process
   count, open files, no core dumps), ``no_new_privs``, parent-death signal, and, when started
   as root, a switch to an unprivileged uid/gid (65534) so that the process-count limit holds.
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
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SANDBOX_MOUNT = "/tmp/sandbox"
SKIP_READONLY = ("/proc", "/sys", "/dev")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


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


def setup_mounts(workdir_fd: int, tmpfs_bytes: int) -> list[str]:
    """Private mounts, fresh /proc, read-only tmp dirs except the sandbox dir, read-only rest."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mounted = ["/proc"]
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        if not os.path.isdir(path):
            continue
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=755")
        mounted.append(path)
    os.mkdir(SANDBOX_MOUNT)
    _mount(f"/proc/self/fd/{workdir_fd}", SANDBOX_MOUNT, None, MS_BIND)
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        if path in mounted:
            _mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes}")
    readonly = _remount_readonly(keep={SANDBOX_MOUNT, *mounted})
    return mounted + readonly


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


def limit_and_exec(cfg: dict) -> None:
    """In the program process: rlimits, drop privileges, exec. Never returns."""
    lim = cfg["limits"]
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() == 0 and cfg.get("uid") is not None and not cfg.get("userns"):
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir(cfg["cwd"])
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def run_init(cfg: dict, report: dict, report_file) -> int:
    """Pid 1 of the namespace (or the plain launcher): start the program, reap, return its status."""
    workdir_fd = os.open(cfg["workdir"], os.O_RDONLY | os.O_DIRECTORY)
    if report["namespaces"]:
        report["mounts"] = setup_mounts(workdir_fd, cfg["limits"]["tmpfs_bytes"])
        cfg["cwd"] = SANDBOX_MOUNT
        cfg["env"].update(HOME=SANDBOX_MOUNT, TMPDIR=SANDBOX_MOUNT)
    else:
        cfg["cwd"] = cfg["workdir"]
    with report_file:
        json.dump(report, report_file)
    os.close(workdir_fd)
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


def main() -> int:
    cfg = json.loads(sys.argv[1])
    # Opened before unsharing: a file open for writing through the namespace's copy of a
    # mount would make remounting that mount read-only fail (EBUSY).
    report_file = open(cfg["report_path"], "w")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    report = enter_namespaces()
    cfg["userns"] = report["userns"]
    if not report["namespaces"]:
        return run_init(cfg, report, report_file)
    pid = os.fork()  # the child is pid 1 of the new PID namespace
    if pid == 0:
        code = 127
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            code = run_init(cfg, report, report_file)
        finally:
            os._exit(code)
    with open(cfg["init_pid_path"], "w") as f:  # lets the caller wait for the namespace to die
        f.write(str(pid))
    _, status = os.waitpid(pid, 0)
    return _exit_code(status)


if __name__ == "__main__":
    sys.exit(main())
