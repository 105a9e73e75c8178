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
once, at the same time as the pool works; under :class:`RewardService` each lives in its own Ray
actor (``num_gpus`` in its kwargs sizes it), under :class:`RewardScorer` in-process.

One deadline per batch. Scoring a batch, all functions together, ends ``batch_timeout_s`` after
it starts, however many samples and however slow a function: samples still running are killed,
samples not started are not run, a stateful reward still busy is given up (an actor is killed and
restarted on the next call; an in-process one is abandoned on its thread, which cannot be
stopped, and rebuilt). All of those count as timeouts.

Failures. A sample whose function raised or timed out scores ``failure_score`` in its component,
is counted in ``reward/errors`` or ``reward/timeouts``, and the first traceback per function is
logged (in the service actor's log); scoring goes on. ``RewardResult.failures`` carries each
failing function's first message of the batch to the driver, where :class:`RewardService` puts
one line per function on the console (:class:`FailureLog`, rate-limited). A function that breaks
the API (a score list of the wrong length, ``None`` or a string instead of a list, a non-numeric
score) raises :class:`RewardFunctionError`, one line naming it, the batch row and what it
returned: that is a bug to fix, not a bad sample, and the first batch (before any training step)
shows it.

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
from rl_pipeline.remote import call

logger = logging.getLogger(__name__)

ACTOR_ONLY_KWARGS = ("num_gpus",)  # stateful-reward kwargs that size the hosting actor


REPORT_EVERY_S = 60.0  # the console repeats a failing function's line at most this often


class RewardFunctionError(InputError):
    """A reward function broke the API (wrong count, non-numeric score): a bug to fix, reported
    in one line like any bad input."""


@dataclass
class RewardResult:
    """Scores of one batch: weighted ``total`` per sample, each component, and metrics."""

    total: list[float]
    components: dict[str, list[float | None]]
    metrics: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # component -> first failure message (one line)


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

    def submit(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> Any:
        return self.executor.submit(self.fn, prompts, completions, **columns)

    def collect(self, future: Any, timeout_s: float) -> list[float | None]:
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            logger.error("reward %r overran the batch deadline; abandoning its thread and rebuilding it", self.name)
            self.executor.shutdown(wait=False)
            self._build()
            raise TimeoutError("not finished by the batch deadline (rewards.batch_timeout_s)") from None

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
        self._slow: set[int] = set()  # functions with timeouts in the last batch

    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list] | None = None) -> RewardResult:
        columns = dict(columns or {})
        _check_lengths(prompts, completions, columns)
        start = time.monotonic()
        deadline = start + self.config.batch_timeout_s  # one deadline for every function of the batch
        pending = {i: _submit(host, prompts, completions, columns) for i, host in self.hosts.items()}
        outcomes = self._run_functions(prompts, completions, columns, deadline)
        for i, host in self.hosts.items():
            outcomes[i] = self._collect_stateful(i, host, pending[i], len(completions), deadline)
        failures: dict[str, str] = {}
        components = {name: self._scores(i, name, outs, prompts, completions, failures)
                      for i, (name, outs) in enumerate(zip(self.names, outcomes))}
        weights = {name: spec.weight for name, spec in zip(self.names, self.specs)}
        total = [sum(weights[n] * (components[n][j] or 0.0) for n in self.names) for j in range(len(completions))]
        metrics = _metrics(components, outcomes, self.names, total)
        metrics["reward/time_s"] = time.monotonic() - start
        return RewardResult(total=total, components=components, metrics=metrics, failures=failures)

    def _run_functions(self, prompts: list[str], completions: list[str],
                       columns: dict[str, list], deadline: float) -> list[list[Outcome]]:
        outcomes: list[list[Outcome]] = [[] for _ in self.specs]
        pool_index = [i for i, st in enumerate(self.stateful) if not st]
        if not pool_index or not completions:
            return outcomes
        # The pool takes tasks in order: functions that timed out last batch go last, so that a
        # slow function does not keep the fast ones from being scored before the deadline.
        order = sorted(range(len(pool_index)), key=lambda k: pool_index[k] in self._slow)
        tasks = [
            Task(k, prompts[j], completions[j], {key: values[j] for key, values in columns.items()})
            for k in order for j in range(len(completions))
        ]
        flat = self.pool.run(tasks, self.config.timeout_s, deadline)
        n = len(completions)
        for position, k in enumerate(order):
            outcomes[pool_index[k]] = flat[position * n:(position + 1) * n]
        self._slow = {i for i in pool_index if any(o.status == "timeout" and o.started for o in outcomes[i])}
        return outcomes

    def _collect_stateful(self, i: int, host: Any, handle: Any, n: int, deadline: float) -> list[Outcome]:
        try:
            if isinstance(handle, BaseException):  # the submit itself failed (e.g. the actor's restart)
                raise handle
            scores = host.collect(handle, max(0.0, deadline - time.monotonic()))
        except rewards.RewardOutputError as exc:
            raise RewardFunctionError(f"rewards.functions[{i}]: {exc}") from None
        except TimeoutError as exc:
            return [Outcome("timeout", error=str(exc))] * n
        except Exception as exc:  # noqa: BLE001 - any failure of a reward is a failed batch
            return [Outcome("error", error=_describe(exc))] * n
        return [Outcome("ok", score=s) for s in scores]

    def _scores(self, i: int, name: str, outcomes: list[Outcome], prompts: list[str], completions: list[str],
                failures: dict[str, str]) -> list[float | None]:
        scores: list[float | None] = []
        for row, outcome in enumerate(outcomes):
            if outcome.status == "invalid":
                raise RewardFunctionError(
                    f"rewards.functions[{i}]: {outcome.error} (batch row {row}: prompt {_clip(prompts[row])}, "
                    f"completion {_clip(completions[row])}; the pool calls it with one sample at a time)")
            if outcome.status == "ok":
                scores.append(outcome.score)
                continue
            failures.setdefault(name, first_message(outcome.error))
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


