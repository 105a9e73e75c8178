"""The run directory: resolved recipe, checkpoints (written to a temp name, then renamed), resume.

Layout of a run directory:
    recipe.yaml              the resolved recipe the run started with
    metrics.jsonl            one JSON object per logged step (tracking.py)
    tensorboard/             TensorBoard events
    checkpoints/step_00000010/   trainer state of every rank + trainer_state.json
    checkpoints/latest       name of the newest complete checkpoint
    final_model/             Hugging Face model + tokenizer, when the stage finished

A checkpoint folder only gets its final name after every rank wrote its part, and `latest` is
replaced atomically afterwards, so a kill mid-save leaves the previous checkpoint usable. A save
that is interrupted (Ctrl-C, an error) removes its `.step_N.tmp` folder; one a SIGKILL leaves
behind is removed when the run resumes. `--resume` of a run that saved no checkpoint yet says so
and starts from step 0.
Resuming compares the stored recipe with the new one and refuses what would silently change
the run (another model, other data, another batch geometry, another learning-rate schedule or
number of updates per step: the restored optimiser state and step belong to the old ones).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from rl_pipeline import interrupt
from rl_pipeline.atomic import atomic_folder, atomic_write_text
from rl_pipeline.config import InputError, Recipe, recipe_to_yaml

log = logging.getLogger(__name__)

# Recipe keys whose change makes a checkpoint meaningless to continue from.
RESUME_MUST_MATCH = (
    "model",
    "data",
    "trainer.num_ranks",
    "trainer.zero_stage",
    "trainer.micro_batch_size",
    "trainer.grad_accum_steps",
    "trainer.precision",
    "trainer.lora",  # a checkpoint of adapters belongs to their rank and targets
    "sft.seed",
    "rm.seed",
    "grpo.seed",
    "grpo.prompts_per_step",
    "grpo.group_size",
    "trainer.lr",
    "trainer.min_lr",
    "trainer.warmup_steps",
    "trainer.schedule",
    "grpo.inner_epochs",
    "grpo.mini_batches",
    "grpo.steps",
)


def _lookup(data: dict | None, dotted: str):
    for key in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def recipe_differences(stored: dict, current: dict, keys=RESUME_MUST_MATCH) -> list[str]:
    """Human-readable differences between two resolved recipes at the keys that must match."""
    diffs = []
    for key in keys:
        a, b = _lookup(stored, key), _lookup(current, key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                inner = recipe_differences(a, b, [k for k in set(a) | set(b)])
                diffs += [f"{key}.{d}" for d in inner]
            else:
                diffs.append(f"{key}: {a!r} (run) vs {b!r} (now)")
    return diffs


def _save_every_key(recipe: Recipe) -> str:
    stage = next((name for name in ("grpo", "sft", "rm") if getattr(recipe, name) is not None), "sft")
    return f"{stage}.save_every"


@dataclass
class Resumed:
    step: int
    checkpoint: Path
    state: dict


class RunDir:
    def __init__(self, path: Path, recipe: Recipe) -> None:
        self.path = path
        self.recipe = recipe
        self.checkpoints = path / "checkpoints"

    @classmethod
    def open(cls, recipe: Recipe, run_dir: str | Path | None, resume: bool) -> "RunDir":
        """Create a new run directory, or reopen `run_dir` for --resume after checking the recipe."""
        if run_dir is None:
            if resume:
                raise InputError("--resume needs --run-dir: the run directory to continue")
            run_dir = Path(recipe.output_dir) / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(run_dir)
        stored = path / "recipe.yaml"
        if resume:
            if not stored.exists():
                raise InputError(f"--resume: {path} is not a run directory (no recipe.yaml)")
            diffs = recipe_differences(yaml.safe_load(stored.read_text()), recipe.model_dump(mode="json"))
            if diffs:
                raise InputError(f"cannot resume {path}: the recipe differs from the run's recipe.yaml: " + "; ".join(diffs))
        elif (path / "checkpoints").exists() or (path / "final_model").exists():
            raise InputError(f"{path} already holds a run; pass --resume to continue it or choose another --run-dir")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stored, recipe_to_yaml(recipe))
        run = cls(path, recipe)
        interrupt.in_run_dir(path)  # for the resume command a Ctrl-C prints
        if resume:
            run.remove_unfinished_saves()
            if run.latest() is None:
                # Not an error (a run stopped before its first save restarts correctly from 0),
                # but a user who typed --resume expects to continue: say that nothing is restored.
                log.warning("--resume: %s has no checkpoint yet (one is written every %s steps); starting from "
                            "step 0", path, _save_every_key(recipe))
        return run

    def remove_unfinished_saves(self) -> None:
        """Delete `.step_N.tmp` folders: saves that a kill interrupted (never a usable checkpoint)."""
        for tmp in self.checkpoints.glob(".step_*.tmp"):
            log.warning("removing %s: a checkpoint save that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def final_model(self) -> Path:
        return self.path / "final_model"

    def latest(self) -> Resumed | None:
        """The newest complete checkpoint, or None when the run has none."""
        pointer = self.checkpoints / "latest"
        if not pointer.exists():
            return None
        ckpt = self.checkpoints / pointer.read_text().strip()
        state = json.loads((ckpt / "trainer_state.json").read_text())
        return Resumed(step=state["step"], checkpoint=ckpt, state=state)

    def save(self, step: int, save_ranks, state: dict) -> Path:
        """Write a checkpoint: `save_ranks(tmp_dir)` writes every rank's part, then rename."""
        self.checkpoints.mkdir(exist_ok=True)
        name = f"step_{step:08d}"
        final = self.checkpoints / name
        # Ctrl-C or a failing rank leaves no half-written folder behind (the temp is `.step_N.tmp`).
        with atomic_folder(final) as tmp:
            save_ranks(str(tmp))
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
        atomic_write_text(self.checkpoints / "latest", name)
        self._prune()
        log.info("checkpoint saved: %s", final)
        return final

    def _prune(self) -> None:
        kept = sorted(p for p in self.checkpoints.glob("step_*") if p.is_dir())
        for old in kept[: -self.recipe.checkpoint.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
