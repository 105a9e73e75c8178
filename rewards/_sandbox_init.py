"""Sandbox launcher: ``python -I -S _sandbox_init.py CONFIG_FD REPORT_FD``, stdlib only.

``rewards.sandbox`` imports it as a module instead (``python -I -S -c BOOT``), so its bytecode
is cached in ``__pycache__`` rather than compiled on every run.

It is the first process of a sandboxed execution (started by ``rewards.sandbox`` in its own
process group, with a scrubbed environment). It reads its configuration (argv, environment,
limits, the runtime's layout and the files to run) as JSON from the pipe ``CONFIG_FD`` and
writes JSON lines about what it applied to the pipe ``REPORT_FD``; nothing of a run touches the
host's disk, so a launcher killed at any point leaves no folder behind. Layers:

1. namespaces: new network (loopback only, down: no connection leaves), mount, PID, IPC and
   UTS namespaces. As root directly; otherwise inside a new user namespace if the kernel
   allows unprivileged ones. Where neither works, or the kernel is older than 5.14 (it counts
   RLIMIT_NPROC per host user, so concurrent sandboxes would share one budget), the launcher
   refuses to run the program (exit 126) unless the caller passed ``require_isolation: false``.
2. in the new PID namespace a small init process (pid 1) forks the program and, when the
   program exits, exits too: the kernel then kills every process left in the namespace,
   including ones that called ``setsid()`` to leave the process group.
3. a new root (``pivot_root``): an empty read-only tmpfs holding only read-only binds of the
   runtime (the interpreter, its standard library, the folders of the libraries it loads; the
   layout comes from ``rewards.sandbox.runtime_layout``), ``/dev/null``, ``/dev/zero``,
   ``/dev/urandom``, a fresh ``/proc``, a two-line ``/etc/passwd`` and a private tmpfs of
   ``tmpfs_bytes`` at ``/tmp`` holding the program's files in ``/tmp/sandbox`` (its working
   folder, the only writable place). The host's tree is detached: no project, home, dataset.
4. in the IPC namespace: no SysV shared memory segments or message queues (``shmmni`` and
   ``msgmni`` 0), so no memory can be parked there outside the address-space limit.
5. in the program process: resource limits (CPU seconds, address space, file size, process
   count, open files, no core dumps); every capability dropped from the bounding and ambient
   sets; as root a user namespace of its own in which it runs as uid/gid 65534 (mapped to host
   65534), so its process count is counted per run, not per host user; no nested namespaces
   (every ``max_*_namespaces`` 0 in its user namespace: no tmpfs of its own); a seccomp filter
   refusing ``memfd_create``, ``memfd_secret`` and ``io_uring_setup`` (memory outside the
   address space) and every non-native system call ABI; ``no_new_privs``; a parent-death signal.
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
MS_REMOUNT, MS_NOATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 32, 1024, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 22, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 4, 2
NEW_ROOT = "/tmp"  # the empty tmpfs that becomes "/" is mounted here first (in our namespace only)
SANDBOX_DIR = "/tmp/sandbox"
DEVICES = ("null", "zero", "urandom")
NAMESPACE_LIMITS = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time")
IPC_LIMITS = ("kernel/shmmni", "kernel/msgmni")  # per IPC namespace; 0: no segment, no queue
PASSWD = "nobody:x:{uid}:{gid}:nobody:/tmp/sandbox:/nonexistent\n"
REFUSED = 126
MIN_KERNEL = (5, 14)  # RLIMIT_NPROC counted per user namespace (ucounts) from here on
CAP_SETUID = 7

# system call numbers; denied: memfd_create, memfd_secret, io_uring_setup; x32: the x32 ABI's bit
ARCHES = {
    "x86_64": {"audit": 0xC000003E, "pivot_root": 155, "setsockopt": 54, "denied": (319, 447, 425), "x32": 0x40000000},
    "aarch64": {"audit": 0xC00000B7, "pivot_root": 41, "setsockopt": 208, "denied": (279, 447, 425), "x32": 0},
}
SECCOMP_ALLOW, SECCOMP_ERRNO = 0x7FFF0000, 0x00050000
SOL_SOCKET, SOCKET_BUFFER_OPTIONS = 1, (7, 8, 32, 33)  # SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE
EPERM, ENOSYS = 1, 38

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


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces() -> dict:
    """Unshare what the kernel allows; returns which layers are in place."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(flags) == 0:
        return {"namespaces": True, "userns": False}
    if _libc.unshare(flags | CLONE_NEWUSER) == 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            _write(f"/proc/self/{name}", text)
        return {"namespaces": True, "userns": True}
    return {"namespaces": False, "userns": False, "unshare_errno": ctypes.get_errno()}


