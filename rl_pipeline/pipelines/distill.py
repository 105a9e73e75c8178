"""The distillation driver (R1-style SFT data): an expert answers every problem, with and without
a guiding system prompt; rewards decide which answers are kept; the rest is an SFT dataset.

    problems = check_distill_inputs(recipe)          # both renderings of every problem, ids
    store    = ShardStore.open(output)                # a killed run resumes at its first open shard
    for shard in the shards not done:                 # fixed-size slices of the problems
        samples = engines.generate(prompts of every kind, n)     # the rollout workers of GRPO
        scores  = reward_service.score(samples)
        rows    = curate(samples, scores)             # filters, rejection, keep policy per problem
        store.write_shard(shard, rows, counts)        # temp name -> rename, then the done marker
    store.finish(stats.json, README.md)

Generation of shard k+1 overlaps the scoring and writing of shard k. A redone shard samples
afresh (its earlier rows were never kept), unless `distill.seed_each_request` derives per-request
seeds from the shard index (GPU engines: vLLM-CPU fails on seeded requests in large batches).

With `distill.pairs` the same loop writes reward-model preference data instead: per problem the
best and the worst sample by reward become one (prompt, chosen, rejected) row (`pick_pair`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_pipeline.config import DistillConfig, InputError, Recipe, RolloutConfig
from rl_pipeline.data.distill_output import ShardStore, dataset_card, pair_row, preference_card
from rl_pipeline.data.loading import DataError, load_rows
from rl_pipeline.data.prompts import load_prompts, render_prompt
from rl_pipeline.models.loading import check_model_source, check_reward_model_paths, load_tokenizer
from rl_pipeline.pipelines.curation import REJECT_REASONS, Sample, keep_samples, pick_pair, strip_think

__all__ = ["Sample", "keep_samples", "pick_pair", "strip_think", "run_distill", "check_distill_inputs", "curate"]

log = logging.getLogger(__name__)

# Below this share of samples kept, a finished run says so: 2 rows of 1,600 exit 0 like a success.
LOW_ACCEPTANCE = 0.05


@dataclass
class Problem:
    id: str
    question: str
    columns: dict  # the row's other columns, for reward functions
    heads: dict[str, list[dict]]  # per kind: the messages before the assistant turn
    prompt_ids: dict[str, list[int]]  # per kind: the rendered prompt's token ids


@dataclass
class DistillInputs:
    tokenizer: Any
    problems: list[Problem]
    dropped_too_long: int
    components: list[str]
    rollout: RolloutConfig
    output: Path
    fingerprint: str
    expert_name: str


@dataclass
class DistillResult:
    output: Path
    rows: int
    stats: dict = field(default_factory=dict)

    @property
    def empty_reason(self) -> str | None:
        return self.stats.get("empty_reason")

    @property
    def low_acceptance(self) -> str | None:
        return self.stats.get("low_acceptance")


def check_distill_inputs(recipe: Recipe, output: str | Path | None = None) -> DistillInputs:
    """Everything that can be wrong with the input, found before any actor starts."""
    from rl_pipeline.workers.reward import component_names, validate

    recipe.require("data", "rewards", "distill")
    d, spec = recipe.distill, recipe.data.train
    rollout = recipe.rollout or RolloutConfig()
    check_model_source(d.expert, "distill.expert")
    validate(recipe.rewards)
    check_reward_model_paths(recipe.rewards)
    max_prompt = recipe.data.max_length - rollout.max_tokens
    if max_prompt < 1:
        raise InputError(f"data.max_length ({recipe.data.max_length}) leaves no room for prompts after "
                         f"rollout.max_tokens ({rollout.max_tokens})")
    tokenizer = load_tokenizer(d.expert)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"distill.expert: the tokenizer of '{d.expert}' has no chat template; the dataset is "
                         "chat `messages`, so the expert must be a chat model")
    template = d.pairs.prompt_template if d.pairs is not None else None
    prompts = load_prompts(spec, tokenizer, "data.train", max_prompt, template, need_ground_truth=d.require_ground_truth)
    if d.id_column is not None and d.id_column not in prompts[0].columns:
        columns = [spec.prompt_column, *prompts[0].columns]
        raise DataError(f"data.train: column '{d.id_column}' (distill.id_column) not found in {spec.path}; "
                        f"columns are: {', '.join(columns)}")
    problems, first_row = [], {}
    for p in prompts:
        pid = str(p.row if d.id_column is None else p.columns[d.id_column])
        if pid in first_row:
            raise DataError(f"data.train: problem id '{pid}' (distill.id_column={d.id_column}) appears in rows "
                            f"{first_row[pid]} and {p.row}; ids must be unique")
        first_row[pid] = p.row
        heads = {"original": ([{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else [])
                 + [{"role": "user", "content": p.text}],
                 "expert": [{"role": "system", "content": d.system_prompt}, {"role": "user", "content": p.text}]}
        ids = {"original": p.token_ids}
        if "expert" in d.kinds:
            text = render_prompt(tokenizer, p.text, d.system_prompt, None)
            ids["expert"] = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids["expert"]) > max_prompt:
                continue
        problems.append(Problem(pid, p.text, p.columns, {k: heads[k] for k in d.kinds}, {k: ids[k] for k in d.kinds}))
    too_long = len(prompts) - len(problems)
    if not problems:
        raise DataError("data.train: every prompt with distill.system_prompt is longer than "
                        f"{max_prompt} tokens (data.max_length - rollout.max_tokens); raise data.max_length")
    if too_long:
        log.warning("data.train: %d problems dropped: the prompt with the system prompt is longer than %d tokens",
                    too_long, max_prompt)
    out = Path(output or d.output or Path(recipe.output_dir) / recipe.name)
    name = d.expert_name or expert_name(d.expert)
    dropped = len(load_rows(spec, "data.train")) - len(problems)  # load_prompts logs its own share
    return DistillInputs(tokenizer, problems, dropped, component_names(recipe.rewards), rollout, out,
                         _fingerprint(recipe, rollout, problems), name)


def expert_name(path: str) -> str:
    """A hub name as it is; a local folder by its name, with its parent's for generic names."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return path
    folder = folder.resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.name in ("final_model", "model", "checkpoint") else folder.name


