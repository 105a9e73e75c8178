"""The algorithm plug-in API: an RL objective is a registered class, shaped like a reward.

An algorithm says three things (see `Algorithm`): which inputs it needs besides the policy's
own logprobs (the reference's, a teacher's, the sampler's), how a group's rewards become
advantages, and its per-token policy term; the shared machinery (importance-sampling
correction, KL term, aggregation with the global normaliser) is `algorithms/grpo.policy_loss`.

Three ways to name one in a recipe (`grpo.algorithm: {name: ..., kwargs: {...}}`):
- a registered name (`@register("name")` on a subclass of `Algorithm`; the built-ins are in
  algorithms/entries.py: grpo, dr_grpo, dapo, gspo, cispo, on_policy_distill);
- "package.module:Class" or "path/to/file.py:Class" (loaded the same way as rewards).
An entry's `presets` are the grpo.* settings it changes (DAPO's clip-higher, GSPO's tiny clip
range, ...); a setting the recipe writes itself wins over the preset.

The built-ins register when the package is imported (algorithms/__init__.py imports entries).
Pure: no Ray, no I/O besides importing the user's file. The driver builds the algorithm to
compute advantages; every trainer rank builds its own copy from the same `AlgorithmSpec`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from torch import Tensor

from rl_pipeline.algorithms.grpo import (
    GRPOLossConfig,
    LossNormaliser,
    clipped_surrogate_loss,
    group_advantages,
    policy_loss,
)

_REGISTRY: dict[str, type["Algorithm"]] = {}


class AlgorithmError(ValueError):
    """An algorithm name or path that cannot be found or built; the message names it."""


class Algorithm:
    """GRPO's objective; subclass it and override what your algorithm changes.

    Class attributes say what the algorithm needs and changes:
    - `presets`: grpo.* settings it changes unless the recipe sets them;
    - `needs_teacher`: a frozen teacher scores every sampled token (recipe `teacher:`);
    - `keeps_flat_groups`: groups whose rewards are all equal still teach (a teacher's signal).
    Instance attributes: `settings` (the loss knobs, algorithms/grpo.GRPOLossConfig) and the
    entry's own keyword arguments (`grpo.algorithm.kwargs`), given to `__init__`.
    """

    presets: ClassVar[dict[str, Any]] = {}
    needs_teacher: ClassVar[bool] = False
    keeps_flat_groups: ClassVar[bool] = False

    def __init__(self, settings: GRPOLossConfig = GRPOLossConfig()) -> None:
        self.settings = settings

    @property
    def needs_reference(self) -> bool:
        """The reference model's logprobs: for the KL term."""
        return self.settings.beta > 0

    @property
    def needs_sampler_logprobs(self) -> bool:
        """The engines' logprobs in the loss: for the off-policy correction (tis_cap, mis_band)."""
        return self.settings.corrects_sampler

    # ---------------------------------------------------------------- driver side

    def advantages(self, rewards: Tensor, group_size: int) -> Tensor:
        """[B*G] rewards (group-contiguous) -> [B*G] advantages, one per completion."""
        return group_advantages(rewards, group_size, scale_by_std=self.settings.scale_advantages_by_std)

    def token_advantages(self, advantage: float, sampler_logprobs: list[float],
                         teacher_logprobs: list[float] | None) -> list[float]:
        """The advantage of every sampled token of one completion: its sequence advantage by default."""
        return [advantage] * len(sampler_logprobs)

    # ---------------------------------------------------------------- trainer side

    def token_loss(self, log_ratio: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token policy term [N, T] and the clipped-below / clipped-above masks
        (algorithms/grpo.TokenLoss); GRPO's clipped surrogate by default."""
        return clipped_surrogate_loss(log_ratio, advantages, mask, self.settings)

    def loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
             normaliser: LossNormaliser, ref_logp: Tensor | None = None,
             sampler_logp: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """This micro-batch's share of the loss and of its metrics (algorithms/grpo.policy_loss)."""
        token_loss = lambda r, a, m, _config: self.token_loss(r, a, m)  # noqa: E731
        return policy_loss(token_loss, logp, old_logp, advantages, mask, normaliser=normaliser,
                           config=self.settings, ref_logp=ref_logp, sampler_logp=sampler_logp)


def register(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make an `Algorithm` subclass known as `name`."""

    def decorator(cls: type[Algorithm]) -> type[Algorithm]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise AlgorithmError(f"algorithm name {name!r} is already registered to {existing.__qualname__}")
        _check_class(name, cls)
        _REGISTRY[name] = cls
        return cls

    return decorator


def registered() -> list[str]:
    """Sorted names of the registered algorithms, built-ins included."""
    return sorted(_REGISTRY)


def resolve(name_or_path: str) -> type[Algorithm]:
    """The class behind a registered name, "module:Class" or "file.py:Class"."""
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    if ":" not in name_or_path:
        raise AlgorithmError(f"unknown algorithm {name_or_path!r}; registered algorithms are: "
                             f"{', '.join(registered())}. Give a registered name, 'package.module:Class' "
                             "or 'path/to/file.py:Class' (a subclass of rl_pipeline.algorithms.Algorithm).")
    from rl_pipeline.plugins import load_object

    cls = load_object(name_or_path, "algorithm", AlgorithmError)
    _check_class(name_or_path, cls)
    return cls


def _check_class(name: str, cls: Any) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Algorithm)):
        raise AlgorithmError(f"algorithm {name!r}: {cls!r} is not a subclass of rl_pipeline.algorithms.Algorithm")


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the driver ships to every trainer rank: the entry, its kwargs, the resolved loss settings."""

    name: str = "grpo"
    kwargs: dict[str, Any] = field(default_factory=dict)
    settings: GRPOLossConfig = GRPOLossConfig()

    def build(self) -> Algorithm:
        """The algorithm object; a wrong keyword argument raises AlgorithmError naming the entry."""
        cls = resolve(self.name)
        try:
            return cls(self.settings, **self.kwargs)
        except TypeError as exc:
            raise AlgorithmError(f"algorithm {self.name!r}: grpo.algorithm.kwargs {self.kwargs}: {exc}") from None