def setup_root(cfg: dict) -> list[str]:
    """Build the new root under NEW_ROOT, switch to it, detach the host's tree; returns the
    mount points made. The IPC limits are set first, while the host's /proc is still there."""
    for name in IPC_LIMITS:
        _write(f"/proc/sys/{name}", "0")
    layout, new = cfg["layout"], NEW_ROOT
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path, target in layout["links"]:
        os.makedirs(os.path.dirname(new + path), exist_ok=True)
        os.symlink(target, new + path)
    mounted = ["/"]
    for path in [*layout["binds"], *(f"/dev/{name}" for name in DEVICES)]:
        _bind_readonly(path, new + path)
        mounted.append(path)
    for path in layout["masks"]:  # site-packages inside a bound folder: an empty read-only tmpfs
        _mount("tmpfs", new + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=755")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{new}/dev/{name}")
    os.makedirs(f"{new}/dev/shm", exist_ok=True)
    os.makedirs(f"{new}/etc", exist_ok=True)
    for name in ("passwd", "group"):
        _write(f"{new}/etc/{name}", PASSWD.format(uid=cfg["uid"], gid=cfg["gid"]) if name == "passwd"
               else f"nogroup:x:{cfg['gid']}:\n")
    os.makedirs(f"{new}/proc", exist_ok=True)
    _mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{new}/tmp", exist_ok=True)
    _mount("tmpfs", f"{new}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['limits']['tmpfs_bytes']},mode=755")
    write_files(new + SANDBOX_DIR, cfg["files"], cfg["uid"] if cfg["switch_uid"] else None, cfg["gid"])
    _pivot(new)
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return [*mounted, "/proc", "/tmp"]


def _bind_readonly(source: str, target: str) -> None:
    """A read-only bind; the flags the kernel locks on a mount from a more privileged namespace
    (nosuid, nodev, noexec, atime) are kept, or the remount would be refused."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND)
    st = os.statvfs(source)
    kept = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: MS_NOATIME, os.ST_RELATIME: MS_RELATIME}
    flags = sum(ms for st_flag, ms in kept.items() if st.f_flag & st_flag)
    nodev = 0 if source.startswith("/dev/") else MS_NODEV
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | nodev | flags)


def _pivot(new: str) -> None:
    """pivot_root(".", "."): the old root ends up stacked under the new one, then is detached."""
    os.chdir(new)
    _check(_libc.syscall(ctypes.c_long(_arch()["pivot_root"]), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")


def write_files(folder: str, files: dict[str, str], uid: int | None, gid: int | None) -> None:
    """The program's files in its working folder, owned by the user it runs as."""
    os.mkdir(folder, 0o700)
    for name, text in files.items():
        _write(os.path.join(folder, name), text)
    if uid is not None:
        for path in (folder, *(os.path.join(folder, name) for name in files)):
            os.chown(path, uid, gid)


def _arch() -> dict:
    machine = os.uname().machine
    if machine not in ARCHES:
        raise OSError(ENOSYS, f"no seccomp filter for {machine}: the sandbox supports {', '.join(ARCHES)}")
    return ARCHES[machine]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_filter() -> list[tuple[int, int, int, int]]:
    """BPF: another ABI (i386, x32) -> ENOSYS; memfd_create, memfd_secret, io_uring_setup ->
    EPERM (anonymous memory that RLIMIT_AS does not count); setting a socket's buffer sizes is
    ignored (returns 0; else one socket could queue 2 x net.core.wmem_max); the rest allowed."""
    arch = _arch()
    lo = lambda i: 16 + 8 * i  # noqa: E731  (seccomp_data: the low 32 bits of argument i)
    code = [("ld", 4), ("jeq", arch["audit"], None, "enosys"), ("ld", 0)]
    code += [("jge", arch["x32"], "enosys", None)] if arch["x32"] else []
    code += [("jeq", nr, "eperm", None) for nr in arch["denied"]]
    code += [("jeq", arch["setsockopt"], None, "allow"), ("ld", lo(1)), ("jeq", SOL_SOCKET, None, "allow"),
             ("ld", lo(2)), *[("jeq", option, "ignore", None) for option in SOCKET_BUFFER_OPTIONS]]
    code += [("label", "allow"), ("ret", SECCOMP_ALLOW), ("label", "eperm"), ("ret", SECCOMP_ERRNO | EPERM),
             ("label", "enosys"), ("ret", SECCOMP_ERRNO | ENOSYS), ("label", "ignore"), ("ret", SECCOMP_ERRNO)]
    return _assemble(code)


def _assemble(code: list[tuple]) -> list[tuple[int, int, int, int]]:
    """(op, k[, jump-if-true label, jump-if-false label]) -> sock_filter tuples; a label of None
    goes on with the next instruction (BPF jumps count from it)."""
    at, labels = 0, {}
    for ins in code:
        if ins[0] == "label":
            labels[ins[1]] = at
        else:
            at += 1
    prog: list[tuple[int, int, int, int]] = []
    for ins in code:
        if ins[0] == "ld":
            prog.append((0x20, 0, 0, ins[1]))  # BPF_LD | BPF_W | BPF_ABS
        elif ins[0] == "ret":
            prog.append((0x06, 0, 0, ins[1]))  # BPF_RET | BPF_K
        elif ins[0] in ("jeq", "jge"):
            here = len(prog) + 1
            jt, jf = (0 if label is None else labels[label] - here for label in ins[2:])
            prog.append((0x15 if ins[0] == "jeq" else 0x35, jt, jf, ins[1]))  # BPF_JMP | BPF_JEQ/JGE | BPF_K
    return prog


