"""The GRPO driver: generate G completions per prompt on vLLM engines, score them, build group
advantages, (add reference logprobs,) train the DeepSpeed policy, push the new weights.

The step reads like the algorithm (see `_step`); everything heavy runs in Ray actor groups.
With a `teacher:` section the run is on-policy distillation: a frozen teacher scores the sampled
tokens and its per-token reverse-KL advantage replaces (or is mixed with) the reward advantage.
All input (model, data columns, prompt lengths, reward names) is checked before any actor starts.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev

import torch

from rl_pipeline.algorithms.grpo import flat_groups
from rl_pipeline.batch import GRPOBatch, build_batch, merge_batches
from rl_pipeline.checkpoint import RunDir
from rl_pipeline.config import InputError, Recipe
from rl_pipeline.data.micro_batches import padded_tokens
from rl_pipeline.data.prompts import Prompt, PromptStream, columns_for
from rl_pipeline.pipelines.evaluate import evaluate
from rl_pipeline.pipelines.grpo_inputs import GRPOInputs, check_grpo_inputs
from rl_pipeline.pipelines.samples import (as_markdown, attach_trainer_logprobs, group_rows, mark_shown, shown_fields,
                                           table_rows)
from rl_pipeline.pipelines.step_timing import PhaseTimer, RolloutAhead
from rl_pipeline.policy import Policy, check_hybrid_engine
from rl_pipeline.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class GRPOResult:
    run_dir: Path
    final_model: Path
    steps: int
    final_eval: dict[str, float] = field(default_factory=dict)


def check_sampling(recipe: Recipe) -> None:
    """The trainer and the reference score softmax(logits / T), the distribution the engines sample
    from; refuse sampling settings they cannot reproduce."""
    r = recipe.rollout
    if r.temperature <= 0:
        raise InputError(f"rollout.temperature: GRPO needs sampling (> 0), got {r.temperature}: greedy decoding "
                         "gives every completion of a group the same tokens")
    if r.top_p < 1:
        raise InputError(f"rollout.top_p: {r.top_p} < 1 is not supported by GRPO: the trainer scores the full "
                         "softmax(logits / temperature), not the top-p truncated distribution; set rollout.top_p: 1.0")
    if r.logprobs == "raw" and r.temperature != 1:
        raise InputError(f"rollout.logprobs: raw reports untempered logprobs, but at rollout.temperature "
                         f"{r.temperature} the trainer scores softmax(logits / T); use processed")


@dataclass
class _Actors:
    """Every role of a GRPO run; `policy` owns the trainer ranks and the engines (rl_pipeline/policy)."""

    policy: Policy | None = None
    scorer: object | None = None  # workers/reward.RewardService; None: pure on-policy distillation
    reference: object | None = None  # workers/reference.ReferenceGroup, when the KL term is on
    teacher: object | None = None  # on-policy distillation: a ReferenceGroup holding the teacher
    sampler: object | None = None  # multi-turn rollouts over the engines when the recipe has tools

    @property
    def engines(self):
        return self.policy.engines

    def shutdown(self) -> None:
        from rl_pipeline import interrupt

        if self.scorer is not None:  # after a Ctrl-C, no polite close that waits for the batch it scores
            with contextlib.suppress(Exception):
                self.scorer.shutdown(wait_s=0.0 if interrupt.requested() else 10.0)
        for part in (self.sampler, self.reference, self.teacher, self.policy):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.shutdown()


def start_actors(recipe: Recipe, total_steps: int, run_dir: Path | None = None) -> _Actors:
    """Start every role where `cluster` says (checked against the cluster first); log each role's
    nodes and write them to `run_dir/placement.json`."""
    from rl_pipeline.cluster import plan_grpo, record_placement
    from rl_pipeline.memory_plan import plan_memory
    from rl_pipeline.workers.reference import ReferenceGroup
    from rl_pipeline.workers.reward import RewardService
    from rl_pipeline.workers.trainer import TrainerWorker

    hybrid = plan_memory(recipe, run_dir)  # refuses a plan whose roles cannot fit on the GPUs
    plan = plan_grpo(recipe)  # fails here, naming what the cluster lacks, before any actor starts
    actors = _Actors()
    try:
        actors.policy = Policy.start(recipe, plan, total_steps, hybrid)
        if recipe.rewards is not None:
            actors.scorer = RewardService.start(recipe.rewards, placement=plan.reward)
        if plan.reference is not None:
            actors.reference = ReferenceGroup.start(recipe.model, recipe.grpo.reference_replicas,
                                                    device=recipe.trainer.device, placement=plan.reference)
        elif recipe.trainer.lora is not None and recipe.grpo.kl_coef > 0:
            # The reference is the base with the adapters off, on the trainer ranks (no actor of its own).
            actors.reference = ReferenceGroup(actors.policy.trainer.group, TrainerWorker.base_logprobs,
                                              owns_actors=False)
        if plan.teacher is not None:
            actors.teacher = ReferenceGroup.start(recipe.teacher.model, recipe.teacher.replicas,
                                                  device=recipe.trainer.device, placement=plan.teacher, role="teacher")
        record_placement(run_dir, {"trainer": actors.policy.trainer.group, "rollout": actors.engines.group,
                                   "reward": actors.scorer.actor if actors.scorer else None,
                                   "reference": actors.reference.group if actors.reference else None,
                                   "teacher": actors.teacher.group if actors.teacher else None})
    except BaseException:
        actors.shutdown()
        raise
    return actors


def train_grpo(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False) -> GRPOResult:
    """Run (or resume) GRPO as the recipe says; returns where the final model is."""
    from rl_pipeline.cluster import connect

    inputs = check_grpo_inputs(recipe)
    check_sampling(recipe)  # training only: `rlp eval` may sample with top-p or greedily
    check_hybrid_engine(recipe)
    run = RunDir.open(recipe, run_dir, resume)
    resumed = run.latest() if resume else None
    start = resumed.step if resumed else 0
    stream = PromptStream(inputs.train, recipe.grpo.seed, resumed.state["data_position"] if resumed else 0)
    tracker = Tracker(run.path, recipe.tracking, resume_after_step=start if resume else None)
    log.info("GRPO: %d prompts x %d samples per step, %d steps, run dir %s", recipe.grpo.prompts_per_step,
             recipe.grpo.group_size, recipe.grpo.steps, run.path)
    with connect(recipe.cluster):
        actors = start_actors(recipe, recipe.grpo.steps, run.path)
        try:
            if recipe.tools is not None:
                from rl_pipeline.workers.multiturn import MultiTurnRollout

                actors.sampler = MultiTurnRollout(actors.engines, inputs.tokenizer, recipe.tools)
            if resumed:
                actors.policy.load_state(str(resumed.checkpoint), version=start)
                log.info("resumed from %s at step %d", resumed.checkpoint, start)
            if resumed or actors.policy.shares_gpus:  # the engines hold other weights (or none, asleep)
                actors.policy.push()
            if not resumed and recipe.grpo.eval_every and inputs.eval:
                tracker.log(0, _evaluate(recipe, inputs, actors, 0, tracker))  # the starting policy
            final_eval = _loop(recipe, inputs, actors, stream, run, tracker, start)
            if inputs.eval and not final_eval:  # the last step did not evaluate
                final_eval = _evaluate(recipe, inputs, actors, recipe.grpo.steps, tracker)
            actors.policy.save_hf(run.final_model)
        finally:
            tracker.close()
            actors.shutdown()
            run.remove_unfinished_saves()  # a save interrupted mid-write; its ranks are stopped now
    return GRPOResult(run.path, run.final_model, recipe.grpo.steps, final_eval)


def _loop(recipe: Recipe, inputs: GRPOInputs, actors: _Actors, stream: PromptStream, run: RunDir,
          tracker: Tracker, start: int) -> dict:
    """Steps `start`..grpo.steps-1; returns the last step's evaluation metrics ({} if it had none)."""
    from rl_pipeline.progress import StepProgress

    g = recipe.grpo
    ahead, last_eval = None, {}
    if g.overlap_generation:
        def collect(step: int):
            timer = PhaseTimer()
            return (*_collect_batch(recipe, inputs, actors, stream, step, timer), timer)

        ahead = RolloutAhead(collect)
    try:
        with StepProgress("grpo", g.steps, start) as progress:
            for step in range(start, g.steps):
                metrics, batch, timer = _step(recipe, inputs, actors, stream, step, ahead)
                done = step + 1
                if g.eval_every and inputs.eval and (done % g.eval_every == 0 or done == g.steps):
                    last_eval = _evaluate(recipe, inputs, actors, done, tracker)
                    metrics.update(last_eval)
                tracker.log(done, metrics)
                tracker.log_spans(done, [("step", timer.wall_start, metrics["time/step"]), *timer.spans])
                if g.log_samples_every and done % g.log_samples_every == 0:
                    rows = group_rows(batch, g.log_samples_groups, inputs.tokenizer)
                    tracker.log_samples(done, rows, as_markdown(rows), table_rows(done, rows))
                if g.save_every and done % g.save_every == 0 and done < g.steps:
                    position = ahead.position_to_save(stream.position) if ahead else stream.position
                    run.save(done, actors.policy.save_state, {"stage": "grpo", "data_position": position})
                progress.advance(**_progress_info(metrics))
    finally:
        if ahead is not None:
            from rl_pipeline import interrupt

            # After a Ctrl-C the batch being collected ahead is not waited for (its thread is
            # blocked in engine and reward calls that the shutdown ends).
            ahead.close(wait=not interrupt.requested())
    return last_eval  # the last step always evaluates when eval_every is set