def _fingerprint(recipe: Recipe, rollout: RolloutConfig, problems: list[Problem]) -> str:
    """What decides the rows; a folder made with anything else is not resumed (engine counts may change)."""
    ids = hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest()
    made_by = {
        "distill": recipe.distill.model_dump(mode="json", exclude={"output", "log_samples_problems"}),
        "data.train": recipe.data.train.model_dump(mode="json"),
        "data.max_length": recipe.data.max_length,
        "rollout": rollout.model_dump(mode="json", include={"temperature", "top_p", "max_tokens", "stop"}),
        "rewards": recipe.rewards.model_dump(mode="json", include={"functions"}),
        "problems": {"count": len(problems), "ids_sha256": ids},
    }
    return yaml.safe_dump(made_by, sort_keys=True)


class DistillActors:
    """The rollout engines serving the expert and the reward service."""

    def __init__(self, engines, scorer) -> None:
        self.engines, self.scorer = engines, scorer

    @classmethod
    def start(cls, recipe: Recipe) -> "DistillActors":
        from rl_pipeline.workers.reward import RewardService
        from rl_pipeline.workers.rollout import RolloutGroup

        rollout = recipe.rollout or RolloutConfig()
        engines = RolloutGroup.start(recipe.distill.expert, rollout, recipe.distill.seed,
                                     recipe.cluster.placement_strategy)
        try:
            scorer = RewardService.start(recipe.rewards)
        except BaseException:
            engines.shutdown()
            raise
        return cls(engines, scorer)

    def shutdown(self) -> None:
        for part in (self.engines, self.scorer):
            with contextlib.suppress(Exception):
                part.shutdown()


