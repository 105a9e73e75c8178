"""Atomic writes: a file or folder is either its old self or complete, never half-written.

Every writer goes the same way: write under a temp name in the same folder (`.NAME.tmp`, so the
rename stays on one file system and leftovers are easy to recognise), flush and fsync what was
written, `os.replace` it onto the final name, then fsync the folder so the rename itself survives
a power loss. On an exception the temp name is removed and the exception goes on.

A kill (SIGKILL, power loss) can still leave a `.NAME.tmp` behind; the owners of folders that
resume (checkpoint.py, data/distill_output.py) remove such leftovers when they reopen.

This module imports only the standard library, so both `rl_pipeline` and `rewards` can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temp_name(path: Path) -> Path:
    """Where the next version of `path` is written before it replaces `path`."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temp path for any writer (matplotlib, datasets, a loop of writes); when the block
    ends without an exception the file is fsynced and replaces `path`."""
    path = Path(path)
    tmp = temp_name(path)
    tmp.unlink(missing_ok=True)  # a leftover of a killed writer
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yields an empty temp folder; when the block ends without an exception every file in it is
    fsynced and the folder takes the name `path`, replacing an older folder of that name (removed
    just before the rename: a kill in between leaves the temp folder, complete, and no `path`)."""
    path = Path(path)
    tmp = temp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                _fsync_path(Path(folder) / name)
            _fsync_path(Path(folder))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(path.parent)


def _fsync_path(path: Path) -> None:
    """fsync a file or folder by path (fsync acts on the inode, so a fresh descriptor will do)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