def _step(recipe: Recipe, inputs: GRPOInputs, actors: _Actors, stream: PromptStream, step: int,
          ahead: RolloutAhead | None = None) -> tuple[dict, GRPOBatch, PhaseTimer]:
    """One GRPO step: rollouts -> rewards -> batch -> (reference) -> train -> weight sync.
    Returns the step's metrics, the batch it trained on and its phase timer (the timeline's spans).

    With `ahead` (grpo.overlap_generation) the rollouts were collected during the last step and
    the next step's are collected while this one trains."""
    g, timer = recipe.grpo, PhaseTimer()
    if ahead is not None and ahead.ready is not None:
        batch, metrics, collected = ahead.take()
        timer.add_overlapped(collected)
    else:
        batch, metrics = _collect_batch(recipe, inputs, actors, stream, step, timer)
    batch = batch.trimmed_to_multiple(recipe.trainer.num_ranks)
    metrics.update(_batch_stats(batch))
    if len(batch.samples) == 0:
        log.warning("step %d: every group had equal rewards; nothing to train on", step + 1)
        metrics["train/skipped"] = 1.0
        return {**metrics, **timer.metrics()}, batch, timer
    if ahead is not None and step + 1 < g.steps:
        ahead.start(step + 1, stream.position)
    actors.policy.hand_to_trainer(timer, metrics)
    if actors.reference is not None:
        with timer("reference"):
            actors.reference.add_logprobs(batch.samples, recipe.rollout.temperature)
    if actors.teacher is not None:  # on-policy distillation: the teacher's per-token advantages
        with timer("teacher"):
            metrics.update(_teacher_advantages(actors.teacher, batch, inputs.algorithm, recipe.rollout.temperature))
    if g.log_samples_every and (step + 1) % g.log_samples_every == 0:
        mark_shown(batch, g.log_samples_groups)  # the trainer returns their logprobs (the gap per token)
    with timer("train"):
        mini_batches = batch.mini_batches(recipe.trainer.num_ranks, g.mini_batches, recipe.trainer.micro_batch_size,
                                          recipe.trainer.max_tokens_per_micro_batch)
        metrics["train/padding_share"] = _padding_share(mini_batches)
        metrics.update(staleness(batch, actors.policy.version))
        train_metrics, trainer_logprobs = actors.policy.train(mini_batches, inputs.algorithm_spec, step,
                                                              g.inner_epochs, recipe.rollout.temperature)
        metrics.update(train_metrics)
        attach_trainer_logprobs(batch, trainer_logprobs)
    if ahead is not None:
        with timer("rollout_wait"):
            ahead.wait()
    metrics.update(actors.policy.push(timer, metrics))  # the weight push, timed as time/sync
    metrics["train/skipped"] = 0.0
    timings = timer.metrics()
    trained_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in batch.samples)
    metrics["throughput/tokens_per_s"] = trained_tokens / timings["time/step"]
    return {**metrics, **timings}, batch, timer