def _submit(host: Any, prompts: list[str], completions: list[str], columns: dict[str, list]) -> Any:
    """Start a stateful reward on the batch; a failure to start is returned, to count as its errors."""
    try:
        return host.submit(prompts, completions, columns)
    except Exception as exc:  # noqa: BLE001
        return exc


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def first_message(error: str | None) -> str:
    """The line of a failure worth a console line: a traceback's last line (``ValueError: ...``)."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "(no message)"
    return line if len(line) <= 200 else line[:200] + "..."


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


class ModelRewardActor:
    """Hosts one stateful reward (a reward model, a judge) and scores whole batches."""

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.fn = rewards.get(name, **kwargs)
        self.fn.build()

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[float | None]:
        return self.fn(prompts, completions, **columns)


# The Ray actor classes, made once; calls name the plain classes' methods (rl_pipeline/remote.py).
_MODEL_REWARD_ACTOR = ray.remote(num_cpus=0)(ModelRewardActor)


class ActorHost:
    """Driver-side handle of a :class:`ModelRewardActor`; kills and rebuilds it on a timeout."""

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.kwargs = {k: v for k, v in kwargs.items() if k not in ACTOR_ONLY_KWARGS}
        self.num_gpus = float(kwargs.get("num_gpus", 0))
        self.actor = self._start()

    def _start(self) -> Any:
        actor = _MODEL_REWARD_ACTOR.options(num_gpus=self.num_gpus).remote(self.name, self.kwargs)
        ray.get(actor.__ray_ready__.remote())
        return actor

    def submit(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> ray.ObjectRef:
        if self.actor is None:
            self.actor = self._start()
        return call(self.actor, ModelRewardActor.score, prompts, completions, columns)

    def collect(self, ref: ray.ObjectRef, timeout_s: float) -> list[float | None]:
        try:
            return ray.get(ref, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            logger.error("reward %r overran the batch deadline; restarting its actor", self.name)
            self.close()
            raise TimeoutError("not finished by the batch deadline (rewards.batch_timeout_s)") from None
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, rewards.RewardOutputError):
                raise exc.cause from None
            raise

    def close(self) -> None:
        if self.actor is not None:
            ray.kill(self.actor)
            self.actor = None


class _RewardServiceActor:
    def __init__(self, config: RewardsConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        self.scorer = RewardScorer(config, host_factory=ActorHost)

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list] | None) -> RewardResult:
        return self.scorer.score(prompts, completions, columns)

    def close(self) -> None:
        self.scorer.close()


_REWARD_SERVICE_ACTOR = ray.remote(num_cpus=0)(_RewardServiceActor)


class FailureLog:
    """The console's view of failing reward functions (driver side): one line per function with
    its name, how many samples raised or timed out, and the first message; a function that keeps
    failing is repeated at most every ``every_s`` seconds, with the counts since its last line."""

    def __init__(self, config: RewardsConfig, every_s: float = REPORT_EVERY_S) -> None:
        self.config, self.every_s = config, every_s
        self.counts: dict[str, list[int]] = {}  # name -> [raised, timed out, samples, batches] not yet shown
        self.shown_at: dict[str, float] = {}

    def report(self, result: RewardResult) -> None:
        for name, first in result.failures.items():
            raised = int(result.metrics.get(f"reward/{name}/errors", 0))
            timed_out = int(result.metrics.get(f"reward/{name}/timeouts", 0))
            counts = self.counts.setdefault(name, [0, 0, 0, 0])
            for k, value in enumerate((raised, timed_out, len(result.total), 1)):
                counts[k] += value
            now = time.monotonic()
            if now - self.shown_at.get(name, -self.every_s) >= self.every_s:
                self.shown_at[name] = now
                logger.warning(self.line(name, self.counts.pop(name), first))

    def line(self, name: str, counts: list[int], first: str) -> str:
        raised, timed_out, samples, batches = counts
        what = ", ".join(part for part in (f"{raised} raised" if raised else "",
                                           f"{timed_out} timed out" if timed_out else "") if part)
        where = f"in {batches} batches" if batches > 1 else "in this batch"
        limits = (f"; limits: rewards.timeout_s {self.config.timeout_s:g} s a sample, rewards.batch_timeout_s "
                  f"{self.config.batch_timeout_s:g} s a batch" if timed_out else "")
        return (f"reward {name!r}: {what} of {samples} samples {where}, scored {self.config.failure_score:g}; "
                f"first: {first}{limits}")


class RewardService:
    """The reward service as the driver sees it: a Ray actor plus blocking/async score calls.
    :meth:`score` reports failing functions on the console and raises a function's API breach
    as the one-line :class:`RewardFunctionError`, not as the actor's traceback."""

    def __init__(self, actor: Any, config: RewardsConfig) -> None:
        self.actor = actor
        self.failure_log = FailureLog(config)

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
        actor = _REWARD_SERVICE_ACTOR.options(**options).remote(config)
        ray.get(actor.__ray_ready__.remote())
        return cls(actor, config)

    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list] | None = None) -> RewardResult:
        try:
            result = ray.get(self.score_async(prompts, completions, columns))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, RewardFunctionError):
                raise exc.cause from None  # its one line, not the actor's traceback around it
            raise
        self.failure_log.report(result)
        return result

    def score_async(self, prompts: list[str], completions: list[str],
                    columns: dict[str, list] | None = None) -> ray.ObjectRef:
        return call(self.actor, _RewardServiceActor.score, prompts, completions, columns)

    def shutdown(self, wait_s: float = 10.0) -> None:
        """Close the pool and the reward actors, then kill the service actor. A service still
        scoring (a Ctrl-C mid-batch) runs its calls in order, so `close` would wait for the batch:
        after `wait_s` (0 on an interrupt) the kill alone ends it; its pool workers die with it."""
        try:
            ray.get(call(self.actor, _RewardServiceActor.close), timeout=wait_s)
        except ray.exceptions.GetTimeoutError:
            pass
        finally:
            ray.kill(self.actor)
