"""The reward service: scores completions with the recipe's weighted reward functions.

Three entry points, all returning a :class:`RewardResult`:

- :func:`score_batch` / :class:`RewardScorer`: plain Python, no Ray needed;
- :class:`RewardService`: the same scorer inside a Ray actor (``RewardService.start(config)``),
  which is what the GRPO driver and the distillation pipeline call;
- :func:`validate`: checks a recipe's ``rewards`` section (names resolve, keyword arguments fit,
  rewards that run model-written code are isolated here) when the recipe loads, before any actor
  starts.

How functions run. Rule-based functions (math, format, code, user functions) run one sample at a
time in a pool of ``num_workers`` worker processes (``rewards.pool``); a sample that runs past
``timeout_s`` has its worker killed and replaced, which works from any thread (unlike
``signal.alarm``). Stateful rewards (classes: ``reward_model``, ``judge``) get the whole batch at
once; under :class:`RewardService` each lives in its own Ray actor (``num_gpus`` in its kwargs
sizes it), under :class:`RewardScorer` in-process. Their time limit is ``timeout_s`` per sample,
summed over the batch; an actor that overruns is killed and restarted on the next call, an
in-process one is abandoned on its thread (it cannot be stopped) and rebuilt.

Failures. A sample whose function raised or timed out scores ``failure_score`` in its component,
is counted in ``reward/errors`` or ``reward/timeouts``, and the first traceback per function is
logged; scoring goes on. A function that breaks the API (wrong number of scores, a non-numeric
score) raises :class:`RewardFunctionError` naming it: that is a bug, not a bad sample.

Totals. ``total[i] = sum_c weight_c * components[c][i]``, where a ``None`` component score
("not applicable") counts as 0. Component means (``reward/<name>/mean``) leave out ``None``.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

import rewards
from rewards import sandbox
from rewards.pool import FunctionSpec, Outcome, SamplePool, Task
from rl_pipeline.config import InputError, RewardsConfig

logger = logging.getLogger(__name__)

ACTOR_ONLY_KWARGS = ("num_gpus",)  # stateful-reward kwargs that size the hosting actor


class RewardFunctionError(RuntimeError):
    """A reward function broke the API (wrong count, non-numeric score): a bug to fix."""


@dataclass
class RewardResult:
    """Scores of one batch: weighted ``total`` per sample, each component, and metrics."""

    total: list[float]
    components: dict[str, list[float | None]]
    metrics: dict[str, float] = field(default_factory=dict)


def component_names(config: RewardsConfig) -> list[str]:
    """Metric names of the components: the registered name, or the function name of a path;
    a repeated name gets ``#2``, ``#3``..."""
    names: list[str] = []
    for spec in config.functions:
        base = spec.name.rpartition(":")[2] if ":" in spec.name else spec.name
        label, k = base, 1
        while label in names:
            k += 1
            label = f"{base}#{k}"
        names.append(label)
    return names


def validate(config: RewardsConfig) -> None:
    """Raise :class:`InputError` naming the function when a name does not resolve or a keyword
    argument is not one the function takes."""
    if not config.functions:
        raise InputError("rewards.functions: at least one reward function is needed")
    for i, spec in enumerate(config.functions):
        where = f"rewards.functions[{i}] ({spec.name!r})"
        try:
            target = rewards.resolve(_absolute(spec.name))
        except rewards.RewardError as exc:
            raise InputError(f"{where}: {exc}") from None
        kwargs = {k: v for k, v in spec.kwargs.items() if k not in ACTOR_ONLY_KWARGS}
        _check_kwargs(where, target, kwargs)
    check_isolation(config)


def check_isolation(config: RewardsConfig) -> None:
    """Raise :class:`InputError` (one line naming ``rewards.functions[i]`` and the opt-in) when a
    reward that runs model-written code (``runs_model_code = True``, e.g. ``code``) would run
    unisolated on this node. Called where the recipe loads and again in the reward actor
    (through :class:`RewardScorer`), whose node may differ from the driver's."""
    for i, spec in enumerate(config.functions):
        try:
            target = rewards.resolve(_absolute(spec.name))
        except rewards.RewardError:
            continue  # validate() reports it
        if getattr(target, "runs_model_code", False) and not spec.kwargs.get("allow_unisolated", False):
            message = sandbox.isolation_error(f"rewards.functions[{i}]")
            if message is not None:
                raise InputError(message)


