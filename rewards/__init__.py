"""The reward plug-in API: a registry of reward functions and the lookup the pipeline uses.

A reward function follows the TRL convention::

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

``columns`` are the dataset's other columns for the same rows (e.g. ``ground_truth``). A
score of ``None`` means "not applicable" to that sample: it is left out of that component's
mean, and counts as 0 in the weighted total. Async functions (``async def``) are allowed.

Three ways to make a function known, all looked up by :func:`get`:

- ``@rewards.register("name")`` on a function (or on a class whose instances are callable
  with the same signature: a *stateful* reward such as a reward model, built once with the
  recipe's keyword arguments and hosted in its own actor by the reward service);
- a string ``"package.module:function"`` or ``"path/to/file.py:function"``;
- a third-party package's entry point in the group ``rl_pipeline.rewards``
  (``[project.entry-points."rl_pipeline.rewards"] my_reward = "pkg.mod:fn"``).

Per-sample functions in the veRL style ``fn(data_source, solution_str, ground_truth,
extra_info) -> float | dict`` are adapted automatically (recognised by their parameter names)
or explicitly with :func:`from_verl`; a dict result contributes its ``"score"`` key.

Every function found is wrapped in a :class:`RewardFn`, which checks its output: the wrong
number of scores or a non-numeric score raises :class:`RewardOutputError` naming the function.
This package does not import Ray; the service in ``rl_pipeline/workers/reward.py`` hosts it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.metadata
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from math import isnan  # not `import math`: the submodule rewards.math would shadow it
from typing import Any

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rl_pipeline.rewards"
BUILTIN_MODULES = ("rewards.math", "rewards.format", "rewards.code", "rewards.model_based")
VERL_PARAMETERS = ("data_source", "solution_str", "ground_truth", "extra_info")

_REGISTRY: dict[str, Callable[..., Any]] = {}
_STATE = {"builtins_loaded": False, "entry_points_loaded": False}


class RewardError(Exception):
    """Base class of the errors this package raises."""


class UnknownRewardError(RewardError, LookupError):
    """A name that is neither registered, an entry point, nor an importable path."""


class RewardOutputError(RewardError, ValueError):
    """A reward function returned something other than one number (or None) per sample."""


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a reward function (or a stateful reward class) under ``name``."""

    def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
            raise RewardError(
                f"reward name {name!r} is already registered to {_qualname(existing)}; "
                f"cannot register {_qualname(obj)} under the same name"
            )
        _REGISTRY[name] = obj
        return obj

    return decorator


def registered() -> list[str]:
    """Sorted names of every registered reward, built-ins and entry points included."""
    _load_builtins()
    _load_entry_points()
    return sorted(_REGISTRY)


def get(name_or_path: str, **kwargs: Any) -> RewardFn:
    """The batch callable for a registered name, ``"module:function"`` or ``"file.py:function"``.

    ``kwargs`` are bound to every call (functions) or passed to the constructor (stateful
    classes). An unknown name raises :class:`UnknownRewardError` listing the registered ones.
    """
    obj = _resolve(name_or_path)
    return RewardFn(name=name_or_path, target=obj, kwargs=dict(kwargs))


def resolve(name_or_path: str) -> Callable[..., Any]:
    """The raw registered object behind a name (no wrapping); raises like :func:`get`."""
    return _resolve(name_or_path)


def is_stateful(name_or_path: str) -> bool:
    """Whether the reward is a class to instantiate once (e.g. a model) rather than a function."""
    return inspect.isclass(_resolve(name_or_path))