def _collect_batch(recipe: Recipe, inputs: GRPOInputs, actors: _Actors, stream: PromptStream, step: int,
                   timer: PhaseTimer) -> tuple[GRPOBatch, dict]:
    """Generate and score until enough non-flat groups are kept (dynamic sampling) or the
    refill cap is reached; metrics describe the first round's rollouts."""
    g, batches, metrics, drawn = recipe.grpo, [], {}, []
    # A teacher teaches on every group, even one whose rewards are all equal: keep them all.
    drop_flat = g.drop_flat_groups and not inputs.algorithm.keeps_flat_groups
    for round_ in range(g.max_refill_rounds + 1):
        prompts = stream.next(g.prompts_per_step)
        with timer("generate"):
            actors.engines.take_spans()  # drop an evaluation's
            completions = _generate(actors, prompts, g.group_size, seed=g.seed * 1_000_003 + step * 101 + round_)
        if len(actors.engines) > 1:  # each engine's share on its own track of the timeline
            for engine, at, seconds in actors.engines.take_spans():
                timer.add_span("generate", at, seconds, track=f"rollout engine {engine}")
        with timer("reward"):
            flat = [c for group in completions for c in group]
            columns = reward_columns(prompts, completions)
            if actors.sampler is not None:  # rewards may read the whole trajectory (README: Tools)
                columns["trajectory"] = [c.for_reward() for c in flat]
            scored = _unscored(len(flat)) if actors.scorer is None else actors.scorer.score(
                [p.text for p in prompts for _ in range(g.group_size)], [c.text for c in flat], columns)
        # The algorithm's advantages (GRPO's: each completion's reward against its group's mean,
        # divided by the group's std); groups with equal rewards teach nothing.
        rewards = torch.tensor(scored.total, dtype=torch.float64)
        advantages = inputs.algorithm.advantages(rewards, g.group_size)
        keep = (~flat_groups(rewards, g.group_size)).tolist() if drop_flat else None
        shown = shown_fields([p.text for p in prompts for _ in range(g.group_size)], flat, scored.components)
        batches.append(build_batch([p.token_ids for p in prompts], completions, scored.total, advantages.tolist(),
                                   keep_groups=keep, mask_truncated=g.mask_truncated, shown=shown))
        if round_ == 0:
            metrics = _rollout_stats(flat, scored, inputs.correct_component, g.accuracy_threshold,
                                     timer.seconds["generate"])
            if actors.sampler is not None:
                from rl_pipeline.workers.multiturn import trajectory_metrics

                metrics.update(trajectory_metrics(flat, actors.sampler.last_tool_wall_s))
        drawn += [p.row for p in prompts]
        kept = sum(b.groups_total - b.groups_dropped for b in batches)
        if not drop_flat or kept >= g.prompts_per_step:
            break
    metrics["train/refill_rounds"] = float(len(batches) - 1)
    metrics["data/prompts_crc32"] = float(zlib.crc32(repr(drawn).encode()))  # which rows, in order (resume tests)
    return merge_batches(batches), metrics


