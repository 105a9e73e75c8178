"""Which of the host's files a sandboxed program sees: the Python runtime it needs, nothing else.

:func:`runtime_layout` asks the sandbox's interpreter once (per process and interpreter) which
files it uses: its standard library folders (``sys.path`` under ``-I -S``) and every file it
maps after importing each C extension module found there (so the folders of libssl, libffi,
libsqlite, ... come along), plus the ELF interpreter (``/lib64/ld-linux-...``). Each path is
placed as the program and the loader spell it: a symlink on the way (``/lib -> usr/lib``,
``python3 -> python3.11``) is recreated as a symlink, the rest is bound read-only, folders of
mapped files as whole folders (a library's soname links and the libraries that libc loads
later, such as NSS modules, live beside it). A ``site-packages`` or ``dist-packages`` folder
inside a bound folder is masked with an empty tmpfs: programs get the standard library only.

The launcher (``_sandbox_init.py``) builds the new root from this layout; the host's tree
(project, home folders, datasets, ``/work``, ``/srv``, ``/opt``, ``/mnt``) is never bound.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import struct
import subprocess

RUNTIME_PROBE = r"""
import glob, json, os, sys
for folder in [p for p in sys.path if p]:
    for path in glob.glob(os.path.join(folder, "*.so")):
        try:
            __import__(os.path.basename(path).split(".")[0])
        except BaseException:
            pass
mapped = set()
for line in open("/proc/self/maps"):
    fields = line.split(None, 5)
    if len(fields) == 6 and fields[5].startswith("/") and not fields[5].rstrip().endswith("(deleted)"):
        mapped.add(fields[5].rstrip("\n"))
print(json.dumps({"path": [p for p in sys.path if p], "mapped": sorted(mapped)}))
"""
MAX_LINKS = 40
SITE_FOLDERS = ("site-packages", "dist-packages")


@functools.lru_cache(maxsize=None)
def runtime_layout(python: str) -> dict:
    """``{"binds": [...], "links": [[path, target], ...], "masks": [...]}`` for ``python``."""
    done = subprocess.run([python, "-I", "-S", "-c", RUNTIME_PROBE], capture_output=True, text=True,
                          timeout=120, cwd="/", stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if done.returncode != 0:
        raise RuntimeError(f"sandbox: cannot list the runtime of {python}: {done.stderr.strip()[-300:]}")
    seen = json.loads(done.stdout.splitlines()[-1])
    executable = os.path.realpath(python)
    wanted = [python, elf_interpreter(executable), *seen["path"],
              *sorted({os.path.dirname(p) for p in seen["mapped"] if p != executable})]
    links: dict[str, str] = {}
    binds: set[str] = set()
    for path in wanted:
        if path and os.path.exists(path):
            _place(os.path.abspath(path), links, binds)
    kept = _outermost(binds)
    for path in kept:
        if path == "/" or path == "/tmp" or path.startswith("/tmp/"):
            raise RuntimeError(f"sandbox: the runtime of {python} needs {path}, which the sandbox cannot bind "
                               "(its new root is built on /tmp); use an interpreter installed elsewhere")
    inside = lambda p: any(p.startswith(b + "/") for b in kept)  # noqa: E731
    return {"binds": kept, "links": sorted([p, t] for p, t in links.items() if not inside(p)),
            "masks": _site_folders(kept)}


def _place(path: str, links: dict[str, str], binds: set[str]) -> None:
    """Walk ``path`` from the root: record each symlink met and go on from its target; the
    symlink-free remainder is bound."""
    for _ in range(MAX_LINKS):
        parts = path.strip("/").split("/")
        current = ""
        for i, part in enumerate(parts):
            current += "/" + part
            if os.path.islink(current):
                target = os.readlink(current)
                links[current] = target
                path = os.path.normpath(os.path.join(os.path.dirname(current), target, *parts[i + 1:]))
                break
        else:
            binds.add(current or "/")
            return
    raise RuntimeError(f"sandbox: more than {MAX_LINKS} symlinks on the way to {path}")


def _outermost(paths: set[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(paths):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _site_folders(binds: list[str]) -> list[str]:
    found = []
    for folder in binds:
        if os.path.isdir(folder):
            for name in SITE_FOLDERS:
                found += [p for p in (os.path.join(folder, name), *glob.glob(os.path.join(folder, "*", name)))
                          if os.path.isdir(p) and not os.path.islink(p)]
    return sorted(set(found))


def elf_interpreter(executable: str) -> str | None:
    """The PT_INTERP path of a 64-bit little-endian ELF file (x86_64, aarch64), else None."""
    with open(executable, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        entry_size, count = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(entry_size * count)
        for i in range(count):
            if struct.unpack_from("<I", table, i * entry_size)[0] == 3:  # PT_INTERP
                offset, _, _, size = struct.unpack_from("<QQQQ", table, i * entry_size + 8)
                f.seek(offset)
                return f.read(size).rstrip(b"\0").decode()
    return None