def run_distill(recipe: Recipe, output: str | Path | None = None, overwrite: bool = False,
                actors: DistillActors | None = None) -> DistillResult:
    """Generate, curate and write the dataset (resuming a folder this recipe started); `actors`
    lets a caller that already serves the expert (tests, benchmarks) reuse its engines."""
    from rl_pipeline.cluster import connect

    inputs = check_distill_inputs(recipe, output)
    d = recipe.distill
    store = ShardStore.open(inputs.output, d.format, inputs.components, inputs.fingerprint, overwrite,
                            pairs=d.pairs is not None)
    removed = store.clean_unfinished()
    if removed:
        log.info("distill: removed %d files of unfinished shards: %s", len(removed), ", ".join(removed[:5]))
    shards = [inputs.problems[i:i + d.shard_size] for i in range(0, len(inputs.problems), d.shard_size)]
    done = store.done()
    todo = [k for k in range(len(shards)) if k not in done]
    log.info("distill: %d problems in %d shards (%d done already), %d kind(s) x %d samples, output %s",
             len(inputs.problems), len(shards), len(shards) - len(todo), len(d.kinds), d.samples_per_prompt,
             inputs.output)
    start = time.perf_counter()
    generated_now, loop_s, timing = 0, 0.0, {}
    if todo:
        with connect(recipe.cluster) if actors is None else contextlib.nullcontext():
            own = actors is None
            actors = actors or DistillActors.start(recipe)
            try:
                loop_start = time.perf_counter()
                generated_now, timing = _loop(recipe, inputs, actors, store, shards, todo, len(shards) - len(todo))
                loop_s = time.perf_counter() - loop_start
            finally:
                if own:
                    actors.shutdown()
    stats = summarize(store.done(), recipe, inputs, len(shards))
    seconds = time.perf_counter() - start
    stats["run"] = {"seconds": seconds, "loop_seconds": loop_s, "shards_generated": len(todo),
                    "shards_resumed": len(shards) - len(todo), "samples_generated": generated_now,
                    "samples_per_s": generated_now / loop_s if loop_s else None, **timing}  # after start-up
    stats["files"] = [str(p.relative_to(store.root)) for p in store.data_files()]
    store.finish(stats, dataset_card(stats, d.format) if d.pairs is None else preference_card(stats))
    if stats["empty_reason"]:
        log.warning("distill: the dataset is empty: %s", stats["empty_reason"])
    elif stats["low_acceptance"]:
        log.warning("distill: %s", stats["low_acceptance"])
    return DistillResult(inputs.output, stats["rows"], stats)


def _loop(recipe: Recipe, inputs: DistillInputs, actors: DistillActors, store: ShardStore,
          shards: list[list[Problem]], todo: list[int], already: int) -> tuple[int, dict[str, float]]:
    """Generate shard by shard (the next one while this one is scored and written); returns the
    samples made and where the driver's time went (waiting for engines vs scoring and writing)."""
    from rl_pipeline.progress import StepProgress

    d = recipe.distill
    n, per_shard = d.samples_per_prompt, len(d.kinds) * d.shard_size * d.samples_per_prompt

    def generate(k: int):
        ids = [p.prompt_ids[kind] for kind in d.kinds for p in shards[k]]
        seed = d.seed * 1_000_003 + k * per_shard if d.seed_each_request else None
        return actors.engines.generate(ids, n=n, seed=seed)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-generate")
    made = accepted = 0
    timing = {"wait_for_generation_s": 0.0, "score_and_write_s": 0.0}
    t0 = time.perf_counter()
    try:
        with StepProgress("distill", already + len(todo), already) as progress:
            future = pool.submit(generate, todo[0])
            for i, k in enumerate(todo):
                t = time.perf_counter()
                completions = future.result()
                timing["wait_for_generation_s"] += time.perf_counter() - t
                if i + 1 < len(todo):
                    future = pool.submit(generate, todo[i + 1])
                t = time.perf_counter()
                rows, counts, shown = curate(shards[k], completions, actors.scorer, inputs, d)
                store.write_shard(k, rows, counts, shown)
                timing["score_and_write_s"] += time.perf_counter() - t
                made += sum(c["generated"] for c in counts["kinds"].values())
                accepted += len(rows)
                progress.advance(accept=accepted / max(made, 1), samples_per_s=made / (time.perf_counter() - t0))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return made, timing