def _teacher_advantages(teacher, batch: GRPOBatch, algorithm, temperature: float) -> dict:
    """The teacher scores every sampled token at the sampling temperature; the algorithm turns each
    sample's (uniform) sequence advantage and the two logprobs into per-token advantages
    (on_policy_distill: algorithms/entries.py). The student's logprob is the sampler's, pi_old of this step."""
    from rl_pipeline.algorithms.distill import mean_reverse_kl

    teacher.add_logprobs(batch.samples, temperature, field="teacher_logprobs")
    for s in batch.samples:
        sequence_advantage = s.advantage[0] if s.advantage else 0.0
        s.advantage = algorithm.token_advantages(sequence_advantage, s.sampler_logprobs, s.teacher_logprobs)
    trained = [s for s in batch.samples if s.trained]
    return {"distill/reverse_kl": mean_reverse_kl([(s.sampler_logprobs, s.teacher_logprobs, s.loss_mask)
                                                   for s in trained])}


def _unscored(count: int):
    """Pure on-policy distillation has no reward functions: every sample scores 0, nothing is graded."""
    from rl_pipeline.workers.reward import RewardResult

    return RewardResult(total=[0.0] * count, components={}, metrics={})


# What the progress line shows, when the step has it (a run without rewards has no accuracy).
_PROGRESS = {"reward": "reward/total/mean", "acc": "train/accuracy", "rkl": "distill/reverse_kl"}
# ... and, only when nonzero, samples whose reward function raised or timed out (the console
# names the function: workers/reward.py FailureLog).
_PROGRESS_FAILURES = {"reward_errors": "reward/errors", "reward_timeouts": "reward/timeouts"}


def _progress_info(metrics: dict) -> dict[str, float]:
    info = {k: metrics[m] for k, m in _PROGRESS.items() if m in metrics}
    return info | {k: metrics[m] for k, m in _PROGRESS_FAILURES.items() if metrics.get(m)}


