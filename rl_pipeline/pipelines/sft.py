"""The SFT driver: check and tokenize the data, start the trainer ranks, run the loop, save.

Reads like the algorithm: every step takes the next global batch of the (per-epoch shuffled)
dataset, gives each rank its micro-batches, and logs the global token-mean loss. All input is
checked before any actor starts.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from rl_pipeline.checkpoint import RunDir
from rl_pipeline.config import InputError, Recipe, TrainerConfig
from rl_pipeline.data.loading import detect_format, load_rows
from rl_pipeline.data.sft import pack_samples, tokenize_dataset
from rl_pipeline.models.loading import check_model_source, load_tokenizer
from rl_pipeline.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = ["InputError", "SFTResult", "train_sft", "prepare_sft_samples", "BatchPlan"]


@dataclass
class SFTResult:
    run_dir: Path
    final_model: Path
    steps: int
    final_loss: float


def prepare_sft_samples(recipe: Recipe, split: str = "train") -> list[dict]:
    """Load, check and tokenize a dataset of the recipe (packed if asked); no actors involved."""
    data = recipe.data
    spec = data.train if split == "train" else data.eval
    key = f"data.{split}"
    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.path, recipe.model.trust_remote_code)
    rows = load_rows(spec, key)
    fmt = detect_format(spec, rows.column_names, key)
    samples, report = tokenize_dataset(tokenizer, rows, fmt, spec, data.max_length, data.truncate)
    if report.dropped_too_long or report.truncated or report.dropped_no_target:
        log.warning(
            "%s: %d rows kept, %d dropped as longer than data.max_length=%d (e.g. rows %s), %d truncated, "
            "%d without target tokens", key, report.kept, report.dropped_too_long, data.max_length,
            report.example_rows.get("dropped_too_long", []), report.truncated, report.dropped_no_target,
        )
    if data.packing:
        return [vars(p) for p in pack_samples(samples, data.max_length)]
    return [{"input_ids": s.input_ids, "loss_mask": s.loss_mask} for s in samples]


class BatchPlan:
    """Which samples each rank trains on at each step: a pure function of (seed, step).

    Every epoch is a fresh seeded permutation with the incomplete last batch dropped, so a
    resumed run sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, samples: list[dict], cfg: TrainerConfig, epochs: float, max_steps: int | None, seed: int):
        self.samples, self.cfg, self.seed = samples, cfg, seed
        self.global_batch = cfg.micro_batch_size * cfg.grad_accum_steps * cfg.num_ranks
        self.steps_per_epoch = len(samples) // self.global_batch
        if self.steps_per_epoch == 0:
            raise InputError(
                f"data.train: {len(samples)} usable samples, fewer than one global batch of {self.global_batch} "
                "(trainer.micro_batch_size x trainer.grad_accum_steps x trainer.num_ranks)"
            )
        self.total_steps = max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def shards(self, step: int) -> list[list[list[dict]]]:
        """shards[rank][micro_batch] = list of samples, for optimiser step `step`."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)[index * self.global_batch : (index + 1) * self.global_batch]
        mb, gas = self.cfg.micro_batch_size, self.cfg.grad_accum_steps
        per_rank = mb * gas
        return [
            [[self.samples[i] for i in order[r * per_rank + m * mb : r * per_rank + (m + 1) * mb]] for m in range(gas)]
            for r in range(self.cfg.num_ranks)
        ]


def global_target_tokens(shards: list[list[list[dict]]]) -> int:
    """Targets in the whole global batch (position 0 of a sequence is never a target)."""
    return sum(sum(s["loss_mask"][1:]) for rank in shards for mb in rank for s in mb)


def eval_shards(samples: list[dict], cfg: TrainerConfig) -> list[list[list[dict]]]:
    """Spread validation samples over ranks in micro-batches (every sample used once)."""
    per_rank = [samples[r :: cfg.num_ranks] for r in range(cfg.num_ranks)]
    mb = cfg.micro_batch_size
    return [[rank[i : i + mb] for i in range(0, len(rank), mb)] for rank in per_rank]


def check_sft_inputs(recipe: Recipe) -> tuple[list[dict], list[dict] | None]:
    """Everything that can be wrong with the input, found before any actor starts."""
    recipe.require("data", "sft")
    check_model_source(recipe.model.path)
    train = prepare_sft_samples(recipe, "train")
    val = prepare_sft_samples(recipe, "eval") if recipe.data.eval is not None else None
    if recipe.sft.eval_every and val is None:
        raise InputError("sft.eval_every is set but data.eval is missing: nothing to validate on")
    return train, val


def train_sft(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False) -> SFTResult:
    """Run (or resume) SFT as the recipe says; returns where the final model is."""
    from rl_pipeline.cluster import connect
    from rl_pipeline.workers.trainer import TrainerGroup, TrainerSpec

    try:
        train_samples, val_samples = check_sft_inputs(recipe)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    sft, cfg = recipe.sft, recipe.trainer
    plan = BatchPlan(train_samples, cfg, sft.epochs, sft.max_steps, sft.seed)
    run = RunDir.open(recipe, run_dir, resume)
    resumed = run.latest() if resume else None
    start = resumed.step if resumed else 0
    log.info("SFT: %d samples, global batch %d, %d steps, run dir %s", len(train_samples), plan.global_batch,
             plan.total_steps, run.path)
    tracker = Tracker(run.path, recipe.tracking, resume_after_step=start if resume else None)
    with connect(recipe.cluster):
        trainer = TrainerGroup.start(TrainerSpec(recipe.model, cfg, plan.total_steps, sft.seed),
                                     recipe.cluster.placement_strategy)
        try:
            if resumed:
                trainer.load_state(str(resumed.checkpoint))
                log.info("resumed from %s at step %d", resumed.checkpoint, start)
            loss = _sft_loop(recipe, plan, trainer, run, tracker, start, val_samples)
            trainer.save_hf(str(run.final_model))
        finally:
            tracker.close()
            trainer.shutdown()
    return SFTResult(run.path, run.final_model, plan.total_steps, loss)


def _sft_loop(recipe: Recipe, plan: BatchPlan, trainer, run: RunDir, tracker: Tracker, start: int, val) -> float:
    from rl_pipeline.progress import StepProgress

    sft, loss = recipe.sft, float("nan")
    with StepProgress("sft", plan.total_steps, start) as progress:
        for step in range(start, plan.total_steps):
            t0 = time.perf_counter()
            shards = plan.shards(step)
            stats = trainer.sft_step(shards, global_target_tokens(shards))
            elapsed = time.perf_counter() - t0
            loss = stats["loss"]
            metrics = {"loss": loss, "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                       "tokens_per_s": stats["tokens"] / elapsed, "epoch": (step + 1) / plan.steps_per_epoch,
                       "step_seconds": elapsed}
            done = step + 1
            if sft.eval_every and (done % sft.eval_every == 0 or done == plan.total_steps):
                metrics["val_loss"] = trainer.eval_loss(eval_shards(val, recipe.trainer))
            if done % sft.log_every == 0 or done == plan.total_steps or "val_loss" in metrics:
                tracker.log(done, metrics)
            if sft.save_every and done % sft.save_every == 0 and done < plan.total_steps:
                run.save(done, trainer.save_state, {"stage": "sft"})
            progress.advance(loss=loss)
    return loss