def from_verl(fn: Callable[..., Any]) -> Callable[..., list[float | None]]:
    """Adapt a veRL per-sample ``fn(data_source, solution_str, ground_truth, extra_info)``.

    Columns used: ``data_source``, ``ground_truth`` (or veRL's ``reward_model`` dict holding
    ``ground_truth``) and ``extra_info``; missing ones are passed as ``None``. A dict result
    contributes its ``"score"`` entry.
    """

    def batch(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        n = len(completions)
        sources = columns.get("data_source") or [None] * n
        truths = columns.get("ground_truth")
        if truths is None and columns.get("reward_model") is not None:
            truths = [(row or {}).get("ground_truth") for row in columns["reward_model"]]
        truths = truths or [None] * n
        extras = columns.get("extra_info") or [None] * n
        scores = []
        for i in range(n):
            result = _run_maybe_async(fn, sources[i], completions[i], truths[i], extras[i])
            scores.append(result.get("score") if isinstance(result, dict) else result)
        return scores

    batch.__name__ = getattr(fn, "__name__", "verl_reward")
    batch.__qualname__ = getattr(fn, "__qualname__", batch.__name__)
    batch.__wrapped_verl__ = fn  # type: ignore[attr-defined]
    return batch


@dataclass
class RewardFn:
    """A resolved reward: call it with a batch, get one validated score (or None) per sample.

    For a stateful class the instance is built on first call with ``kwargs``; for a function
    ``kwargs`` are passed on every call. Columns the function does not accept are dropped
    unless it takes ``**kwargs``.
    """

    name: str
    target: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    _instance: Any = field(default=None, repr=False)

    @property
    def stateful(self) -> bool:
        return inspect.isclass(self.target)

    def __call__(
        self, prompts: list[str], completions: list[str], **columns: Any
    ) -> list[float | None]:
        if len(prompts) != len(completions):
            raise RewardOutputError(
                f"reward {self.name!r}: got {len(prompts)} prompts but {len(completions)} completions"
            )
        for key, values in columns.items():
            if len(values) != len(completions):
                raise RewardOutputError(
                    f"reward {self.name!r}: column {key!r} has {len(values)} rows, "
                    f"expected {len(completions)}"
                )
        fn, call_kwargs = self._callable()
        extra = {**_accepted(fn, columns), **call_kwargs}
        raw = _run_maybe_async(fn, prompts, completions, **extra)
        return self._validate(raw, len(completions))

    def build(self) -> RewardFn:
        """Construct a stateful reward now (e.g. load its model) instead of on the first call."""
        self._callable()
        return self

    def _callable(self) -> tuple[Callable[..., Any], dict[str, Any]]:
        if not self.stateful:
            return self.target, self.kwargs
        if self._instance is None:
            self._instance = self.target(**self.kwargs)
        return self._instance, {}

    def _validate(self, raw: Any, n: int) -> list[float | None]:
        if not isinstance(raw, (list, tuple)) and not hasattr(raw, "tolist"):
            raise RewardOutputError(
                f"reward {self.name!r} ({_qualname(self.target)}) returned {_shown(raw)} "
                f"({type(raw).__name__}); expected a list of {n} scores"
            )
        scores = list(raw.tolist() if hasattr(raw, "tolist") else raw)
        if len(scores) != n:
            raise RewardOutputError(
                f"reward {self.name!r} ({_qualname(self.target)}) returned {len(scores)} scores "
                f"for {n} completions"
            )
        out: list[float | None] = []
        for i, score in enumerate(scores):
            if score is None:
                out.append(None)
                continue
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                try:
                    score = float(score)  # numpy scalars, 0-d tensors
                except (TypeError, ValueError):
                    raise RewardOutputError(
                        f"reward {self.name!r} ({_qualname(self.target)}) returned a non-numeric "
                        f"score {score!r} ({type(score).__name__}) for sample {i}"
                    ) from None
            if isnan(float(score)):
                raise RewardOutputError(
                    f"reward {self.name!r} ({_qualname(self.target)}) returned NaN for sample {i}"
                )
            out.append(float(score))
        return out


def _shown(value: Any) -> str:
    """What a function returned, short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _resolve(name_or_path: str) -> Callable[..., Any]:
    if not isinstance(name_or_path, str) or not name_or_path:
        raise UnknownRewardError(f"reward name must be a non-empty string, got {name_or_path!r}")
    _load_builtins()
    if name_or_path in _REGISTRY:
        return _adapt(_REGISTRY[name_or_path])
    if ":" in name_or_path:
        return _adapt(_load_path(name_or_path))
    _load_entry_points()
    if name_or_path in _REGISTRY:
        return _adapt(_REGISTRY[name_or_path])
    raise UnknownRewardError(
        f"unknown reward {name_or_path!r}; registered rewards are: {', '.join(registered())}. "
        "Give a registered name, 'package.module:function' or 'path/to/file.py:function'."
    )


def _load_path(spec: str) -> Callable[..., Any]:
    from rl_pipeline.plugins import load_object

    return load_object(spec, "reward", UnknownRewardError)


def _adapt(obj: Callable[..., Any]) -> Callable[..., Any]:
    """veRL-style per-sample functions become batch functions; everything else is as is."""
    if inspect.isclass(obj):
        return obj
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return obj
    if params[:2] == list(VERL_PARAMETERS[:2]):
        return from_verl(obj)
    return obj


def _accepted(fn: Callable[..., Any], columns: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(columns)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(columns)
    return {k: v for k, v in columns.items() if k in params}


def _run_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    if not inspect.isawaitable(result):
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(result))
    # Called from inside a running event loop (e.g. an async actor): run on a fresh thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _await(result)).result()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _qualname(obj: Any) -> str:
    from rl_pipeline.plugins import qualname

    return qualname(obj)


def _load_builtins() -> None:
    if _STATE["builtins_loaded"]:
        return
    _STATE["builtins_loaded"] = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def _load_entry_points() -> None:
    if _STATE["entry_points_loaded"]:
        return
    _STATE["entry_points_loaded"] = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            _REGISTRY[ep.name] = ep.load()
        except Exception:  # a broken plug-in must not hide the others
            logger.exception("reward entry point %r (%s) failed to load", ep.name, ep.value)