def reward_columns(prompts: list[Prompt], completions: list[list]) -> dict[str, list]:
    """Columns of every completion for the reward functions: its prompt's dataset columns, then
    what the rollout knows (these win over dataset columns of the same name): completion_length
    (tokens), finish_reason ("stop" | "length") and truncated (hit rollout.max_tokens)."""
    flat = [c for group in completions for c in group]
    return {**columns_for(prompts, len(completions[0])),
            "completion_length": [len(c.token_ids) for c in flat],
            "finish_reason": [c.finish_reason for c in flat],
            "truncated": [c.truncated for c in flat]}


def _generate(actors: _Actors, prompts: list[Prompt], n: int, seed: int) -> list[list]:
    """n completions per prompt: single-turn on the engines, or multi-turn trajectories with tools."""
    ids = [p.token_ids for p in prompts]
    if actors.sampler is None:
        return actors.engines.generate(ids, n=n, seed=seed)
    return actors.sampler.generate(ids, n=n, seed=seed, prompts=[p.text for p in prompts],
                                   columns=[p.columns for p in prompts])


def _rollout_stats(flat, scored, correct_component: str | None, threshold: float, generate_s: float) -> dict:
    lengths = [len(c.token_ids) for c in flat]
    graded = {}
    if scored.components:  # {}: pure distillation, nothing scores the samples
        graded = {"reward/total/mean": mean(scored.total), "reward/total/std": pstdev(scored.total)}
    if correct_component is not None:  # None: no reward grades correctness (pipelines/accuracy.py)
        graded["train/accuracy"] = mean(s is not None and s >= threshold for s in scored.components[correct_component])
    return {
        **scored.metrics,
        **graded,
        "rollout/response_length_mean": mean(lengths),
        "rollout/response_length_max": float(max(lengths)),
        "rollout/truncated_frac": mean(c.truncated for c in flat),
        "throughput/generated_tokens_per_s": sum(lengths) / max(generate_s, 1e-9),
    }


def _batch_stats(batch: GRPOBatch) -> dict:
    # Advantages are per token: a sample's mean stands for it here.
    advantages = [mean(s.advantage) if s.advantage else 0.0 for s in batch.samples] or [0.0]
    return {
        "train/groups_dropped": float(batch.groups_dropped),
        "train/groups_total": float(batch.groups_total),
        "train/samples": float(len(batch.samples)),
        "advantage/mean": mean(advantages),
        "advantage/abs_mean": mean(abs(a) for a in advantages),
        "advantage/max": max(advantages),
        "advantage/min": min(advantages),
    }


def staleness(batch: GRPOBatch, version: int) -> dict[str, float]:
    """How many policy versions behind the trainer (now at `version`) the batch's tokens were
    sampled: the largest lag, and the share of trained tokens at each lag (the staleness
    histogram: `rollout/staleness/0` is 1.0 for a synchronous run; overlap_generation moves it to 1)."""
    tokens: dict[int, int] = {}
    for s in batch.samples:
        lag = version - s.policy_version
        tokens[lag] = tokens.get(lag, 0) + s.trained_tokens()
    total = max(sum(tokens.values()), 1)
    return {"rollout/policy_version_lag": float(max(tokens)),
            **{f"rollout/staleness/{lag}": count / total for lag, count in sorted(tokens.items())}}


def _padding_share(mini_batches: list[tuple[list, object]]) -> float:
    """Share of the trainer's forward-pass tokens that are padding."""
    padded, real = map(sum, zip(*(padded_tokens(rank) for shards, _ in mini_batches for rank in shards)))
    return 1.0 - real / max(padded, 1)


def _evaluate(recipe: Recipe, inputs: GRPOInputs, actors: _Actors, step: int, tracker: Tracker) -> dict:
    """Held-out metrics after `step` steps; the greedy answers to the first eval prompts go to the
    sample log (the same prompts every time, so a user can follow one across the run)."""
    g, t0, wall = recipe.grpo, time.perf_counter(), time.time()
    metrics, rows = evaluate(
        actors.sampler or actors.engines, actors.scorer, inputs.eval, correct_component=inputs.correct_component,
        threshold=g.accuracy_threshold, k=g.eval_samples, temperature=recipe.rollout.temperature,
        max_tokens=recipe.rollout.max_tokens, seed=g.seed + step,
        samples=g.log_samples_groups if g.log_samples_every else 0)
    metrics["time/eval"] = time.perf_counter() - t0
    tracker.log_spans(step, [("eval", wall, metrics["time/eval"])])
    tracker.log_samples(step, rows, as_markdown(rows), table_rows(step, rows))
    return metrics