def _check_kwargs(where: str, target: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise InputError(f"{where}: unknown keyword argument(s) {unknown}; it accepts: {', '.join(params)}")
    if inspect.isclass(target):  # a stateful reward is built from the kwargs alone
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise InputError(f"{where}: {exc}") from None


def _absolute(name: str) -> str:
    """``rel/file.py:fn`` -> ``/abs/rel/file.py:fn`` (workers and actors have other cwds)."""
    target, sep, attr = name.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return name


class InProcessHost:
    """Runs a stateful reward in this process, on one thread, so a timeout can be noticed."""

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name, self.kwargs = name, {k: v for k, v in kwargs.items() if k not in ACTOR_ONLY_KWARGS}
        self._build()

    def _build(self) -> None:
        self.fn = rewards.get(self.name, **self.kwargs)
        self.fn.build()  # construct now: loading a model is not part of any sample's time
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{self.name}")

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list],
                 timeout_s: float) -> list[float | None]:
        future = self.executor.submit(self.fn, prompts, completions, **columns)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            logger.error("reward %r overran %.1f s; abandoning its thread and rebuilding it", self.name, timeout_s)
            self.executor.shutdown(wait=False)
            self._build()
            raise TimeoutError(f"reward {self.name!r} timed out after {timeout_s:g} s") from None

    def close(self) -> None:
        self.executor.shutdown(wait=False)


HostFactory = Callable[[str, dict[str, Any]], Any]


class RewardScorer:
    """Scores batches with every function of a :class:`RewardsConfig`; close() when done."""

    def __init__(self, config: RewardsConfig, host_factory: HostFactory = InProcessHost) -> None:
        validate(config)
        self.config = config
        self.names = component_names(config)
        self.specs = [spec.model_copy(update={"name": _absolute(spec.name)}) for spec in config.functions]
        self.stateful = [rewards.is_stateful(spec.name) for spec in self.specs]
        pool_specs = [FunctionSpec(s.name, dict(s.kwargs)) for s, st in zip(self.specs, self.stateful) if not st]
        self.pool = SamplePool(pool_specs, config.num_workers) if pool_specs else None
        self.hosts = {i: host_factory(s.name, dict(s.kwargs)) for i, s in enumerate(self.specs) if self.stateful[i]}
        self._logged: set[str] = set()

    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list] | None = None) -> RewardResult:
        columns = dict(columns or {})
        _check_lengths(prompts, completions, columns)
        start = time.monotonic()
        outcomes = self._run_functions(prompts, completions, columns)
        for i, host in self.hosts.items():
            outcomes[i] = self._run_stateful(i, host, prompts, completions, columns)
        components = {name: self._scores(name, outs) for name, outs in zip(self.names, outcomes)}
        weights = {name: spec.weight for name, spec in zip(self.names, self.specs)}
        total = [sum(weights[n] * (components[n][j] or 0.0) for n in self.names) for j in range(len(completions))]
        metrics = _metrics(components, outcomes, self.names, total)
        metrics["reward/time_s"] = time.monotonic() - start
        return RewardResult(total=total, components=components, metrics=metrics)

    def _run_functions(self, prompts: list[str], completions: list[str],
                       columns: dict[str, list]) -> list[list[Outcome]]:
        outcomes: list[list[Outcome]] = [[] for _ in self.specs]
        pool_index = [i for i, st in enumerate(self.stateful) if not st]
        if not pool_index or not completions:
            return outcomes
        tasks = [
            Task(k, prompts[j], completions[j], {key: values[j] for key, values in columns.items()})
            for k in range(len(pool_index)) for j in range(len(completions))
        ]
        flat = self.pool.run(tasks, self.config.timeout_s)
        n = len(completions)
        for k, i in enumerate(pool_index):
            outcomes[i] = flat[k * n:(k + 1) * n]
        return outcomes

    def _run_stateful(self, i: int, host: Any, prompts: list[str], completions: list[str],
                      columns: dict[str, list]) -> list[Outcome]:
        budget = self.config.timeout_s * max(1, len(completions))
        try:
            scores = host(prompts, completions, columns, budget)
        except rewards.RewardOutputError as exc:
            raise RewardFunctionError(str(exc)) from None
        except TimeoutError as exc:
            return [Outcome("timeout", error=str(exc))] * len(completions)
        except Exception as exc:  # noqa: BLE001 - any failure of a reward is a failed batch
            return [Outcome("error", error=_describe(exc))] * len(completions)
        return [Outcome("ok", score=s) for s in scores]

    def _scores(self, name: str, outcomes: list[Outcome]) -> list[float | None]:
        scores: list[float | None] = []
        for row, outcome in enumerate(outcomes):
            if outcome.status == "invalid":
                raise RewardFunctionError(f"{outcome.error} (batch row {row})")
            if outcome.status == "ok":
                scores.append(outcome.score)
                continue
            if name not in self._logged:
                self._logged.add(name)
                logger.error("reward %r failed on batch row %d (%s; scored %g; later failures of this "
                             "function are only counted):\n%s", name, row, outcome.status,
                             self.config.failure_score, outcome.error)
            scores.append(self.config.failure_score)
        return scores

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        for host in self.hosts.values():
            host.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def score_batch(config: RewardsConfig, prompts: list[str], completions: list[str],
                columns: dict[str, list] | None = None) -> RewardResult:
    """One-shot scoring without Ray (starts and stops a worker pool: reuse a RewardScorer for
    repeated calls)."""
    with RewardScorer(config) as scorer:
        return scorer.score(prompts, completions, columns)


