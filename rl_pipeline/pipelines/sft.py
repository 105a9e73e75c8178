"""The SFT driver: check and tokenize the data, start the trainer ranks, run the loop, save.

Reads like the algorithm: every step takes the next global batch of the (per-epoch shuffled)
dataset, gives each rank its micro-batches, and logs the global token-mean loss. All input is
checked before any actor starts. With `sft.stop_at_accuracy` the run ends at the first validation
whose greedy exact-match accuracy reaches it (a base stopped mid-way, for RL to improve). A model
trained on plain prompt/completion text is saved with a chat template that renders that text.
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
from rl_pipeline.data.sft import TokenizedSample, generation_target, pack_samples, tokenize_dataset
from rl_pipeline.models.loading import RAW_TEXT_TEMPLATE, check_model_source, load_tokenizer, set_chat_template
from rl_pipeline.models.lora import check_lora
from rl_pipeline.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = ["InputError", "SFTResult", "train_sft", "prepare_sft_samples", "tokenize_split", "BatchPlan"]


@dataclass
class SFTResult:
    run_dir: Path
    final_model: Path
    steps: int
    final_loss: float


def tokenize_split(recipe: Recipe, split: str = "train") -> list[TokenizedSample]:
    """Load, check and tokenize one dataset of the recipe (unpacked); no actors involved."""
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
    return samples


def as_training_rows(recipe: Recipe, samples: list[TokenizedSample]) -> list[dict]:
    """What a trainer rank receives: plain dicts, packed when data.packing asks."""
    if recipe.data.packing:
        return [vars(p) for p in pack_samples(samples, recipe.data.max_length)]
    return [{"input_ids": s.input_ids, "loss_mask": s.loss_mask} for s in samples]


def prepare_sft_samples(recipe: Recipe, split: str = "train") -> list[dict]:
    """Load, check and tokenize a dataset of the recipe (packed if asked); no actors involved."""
    return as_training_rows(recipe, tokenize_split(recipe, split))


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


@dataclass
class SFTInputs:
    """Tokenized training rows, validation rows, and the (prompt, target) pairs whose greedy
    exact-match accuracy decides `sft.stop_at_accuracy` (None when the recipe does not ask)."""

    train: list[dict]
    val: list[dict] | None
    accuracy_pairs: list[tuple[list[int], list[int]]] | None
    raw_text: bool = False  # trained on plain prompt/completion text, not through the chat template


def check_sft_inputs(recipe: Recipe) -> SFTInputs:
    """Everything that can be wrong with the input, found before any actor starts."""
    recipe.require("data", "sft")
    check_model_source(recipe.model.path)
    check_lora(recipe.model, recipe.trainer.lora)
    sft = recipe.sft
    if sft.eval_every and recipe.data.eval is None:
        raise InputError("sft.eval_every is set but data.eval is missing: nothing to validate on")
    if sft.stop_at_accuracy is not None and not sft.eval_every:
        raise InputError("sft.stop_at_accuracy is checked every sft.eval_every steps; set sft.eval_every")
    if sft.stop_at_accuracy is not None and recipe.trainer.zero_stage == 3:
        # Each rank generates with its own full copy of the weights; ZeRO-3 shards them.
        raise InputError("sft.stop_at_accuracy needs trainer.zero_stage <= 2 (ranks generate with full weights)")
    train = prepare_sft_samples(recipe, "train")
    raw = trains_on_raw_text(recipe)
    if recipe.data.eval is None:
        return SFTInputs(train, None, None, raw)
    val_samples = tokenize_split(recipe, "eval")
    pairs = None
    if sft.stop_at_accuracy is not None:
        pairs = [pair for pair in map(generation_target, val_samples) if pair is not None]
    return SFTInputs(train, as_training_rows(recipe, val_samples), pairs, raw)


def trains_on_raw_text(recipe: Recipe) -> bool:
    """True when data.train is plain prompt/completion text (format prompt_completion, chat: false,
    string prompts): the model learns to continue "12+34=", not a chat-template rendering of it."""
    spec = recipe.data.train
    rows = load_rows(spec, "data.train")  # loaded before by tokenize_split: the datasets cache answers
    fmt = detect_format(spec, rows.column_names, "data.train")
    return fmt == "prompt_completion" and not spec.chat and isinstance(rows[0][spec.prompt_column], str)


def train_sft(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False) -> SFTResult:
    """Run (or resume) SFT as the recipe says; returns where the final model is."""
    from rl_pipeline.workers.trainer import TrainerSpec

    inputs = check_sft_inputs(recipe)  # a bad model path is an InputError too (ModelSourceError)
    sft, cfg = recipe.sft, recipe.trainer
    plan = BatchPlan(inputs.train, cfg, sft.epochs, sft.max_steps, sft.seed)
    run = RunDir.open(recipe, run_dir, resume)
    resumed = run.latest() if resume else None
    start = resumed.step if resumed else 0
    log.info("SFT: %d samples, global batch %d, %d steps, run dir %s", len(inputs.train), plan.global_batch,
             plan.total_steps, run.path)
    tracker = Tracker(run.path, recipe.tracking, resume_after_step=start if resume else None)
    spec = TrainerSpec(recipe.model, cfg, plan.total_steps, sft.seed)
    loss, steps = run_trainer(recipe, spec, run, tracker, resumed,
                              lambda trainer: _sft_loop(recipe, plan, trainer, run, tracker, start, inputs))
    if inputs.raw_text:
        # The saved chat template must render prompts the way this model was trained, or
        # apply_chat_template wraps "12+34=" in chat markers it never saw (and it answers wrong).
        set_chat_template(run.final_model, RAW_TEXT_TEMPLATE)
        log.info("final model: chat template set to the plain text it was trained on (data.train.chat: false)")
    return SFTResult(run.path, run.final_model, steps, loss)


def run_trainer(recipe: Recipe, spec, run: RunDir, tracker: Tracker, resumed, loop):
    """The life of a trainer-only stage (SFT, RM): start the ranks, restore `resumed`, run
    `loop(trainer)`, write run.final_model, stop the ranks; returns what the loop returned."""
    from rl_pipeline.cluster import connect
    from rl_pipeline.workers.trainer import TrainerGroup

    with connect(recipe.cluster):
        trainer = TrainerGroup.start(spec, recipe.cluster.placement_strategy)
        try:
            if resumed:
                trainer.load_state(str(resumed.checkpoint))
                log.info("resumed from %s at step %d", resumed.checkpoint, resumed.step)
            result = loop(trainer)
            trainer.save_hf(str(run.final_model))
        finally:
            tracker.close()
            trainer.shutdown()
    return result


def _sft_loop(recipe: Recipe, plan: BatchPlan, trainer, run: RunDir, tracker: Tracker, start: int,
              inputs: SFTInputs) -> tuple[float, int]:
    """Train from `start`; returns the last loss and the steps done (fewer than planned when
    sft.stop_at_accuracy is reached)."""
    from rl_pipeline.progress import StepProgress

    sft, loss, done = recipe.sft, float("nan"), start
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
                metrics.update(_validate(recipe, trainer, inputs))
            if done % sft.log_every == 0 or done == plan.total_steps or "val_loss" in metrics:
                tracker.log(done, metrics)
            progress.advance(loss=loss)
            if _reached_accuracy(sft, metrics, done):
                break
            if sft.save_every and done % sft.save_every == 0 and done < plan.total_steps:
                run.save(done, trainer.save_state, {"stage": "sft"})
    return loss, done


def _validate(recipe: Recipe, trainer, inputs: SFTInputs) -> dict[str, float]:
    """Validation loss, and greedy exact-match accuracy when sft.stop_at_accuracy needs it."""
    metrics = {"val_loss": trainer.eval_loss(eval_shards(inputs.val, recipe.trainer))}
    if inputs.accuracy_pairs is not None:
        metrics["val_accuracy"] = trainer.greedy_accuracy(inputs.accuracy_pairs)
    return metrics


def _reached_accuracy(sft, metrics: dict[str, float], step: int) -> bool:
    """True once validation accuracy reaches sft.stop_at_accuracy: the base for RL is wanted
    mid-way through learning, and when that happens varies by hundreds of steps with the seed."""
    if sft.stop_at_accuracy is None or metrics.get("val_accuracy", 0.0) < sft.stop_at_accuracy:
        return False
    log.info("step %d: greedy accuracy on data.eval %.3f reached sft.stop_at_accuracy=%.3f; stopping",
             step, metrics["val_accuracy"], sft.stop_at_accuracy)
    return True
