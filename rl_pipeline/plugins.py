"""Load a user's object from "package.module:name" or "path/to/file.py:name".

One loader for every plug-in surface (rewards, tools, algorithms), so each reports a bad path
the same way: the file or module that cannot be imported, the line that does not parse or
raised, or the names the module does define. The caller passes its own error class and the
word the message starts with ("reward", "tool", "algorithm").
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

FILE_MODULES = "rl_pipeline_user_plugins."  # the prefix of every module loaded from a file path


def qualname(obj: Any) -> str:
    """"module.qualname" of a plug-in (of the wrapped function for an adapted veRL reward): how the
    registries name the two sides of a name clash."""
    wrapped = getattr(obj, "__wrapped_verl__", obj)
    return f"{getattr(wrapped, '__module__', '?')}.{getattr(wrapped, '__qualname__', repr(wrapped))}"


def load_object(spec: str, kind: str, error: type[Exception]) -> Any:
    """The callable `name` of `module:name` or `file.py:name`; raises `error` naming what is wrong."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise error(f"{kind} {spec!r}: expected 'module:name' or 'file.py:name'")
    try:
        module = _import_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    except (ImportError, FileNotFoundError) as exc:
        raise error(f"{kind} {spec!r}: cannot import {target!r}: {exc}") from exc
    except SyntaxError as exc:  # the user's file (or a module it imports) does not parse
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise error(f"{kind} {spec!r}: {where}: {type(exc).__name__}: {exc.msg}") from None
    except Exception as exc:  # module-level code of the user's file raised
        raise error(f"{kind} {spec!r}: importing {target!r} raised at {raised_at(exc)}: "
                    f"{type(exc).__name__}: {exc}") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise error(f"{kind} {spec!r}: {target!r} has no callable {attr!r}; it defines: {', '.join(names)}")
    return obj


def raised_at(exc: BaseException) -> str:
    """'file, line N' of the innermost frame of the exception's traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}, line {frames[-1].lineno}" if frames else "?"


def _import_file(path: Path) -> Any:
    """The module of a file, imported once per process under a name unique to its path."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    module_name = f"{FILE_MODULES}{path.stem}_{abs(hash(str(path))):x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
