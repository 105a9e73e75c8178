"""The tool plug-in API: a registry of tools the policy may call while it reasons.

A tool is a plain Python function whose keyword arguments are what the model writes in its
call and whose return value (anything ``str()`` can print) is what the model reads back::

    @tools.register("lookup")
    def lookup(key: str, default: str = "") -> str:
        \"\"\"Look a key up in the table.\"\"\"

Tools run where a timeout can stop them: each call of a tool runs in a worker process
(``rl_pipeline.tools.processes``), killed when it overruns ``tools.timeout_s``, so a tool must
be importable there (a module-level function of a module or file). Tools registered with
``inline=True`` run on a driver thread instead, which saves the process round trip but cannot
be stopped: only tools whose cost is bounded by construction (the built-ins) are inline.

Three ways to name a tool in a recipe's ``tools.functions``, as for rewards: a registered name
(built-ins: ``calculator``, ``python``), ``"package.module:function"`` or
``"path/to/file.py:function"``. :func:`schema` gives the JSON schema of a tool's arguments from
its signature (what a chat template's ``tools=`` argument takes), and a call whose arguments do
not fit it is answered with an error message instead of running. Keyword-only parameters
(after ``*``) are configuration: the recipe sets them (``tools.functions[].kwargs``), the
schema leaves them out and a call that sets them is refused.

This package imports no Ray; ``rl_pipeline.workers.multiturn`` runs the tools during rollouts.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from rl_pipeline.plugins import FILE_MODULES  # how a module loaded by path is named

BUILTIN_MODULES = ("rl_pipeline.tools.builtin",)

_REGISTRY: dict[str, Callable[..., Any]] = {}
_INLINE_ATTR = "_rlp_tool_inline"  # set on a function registered inline=True

# Python annotation -> JSON-schema type; anything else is left untyped ({}).
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


class ToolError(Exception):
    """A tool name that does not resolve, or a registration clash."""


def register(name: str, inline: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a tool function under ``name`` (the name the model calls).
    ``inline=True`` runs it on a driver thread, not in a worker process: only for a tool whose
    every call is cheap whatever its arguments (an overrun there cannot be stopped)."""

    from rl_pipeline.plugins import qualname as _qualname  # as the reward registry names clashes

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not fn and _qualname(existing) != _qualname(fn):
            raise ToolError(f"tool name {name!r} is already registered to {_qualname(existing)}; "
                            f"cannot register {_qualname(fn)} under the same name")
        _REGISTRY[name] = fn
        if inline:
            setattr(fn, _INLINE_ATTR, True)
        return fn

    return decorator


def registered() -> list[str]:
    """Sorted names of every registered tool, built-ins included."""
    _load_builtins()
    return sorted(_REGISTRY)


def resolve(name_or_path: str) -> Callable[..., Any]:
    """The function behind a registered name, ``module:function`` or ``file.py:function``."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ToolError(f"tool name must be a non-empty string, got {name_or_path!r}")
    _load_builtins()
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    if ":" not in name_or_path:
        raise ToolError(f"unknown tool {name_or_path!r}; registered tools are: {', '.join(registered())}. "
                        "Give a registered name, 'package.module:function' or 'path/to/file.py:function'.")
    from rl_pipeline.plugins import load_object

    return load_object(name_or_path, "tool", ToolError)


def call_name(name_or_path: str) -> str:
    """The name the model writes to call a tool: the registered name, or the function name of a path."""
    return name_or_path.rpartition(":")[2] if ":" in name_or_path else name_or_path


def schema(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI/Qwen-style function schema of a tool, from its signature and docstring:
    ``{"type": "function", "function": {"name", "description", "parameters"}}``."""
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose their types
        hints = {}
    properties, required = {}, []
    for pname, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.KEYWORD_ONLY):
            continue  # keyword-only: the recipe's configuration, not the model's to set
        properties[pname] = _json_type(hints.get(pname))
        if param.default is param.empty:
            required.append(pname)
    description = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }}


