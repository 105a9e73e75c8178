"""`rlp pipeline`: run the stages a pipeline recipe lists (distill, sft, grpo, rm) in one run
directory, then evaluate the models it names and write report.md and curves.png.

A pipeline recipe:

    name: demo
    prepare:                 # optional: build inputs inside the run directory
      tiny_model: {layers: 4, hidden: 128}      # -> {run_dir}/tiny-model
      task: {train: 6000, eval: 100, test: 200}  # -> {run_dir}/task/{train,eval,test}.jsonl
    common: {tracking: {...}, cluster: {...}}  # merged into every stage recipe
    stages:
      - {name: sft, kind: sft, recipe: {model: {path: "{run_dir}/tiny-model"}, ...}}
    report:
      recipe: {...}                            # an eval recipe: data.eval, rollout, rewards, grpo
      models: {base: "{run_dir}/base/final_model", ...}
      curves: grpo                             # the stage whose metrics are plotted

Every stage recipe is `common` deep-merged with the stage's own `recipe`, with "{run_dir}"
replaced, and all of them are validated before anything runs. Stage i writes to
{run_dir}/{name}/; a finished stage leaves STAGE_DONE.json and is skipped on rerun, a stage
that stopped half-way resumes from its last checkpoint.

On-policy distillation is a `kind: grpo` stage whose recipe has a `teacher:` section (e.g. the
teacher "{run_dir}/expert/final_model" of an earlier stage, when it shares the student's tokenizer).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from rl_pipeline.atomic import atomic_write_text
from rl_pipeline.config import InputError, Recipe, RecipeError, parse_recipe

log = logging.getLogger(__name__)

STAGE_KINDS = ("sft", "grpo", "distill", "rm")
DONE = "STAGE_DONE.json"


@dataclass
class Stage:
    name: str
    kind: str
    recipe: Recipe


@dataclass
class PipelinePlan:
    run_dir: Path
    prepare: dict
    stages: list[Stage]
    report: dict


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def substitute(node, run_dir: Path):
    """Replace "{run_dir}" in every string of a nested recipe."""
    if isinstance(node, dict):
        return {k: substitute(v, run_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, run_dir) for v in node]
    return node.replace("{run_dir}", str(run_dir)) if isinstance(node, str) else node


def load_plan(path: str | Path, run_dir: str | Path | None = None, seed: int | None = None) -> PipelinePlan:
    """Read and validate a pipeline recipe: every stage recipe is checked before anything runs.

    `seed` (when given) replaces the training seed everywhere: the tiny model's initialisation
    and each stage's `sft.seed` / `grpo.seed` / `distill.seed` / `rm.seed`; the task data stays the same, so
    runs with different seeds measure run-to-run noise on the same held-out problems."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: pipeline recipe not found")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"name", "output_dir", "prepare", "common", "stages", "report"}
    if unknown:
        raise RecipeError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if not raw.get("stages"):
        raise RecipeError(f"{path}: stages: a pipeline needs at least one stage")
    run = Path(run_dir) if run_dir else Path(raw.get("output_dir", "runs")) / raw.get("name", "pipeline")
    common = raw.get("common") or {}
    stages, names = [], set()
    for i, entry in enumerate(raw["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "kind", "recipe"} or "name" not in entry:
            raise RecipeError(f"{where}: a stage is {{name, kind, recipe}}, got {entry!r}")
        kind = entry.get("kind", entry["name"])
        if kind not in STAGE_KINDS:
            raise RecipeError(f"{where}.kind: '{kind}' is not one of {STAGE_KINDS}")
        if entry["name"] in names:
            raise RecipeError(f"{where}.name: '{entry['name']}' is used twice")
        names.add(entry["name"])
        merged = substitute(deep_merge(common, entry.get("recipe") or {}), run)
        merged.setdefault("name", entry["name"])
        if seed is not None:
            merged.setdefault(kind, {})["seed"] = seed
        stages.append(Stage(entry["name"], kind, parse_recipe(merged, f"{where} ({entry['name']})")))
    report = substitute(raw.get("report") or {}, run)
    if report.get("recipe"):
        report["recipe"] = parse_recipe(deep_merge(substitute(common, run), report["recipe"]), f"{path}: report.recipe")
    prepare = substitute(raw.get("prepare") or {}, run)
    if seed is not None and "tiny_model" in prepare:
        prepare["tiny_model"] = {**prepare["tiny_model"], "seed": seed}
    return PipelinePlan(run, prepare, stages, report)


def check_rewards(plan: PipelinePlan) -> None:
    """Before the first stage runs: every stage's reward functions resolve (names, files that
    import), take the keyword arguments given, and those that run model-written code are
    isolated on this machine (or opt out), so a late stage cannot fail hours into the run."""
    from rl_pipeline.workers.reward import validate

    recipes = [(f"stages[{i}] ({stage.name})", stage.recipe) for i, stage in enumerate(plan.stages)]
    if plan.report.get("recipe") is not None:
        recipes.append(("report.recipe", plan.report["recipe"]))
    for where, recipe in recipes:
        if recipe.rewards is not None:
            try:
                validate(recipe.rewards)
            except (InputError, ValueError, LookupError, ImportError, TypeError) as exc:
                raise InputError(f"{where}: {exc}") from None


def prepare_inputs(plan: PipelinePlan) -> None:
    """Build the tiny model and the synthetic task the recipe asks for (once)."""
    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model

    if "tiny_model" in plan.prepare and not (plan.run_dir / "tiny-model" / "config.json").exists():
        build_tiny_model(plan.run_dir / "tiny-model", TinyModelSpec(**plan.prepare["tiny_model"]))
    task = plan.prepare.get("task")
    if task and not (plan.run_dir / "task" / "test.jsonl").exists():
        task = dict(task)
        splits = {k: task.pop(k) for k in ("train", "eval", "test")}
        write_task(plan.run_dir / "task", splits, **task)


def run_stage(stage: Stage, run_dir: Path) -> dict:
    """Run one stage (resuming it if it stopped half-way); returns what it reports."""
    out = run_dir / stage.name
    resume = (out / "checkpoints" / "latest").exists()
    if stage.kind == "sft":
        from rl_pipeline.pipelines.sft import train_sft

        result = train_sft(stage.recipe, run_dir=out, resume=resume)
        return {"model": str(result.final_model)}
    if stage.kind == "grpo":
        from rl_pipeline.pipelines.grpo import train_grpo

        result = train_grpo(stage.recipe, run_dir=out, resume=resume)
        return {"model": str(result.final_model), "final_eval": result.final_eval}
    if stage.kind == "rm":
        from rl_pipeline.pipelines.rm import train_rm

        result = train_rm(stage.recipe, run_dir=out, resume=resume)
        return {"model": str(result.final_model), "final_eval": result.final_eval}
    from rl_pipeline.pipelines.distill import run_distill

    result = run_distill(stage.recipe, out)
    return {"dataset": str(result.output)}


def run_pipeline(path: str | Path, run_dir: str | Path | None = None, seed: int | None = None) -> Path:
    """Run every unfinished stage in order, then the report; returns the run directory."""
    plan = load_plan(path, run_dir, seed)
    check_rewards(plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    prepare_inputs(plan)
    for stage in plan.stages:
        done = plan.run_dir / stage.name / DONE
        if done.exists():
            log.info("stage %s: already finished, skipped", stage.name)
            continue
        log.info("stage %s (%s): starting", stage.name, stage.kind)
        t0 = time.perf_counter()
        info = run_stage(stage, plan.run_dir)
        info["seconds"] = time.perf_counter() - t0
        atomic_write_text(done, json.dumps(info, indent=2))
        log.info("stage %s: done in %.0fs", stage.name, info["seconds"])
    if plan.report:
        from rl_pipeline.pipelines.report import write_report

        write_report(plan, stage_seconds(plan))
    return plan.run_dir


def stage_seconds(plan: PipelinePlan) -> dict[str, float]:
    out = {}
    for stage in plan.stages:
        done = plan.run_dir / stage.name / DONE
        if done.exists():
            out[stage.name] = json.loads(done.read_text()).get("seconds", float("nan"))
    return out


__all__ = ["InputError", "load_plan", "run_pipeline", "stage_seconds", "PipelinePlan"]
