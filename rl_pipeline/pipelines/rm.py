"""The reward-model driver (`rlp rm`): check and tokenize the pairs, start the trainer ranks with a
scalar head, run the Bradley-Terry loop, save a Hugging Face sequence classifier.

Reads like the SFT driver it mirrors (same BatchPlan, checkpoints, resume, metrics.jsonl): every
step takes the next global batch of pairs of the per-epoch shuffled dataset, gives each rank its
micro-batches, and logs the global pair-mean loss, pairwise accuracy and reward margin
(`rm/...`; held-out pairs of data.eval as `eval/rm/...`). All input is checked before any
actor starts. The final model is what the `reward_model` reward loads as it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rl_pipeline.checkpoint import RunDir
from rl_pipeline.config import InputError, Recipe
from rl_pipeline.data.preferences import load_pairs
from rl_pipeline.models.loading import check_model_source, load_tokenizer
from rl_pipeline.models.lora import check_lora
from rl_pipeline.pipelines.sft import BatchPlan, eval_shards, run_trainer
from rl_pipeline.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = ["RMResult", "train_rm", "check_rm_inputs"]


@dataclass
class RMResult:
    run_dir: Path
    final_model: Path
    steps: int
    final_loss: float
    final_eval: dict[str, float] = field(default_factory=dict)


@dataclass
class RMInputs:
    train: list[dict]
    val: list[dict] | None


def check_rm_inputs(recipe: Recipe) -> RMInputs:
    """Everything that can be wrong with the input, found before any actor starts."""
    recipe.require("data", "rm")
    try:
        check_model_source(recipe.model.path)
        check_lora(recipe.model, recipe.trainer.lora, head="scalar")
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    rm, data = recipe.rm, recipe.data
    if rm.eval_every and data.eval is None:
        raise InputError("rm.eval_every is set but data.eval is missing: no held-out pairs to evaluate on")
    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.path, recipe.model.trust_remote_code)
    as_rows = lambda pairs: [vars(p) for p in pairs]  # noqa: E731  (plain dicts travel to the ranks)
    train = as_rows(load_pairs(tokenizer, data.train, rm, data.max_length, "data.train"))
    val = as_rows(load_pairs(tokenizer, data.eval, rm, data.max_length, "data.eval")) if data.eval else None
    return RMInputs(train, val)


def train_rm(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False) -> RMResult:
    """Run (or resume) reward-model training as the recipe says; returns where the model is."""
    from rl_pipeline.workers.trainer import TrainerSpec

    inputs = check_rm_inputs(recipe)
    rm, cfg = recipe.rm, recipe.trainer
    plan = BatchPlan(inputs.train, cfg, rm.epochs, rm.max_steps, rm.seed)
    run = RunDir.open(recipe, run_dir, resume)
    resumed = run.latest() if resume else None
    start = resumed.step if resumed else 0
    log.info("RM: %d pairs, global batch %d, %d steps, run dir %s", len(inputs.train), plan.global_batch,
             plan.total_steps, run.path)
    tracker = Tracker(run.path, recipe.tracking, resume_after_step=start if resume else None)
    spec = TrainerSpec(recipe.model, cfg, plan.total_steps, rm.seed, head="scalar")
    loss, final_eval = run_trainer(recipe, spec, run, tracker, resumed,
                                   lambda trainer: _rm_loop(recipe, plan, trainer, run, tracker, start, inputs))
    return RMResult(run.path, run.final_model, plan.total_steps, loss, final_eval)


def _rm_loop(recipe: Recipe, plan: BatchPlan, trainer, run: RunDir, tracker: Tracker, start: int,
             inputs: RMInputs) -> tuple[float, dict[str, float]]:
    """Train from `start`; returns the last loss and the last held-out metrics."""
    from rl_pipeline.progress import StepProgress

    rm, loss, final_eval = recipe.rm, float("nan"), {}
    with StepProgress("rm", plan.total_steps, start) as progress:
        for step in range(start, plan.total_steps):
            t0 = time.perf_counter()
            shards = plan.shards(step)
            pairs = sum(len(mb) for rank in shards for mb in rank)
            stats = trainer.rm_step(shards, pairs, rm.margin_scale if rm.margin_column else 0.0,
                                    rm.center_rewards_coef)
            elapsed = time.perf_counter() - t0
            loss = stats["loss"]
            metrics = {"rm/loss": loss, "rm/accuracy": stats["accuracy"], "rm/margin": stats["margin"],
                       "rm/reward_mean": stats["reward_mean"], "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                       "tokens_per_s": stats["tokens"] / elapsed, "epoch": (step + 1) / plan.steps_per_epoch,
                       "step_seconds": elapsed}
            done = step + 1
            if rm.eval_every and (done % rm.eval_every == 0 or done == plan.total_steps):
                held_out = trainer.rm_eval(eval_shards(inputs.val, recipe.trainer))
                final_eval = {f"eval/rm/{key}": value for key, value in held_out.items()}
                metrics.update(final_eval)
            if done % rm.log_every == 0 or done == plan.total_steps or final_eval.keys() & metrics.keys():
                tracker.log(done, metrics)
            progress.advance(loss=loss, acc=stats["accuracy"])
            if rm.save_every and done % rm.save_every == 0 and done < plan.total_steps:
                run.save(done, trainer.save_state, {"stage": "rm"})
    return loss, final_eval