def check_arguments(tool_schema: dict[str, Any], arguments: Any) -> str | None:
    """Why ``arguments`` do not fit the schema (missing, unknown or mistyped keys), or None."""
    params = tool_schema["function"]["parameters"]
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    missing = [k for k in params["required"] if k not in arguments]
    unknown = [k for k in arguments if k not in params["properties"]]
    if missing or unknown:
        return f"missing arguments {missing}, unknown arguments {unknown}; it takes {list(params['properties'])}"
    for key, value in arguments.items():
        expected = params["properties"][key].get("type")
        if expected and not _fits(value, expected):
            return f"argument {key!r} must be of type {expected}, got {type(value).__name__}"
    return None


@dataclass
class Tool:
    """A resolved tool: the name the model calls, the function, its schema and recipe kwargs."""

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)  # bound on every call (not the model's to set)

    @property
    def schema(self) -> dict[str, Any]:
        hidden = set(self.kwargs)
        full = schema(self.name, self.fn)
        params = full["function"]["parameters"]
        params["properties"] = {k: v for k, v in params["properties"].items() if k not in hidden}
        params["required"] = [k for k in params["required"] if k not in hidden]
        return full

    @property
    def inline(self) -> bool:
        """Runs on a driver thread (registered ``inline=True``), not in a worker process."""
        return bool(getattr(self.fn, _INLINE_ATTR, False))

    @property
    def locator(self) -> str:
        """``module:function`` or ``file.py:function`` a worker process imports this tool by;
        ToolError when it has none (a nested function, a lambda, a callable object)."""
        qualname, module = getattr(self.fn, "__qualname__", ""), sys.modules.get(getattr(self.fn, "__module__", ""))
        by_path = module is not None and (module.__name__ == "__main__" or module.__name__.startswith(FILE_MODULES))
        if (not qualname.isidentifier() or module is None or getattr(module, qualname, None) is not self.fn
                or (by_path and not getattr(module, "__file__", None))):
            raise ToolError(f"tool {self.name!r} ({self.fn!r}) cannot be imported by a worker process: "
                            "define it at module level of a module or a .py file")
        # A script's functions and files loaded by path (rewards._import_file) import by their path.
        if by_path:
            return f"{module.__file__}:{qualname}"
        return f"{module.__name__}:{qualname}"

    def __call__(self, arguments: dict[str, Any]) -> str:
        return str(self.fn(**arguments, **self.kwargs))


def load(specs: list[tuple[str, dict[str, Any]]]) -> dict[str, Tool]:
    """``[(name_or_path, kwargs)]`` -> tools by the name the model calls; raises ToolError naming
    the entry when a name does not resolve, two tools share a call name, or a kwarg is unknown."""
    tools: dict[str, Tool] = {}
    for i, (spec, kwargs) in enumerate(specs):
        where = f"tools.functions[{i}] ({spec!r})"
        try:
            fn = resolve(spec)
        except ToolError as exc:
            raise ToolError(f"{where}: {exc}") from None
        name = call_name(spec)
        if name in tools:
            raise ToolError(f"{where}: a tool named {name!r} is already listed")
        params = inspect.signature(fn).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ToolError(f"{where}: unknown keyword argument(s) {unknown}; it accepts: {', '.join(params)}")
        tools[name] = Tool(name, fn, dict(kwargs))
        if not tools[name].inline:
            try:
                tools[name].locator
            except ToolError as exc:
                raise ToolError(f"{where}: {exc}") from None
    return tools


def _json_type(annotation: Any) -> dict[str, Any]:
    if get_origin(annotation) in (Union, types.UnionType):  # Optional[X] / X | None: the non-None part
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    annotation = get_origin(annotation) or annotation
    return {"type": _JSON_TYPES[annotation]} if annotation in _JSON_TYPES else {}


def _fits(value: Any, expected: str) -> bool:
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    python_type = {v: k for k, v in _JSON_TYPES.items()}[expected]
    return isinstance(value, python_type)


def _load_builtins() -> None:
    """Import the built-in tools, which register themselves (a cached import after the first)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