def _check_lengths(prompts: list[str], completions: list[str], columns: dict[str, list]) -> None:
    if len(prompts) != len(completions):
        raise InputError(f"reward scoring: {len(prompts)} prompts but {len(completions)} completions")
    for key, values in columns.items():
        if len(values) != len(completions):
            raise InputError(f"reward scoring: column {key!r} has {len(values)} rows for {len(completions)} completions")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _metrics(components: dict[str, list[float | None]], outcomes: list[list[Outcome]],
             names: list[str], total: list[float]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    errors = timeouts = 0
    for name, outs in zip(names, outcomes):
        values = [v for v in components[name] if v is not None]
        if values:
            metrics[f"reward/{name}/mean"] = statistics.fmean(values)
        metrics[f"reward/{name}/applicable"] = float(len(values))
        metrics[f"reward/{name}/errors"] = float(sum(o.status == "error" for o in outs))
        metrics[f"reward/{name}/timeouts"] = float(sum(o.status == "timeout" for o in outs))
        errors += int(metrics[f"reward/{name}/errors"])
        timeouts += int(metrics[f"reward/{name}/timeouts"])
    if total:
        metrics["reward/total/mean"] = statistics.fmean(total)
        metrics["reward/total/std"] = statistics.pstdev(total)
        metrics["reward/total/min"], metrics["reward/total/max"] = min(total), max(total)
    metrics["reward/errors"], metrics["reward/timeouts"] = float(errors), float(timeouts)
    return metrics


@ray.remote(num_cpus=0)
class ModelRewardActor:
    """Hosts one stateful reward (a reward model, a judge) and scores whole batches."""

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.fn = rewards.get(name, **kwargs)
        self.fn.build()

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[float | None]:
        return self.fn(prompts, completions, **columns)


class ActorHost:
    """Driver-side handle of a :class:`ModelRewardActor`; kills and rebuilds it on a timeout."""

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.kwargs = {k: v for k, v in kwargs.items() if k not in ACTOR_ONLY_KWARGS}
        self.num_gpus = float(kwargs.get("num_gpus", 0))
        self.actor = self._start()

    def _start(self) -> Any:
        actor = ModelRewardActor.options(num_gpus=self.num_gpus).remote(self.name, self.kwargs)
        ray.get(actor.__ray_ready__.remote())
        return actor

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list],
                 timeout_s: float) -> list[float | None]:
        if self.actor is None:
            self.actor = self._start()
        ref = self.actor.score.remote(prompts, completions, columns)
        try:
            return ray.get(ref, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            logger.error("reward %r overran %.1f s; restarting its actor", self.name, timeout_s)
            self.close()
            raise TimeoutError(f"reward {self.name!r} timed out after {timeout_s:g} s") from None
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, rewards.RewardOutputError):
                raise exc.cause from None
            raise

    def close(self) -> None:
        if self.actor is not None:
            ray.kill(self.actor)
            self.actor = None


@ray.remote(num_cpus=0)
class _RewardServiceActor:
    def __init__(self, config: RewardsConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        self.scorer = RewardScorer(config, host_factory=ActorHost)

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list] | None) -> RewardResult:
        return self.scorer.score(prompts, completions, columns)

    def close(self) -> None:
        self.scorer.close()


class RewardService:
    """The reward service as the driver sees it: a Ray actor plus blocking/async score calls."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    @classmethod
    def start(cls, config: RewardsConfig, *, name: str | None = None, placement=None) -> RewardService:
        """Validate the config, start the actor and its workers, wait until it is ready.

        `placement` (a group.Placement from rl_pipeline.cluster) sets the actor's CPUs, custom
        resources and node labels (to pin it to nodes); its strategy is unused (one actor)."""
        validate(config)
        config = config.model_copy(update={"functions": [
            s.model_copy(update={"name": _absolute(s.name)}) for s in config.functions]})
        options: dict[str, Any] = {"name": name} if name else {}
        if placement is not None:
            res = placement.resources
            options.update(num_cpus=res.cpus, num_gpus=res.gpus, resources=res.custom or None,
                           label_selector=res.labels or None)
        actor = _RewardServiceActor.options(**options).remote(config)
        ray.get(actor.__ray_ready__.remote())
        return cls(actor)

    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list] | None = None) -> RewardResult:
        return ray.get(self.score_async(prompts, completions, columns))

    def score_async(self, prompts: list[str], completions: list[str],
                    columns: dict[str, list] | None = None) -> ray.ObjectRef:
        return self.actor.score.remote(prompts, completions, columns)

    def shutdown(self) -> None:
        try:
            ray.get(self.actor.close.remote())
        finally:
            ray.kill(self.actor)