def curate(problems: list[Problem], completions, scorer, inputs: DistillInputs,
           d: DistillConfig) -> tuple[list[dict], dict, list[dict]]:
    """Score one shard's completions (kind-major, then problem, then sample) and keep by policy;
    returns the rows to write, the shard's counts (summed into stats.json) and its sample-log rows
    (every answer to the first `distill.log_samples_problems` problems per kind, with its verdict)."""
    n = d.samples_per_prompt
    flat = [c for group in completions for c in group]
    kinds = [kind for kind in d.kinds for _ in range(len(problems) * n)]
    owners = [p for _ in d.kinds for p in problems for _ in range(n)]
    scored = scorer.score([p.question for p in owners], [c.text for c in flat],
                          {key: [p.columns.get(key) for p in owners] for key in problems[0].columns})
    contents = [strip_think(c.text) if kind == "original" and d.strip_think_in_original else c.text
                for c, kind in zip(flat, kinds)]
    lengths = [len(ids) for ids in inputs.tokenizer(contents, add_special_tokens=False)["input_ids"]] if contents else []
    rows, counts = [], {"problems": len(problems), "kinds": {kind: _empty_counts(inputs.components) for kind in d.kinds}}
    shown = []
    for block in range(len(flat) // n):
        span = range(block * n, (block + 1) * n)
        kind, problem = kinds[span[0]], owners[span[0]]
        samples = [Sample(j - span[0], contents[j], lengths[j], flat[j].truncated, scored.total[j]) for j in span]
        kept, reasons = keep_samples(samples, d) if d.pairs is None else pick_pair(samples, d)
        if block % len(problems) < d.log_samples_problems:
            shown.append(_sample_row(kind, problem, samples, [flat[j] for j in span],
                                     {name: [values[j] for j in span] for name, values in scored.components.items()}))
        counted = kept if d.pairs is None else kept[:1]  # a pair counts once, as its chosen answer
        _count(counts["kinds"][kind], [flat[j] for j in span], [scored.total[j] for j in span],
               {name: [values[j] for j in span] for name, values in scored.components.items()}, counted, reasons)
        if d.pairs is not None:
            rows.extend([pair_row(problem.id, problem.question, *kept, inputs.expert_name)] if kept else [])
            continue
        for s in kept:
            j = span[0] + s.index
            rows.append({
                "messages": [*problem.heads[kind], {"role": "assistant", "content": s.content}],
                "problem_id": problem.id, "kind": kind, "sample": s.index, "reward": s.reward,
                "rewards": {name: values[j] for name, values in scored.components.items()},
                "response_tokens": s.tokens, "expert": inputs.expert_name,
            })
    return rows, counts, shown


def _sample_row(kind: str, problem: Problem, samples: list[Sample], completions, components: dict) -> dict:
    """One problem's answers of one kind as a samples.jsonl row (pipelines/samples.py's shape)."""
    return {"kind": "distill", "group": kind, "prompt": problem.question, "problem_id": problem.id, "completions": [
        {"text": s.content, "reward": s.reward, "components": {name: values[s.index] for name, values in components.items()},
         "length": s.tokens, "finish_reason": c.finish_reason, "verdict": s.verdict}
        for s, c in zip(samples, completions)]}


def _empty_counts(components: list[str]) -> dict:
    return {"generated": 0, "accepted": 0, "problems_with_accepted": 0, "rejected": dict.fromkeys(REJECT_REASONS, 0),
            "generated_tokens_sum": 0, "accepted_tokens_sum": 0, "reward_sum": 0.0, "reward_sum_accepted": 0.0,
            "reward_max": None, "component_sum": dict.fromkeys(components, 0.0), "component_n": dict.fromkeys(components, 0)}


def _count(c: dict, completions, totals: list[float], components: dict[str, list], kept: list[Sample],
           reasons: Counter) -> None:
    c["generated"] += len(completions)
    c["accepted"] += len(kept)
    c["problems_with_accepted"] += bool(kept)
    for reason, value in reasons.items():
        c["rejected"][reason] += value
    c["generated_tokens_sum"] += sum(len(x.token_ids) for x in completions)
    c["accepted_tokens_sum"] += sum(s.tokens for s in kept)
    finite = [t for t in totals if math.isfinite(t)]
    c["reward_sum"] += sum(finite)
    c["reward_sum_accepted"] += sum(s.reward for s in kept)
    if finite:
        c["reward_max"] = max(finite + ([c["reward_max"]] if c["reward_max"] is not None else []))
    for name, values in components.items():
        present = [v for v in values if v is not None]
        c["component_sum"][name] += sum(present)
        c["component_n"][name] += len(present)


def summarize(done: dict[int, dict], recipe: Recipe, inputs: DistillInputs, total_shards: int) -> dict:
    """stats.json: sums over the finished shards, means and rates per kind, and why it is empty."""
    d, rollout = recipe.distill, inputs.rollout
    kinds = {}
    for kind in d.kinds:
        c = _empty_counts(inputs.components)
        for shard in done.values():
            s = shard["kinds"][kind]
            for key in ("generated", "accepted", "problems_with_accepted", "generated_tokens_sum",
                        "accepted_tokens_sum", "reward_sum", "reward_sum_accepted"):
                c[key] += s[key]
            for reason in REJECT_REASONS:
                c["rejected"][reason] += s["rejected"][reason]
            for name in inputs.components:
                c["component_sum"][name] += s["component_sum"][name]
                c["component_n"][name] += s["component_n"][name]
            if s["reward_max"] is not None:
                c["reward_max"] = s["reward_max"] if c["reward_max"] is None else max(c["reward_max"], s["reward_max"])
        kinds[kind] = {
            "generated": c["generated"], "accepted": c["accepted"],
            "acceptance_rate": c["accepted"] / c["generated"] if c["generated"] else 0.0,
            "problems_with_accepted": c["problems_with_accepted"], "rejected": c["rejected"],
            "response_tokens_mean_generated": _mean(c["generated_tokens_sum"], c["generated"]),
            "response_tokens_mean_accepted": _mean(c["accepted_tokens_sum"], c["accepted"]),
            "reward_mean_generated": _mean(c["reward_sum"], c["generated"]),
            "reward_mean_accepted": _mean(c["reward_sum_accepted"], c["accepted"]),
            "reward_max": c["reward_max"],
            "component_mean_generated": {k: _mean(c["component_sum"][k], c["component_n"][k]) for k in inputs.components},
        }
    generated = sum(k["generated"] for k in kinds.values())
    rows = sum(k["accepted"] for k in kinds.values())
    stats = {
        "expert": inputs.expert_name, "expert_path": d.expert, "source": recipe.data.train.path,
        "complete": len(done) == total_shards, "shards": total_shards, "shards_done": len(done),
        "problems": len(inputs.problems), "problems_done": sum(s["problems"] for s in done.values()),
        "problems_dropped_too_long": inputs.dropped_too_long,
        "rows": rows, "samples_generated": generated, "samples_accepted": rows,
        "acceptance_rate": rows / generated if generated else 0.0,
        "kinds": kinds, "reward_components": inputs.components,
        "sampling": {"n": d.samples_per_prompt, "temperature": rollout.temperature, "top_p": rollout.top_p,
                     "max_tokens": rollout.max_tokens},
        "config": d.model_dump(mode="json"),
    }
    stats["empty_reason"] = _empty_reason(kinds, d) if rows == 0 else None
    low = 0 < rows < LOW_ACCEPTANCE * generated
    stats["low_acceptance"] = _low_acceptance(kinds, d, rows) if low else None
    return stats


def _mean(total: float, count: int) -> float | None:
    return total / count if count else None


def _empty_reason(kinds: dict, d: DistillConfig) -> str:
    generated = sum(k["generated"] for k in kinds.values())
    if generated == 0:
        return "no sample was generated"
    return f"no sample was kept: of {generated} generated, " + _rejections(kinds, d)


def _low_acceptance(kinds: dict, d: DistillConfig, rows: int) -> str:
    generated = sum(k["generated"] for k in kinds.values())
    return (f"low acceptance: kept only {rows} of {generated} samples ({rows / generated:.1%}, below "
            f"{LOW_ACCEPTANCE:.0%}); rejected: {_rejections(kinds, d)}; an SFT on so few rows teaches little: "
            "check that the expert (distill.expert) solves this task and that the rewards accept its answers")


def _rejections(kinds: dict, d: DistillConfig) -> str:
    """'1598 below threshold (distill.threshold=1.0; the highest total reward was 0.1), 3 truncated'."""
    rejected = Counter()
    for k in kinds.values():
        rejected.update(k["rejected"])
    best = max((k["reward_max"] for k in kinds.values() if k["reward_max"] is not None), default=None)
    text = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in rejected.items() if count)
    if rejected["below_threshold"]:
        text += f" (distill.threshold={d.threshold}; the highest total reward was {best})"
    return text