def install_seccomp() -> None:
    prog = seccomp_filter()
    filters = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), filters)
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0), "seccomp")


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets: after the exec below no capability can come back,
    whether the process runs as uid 65534 or as uid 0 of its own user namespace."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def forbid_namespaces() -> None:
    """No new namespace of any kind inside the program's user namespace (the caller holds
    CAP_SYS_RESOURCE there): a nested user namespace could mount a tmpfs of any size."""
    for kind in NAMESPACE_LIMITS:
        path = f"/proc/sys/user/max_{kind}_namespaces"
        if os.path.exists(path):
            _write(path, "0")


def own_user_namespace(sync: tuple[int, int]) -> None:
    """Root only: a user namespace for this run; the init (outside it) maps 65534 -> 65534.
    RLIMIT_NPROC then counts this run's processes and threads, not every sandbox's."""
    ready, mapped = sync
    _check(_libc.unshare(CLONE_NEWUSER), "unshare a user namespace")
    os.write(ready, b"u")
    if os.read(mapped, 1) != b"m":
        raise OSError(EPERM, "the init did not map the program's user namespace")
    forbid_namespaces()


def limit_and_exec(cfg: dict, sync: tuple[int, int] | None) -> None:
    """In the program process: rlimits, drop privileges, exec. Never returns."""
    lim = cfg["limits"]
    cpu = int(lim["cpu_s"])
    per_process = lim["memory_bytes"] // max(1, lim["processes"])  # the tree: at most memory_bytes
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (per_process, per_process))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sync is not None:
        own_user_namespace(sync)
    if cfg["isolated"]:
        drop_capabilities()
    if cfg["switch_uid"]:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg["isolated"]:
        install_seccomp()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir(cfg["cwd"])
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def run_init(cfg: dict, report_fd: int) -> int:
    """Pid 1 of the namespace (or the plain launcher): start the program, reap, return its status."""
    if cfg["isolated"]:
        if cfg["userns"]:  # the launcher's user namespace is the program's: forbid nesting here
            forbid_namespaces()
        _send(report_fd, {"mounts": setup_root(cfg)})
        cfg["cwd"] = SANDBOX_DIR
    else:
        cfg["cwd"] = cfg["unisolated_dir"]
    cfg["env"].update(HOME=cfg["cwd"], TMPDIR=cfg["cwd"])
    own_ns = cfg["isolated"] and cfg["switch_uid"]
    ready_r, ready_w = os.pipe() if own_ns else (-1, -1)
    mapped_r, mapped_w = os.pipe() if own_ns else (-1, -1)
    pid = os.fork()
    if pid == 0:
        try:
            limit_and_exec(cfg, (ready_w, mapped_r) if own_ns else None)
        finally:
            os._exit(127)
    if own_ns:
        _map_program(pid, cfg, ready_r, mapped_w)
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


def _map_program(pid: int, cfg: dict, ready: int, mapped: int) -> None:
    """Once the program has its user namespace: uid/gid 65534 inside are 65534 outside."""
    try:
        if os.read(ready, 1) == b"u":
            _write(f"/proc/{pid}/uid_map", f"{cfg['uid']} {cfg['uid']} 1")
            _write(f"/proc/{pid}/gid_map", f"{cfg['gid']} {cfg['gid']} 1")
            os.write(mapped, b"m")
    except OSError:  # the program died, or a map was refused: it then refuses to go on
        pass
    finally:
        for fd in (ready, mapped):
            os.close(fd)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


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


def main(config_fd: int, report_fd: int) -> int:
    cfg = json.loads(_read_all(config_fd))
    os.set_inheritable(report_fd, False)  # the program never gets it (it closes at exec)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    report = enter_namespaces()
    cfg["userns"], cfg["isolated"] = report["userns"], report["namespaces"]
    # root switches the program to uid 65534; uid 0 of a user namespace (or a root without
    # CAP_SETUID, as in an unprivileged container) cannot, and keeps its uid without capabilities
    cfg["switch_uid"] = os.geteuid() == 0 and not cfg["userns"] and _has_capability(CAP_SETUID)
    # before 5.14 RLIMIT_NPROC counts per host user: concurrent sandboxes would share one budget
    old_kernel = kernel_version() < MIN_KERNEL
    report["old_kernel"] = old_kernel
    _send(report_fd, report)
    if cfg["require_isolation"] and (old_kernel or not report["namespaces"]):
        return REFUSED
    if not report["namespaces"]:
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
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
