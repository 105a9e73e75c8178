"""Held-out evaluation on the rollout engines: greedy accuracy, pass@k at temperature, mean
reward and response length. Correctness is one grading reward component scoring at least a
threshold (pipelines/accuracy.py says which); with no grading reward, no accuracy is reported.
`rlp eval` also says what it scored (model, data, problem count) and writes it to a JSON file, with
the greedy answers to the first prompts (`grpo.log_samples_groups`): the same prompts at every
evaluation of a run, so an answer can be followed from step to step (samples.jsonl, kind "eval")."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from rl_pipeline.data.prompts import Prompt, columns_for


def evaluate(engines, scorer, prompts: list[Prompt], *, correct_component: str | None, threshold: float, k: int,
             temperature: float, max_tokens: int, seed: int = 0,
             samples: int = 0) -> tuple[dict[str, float], list[dict]]:
    """Metrics under `eval/`: accuracy (greedy) and pass@k when a component grades correctness,
    mean total reward and response length (greedy, tokens) always; and one row per prompt of the
    first `samples`: the prompt and its greedy answer with reward, components, length, finish
    reason and whether it counts as correct."""
    ids = [p.token_ids for p in prompts]
    greedy = engines.generate(ids, n=1, temperature=0.0, max_tokens=max_tokens)
    scored = _score(scorer, prompts, greedy)
    metrics = {"eval/reward_mean": mean(scored.total),
               "eval/response_length": mean(len(group[0].token_ids) for group in greedy)}
    correct = _correct(scored, correct_component, threshold) if correct_component is not None else None
    rows = [{"kind": "eval", "prompt": p.text, "completions": [{
        "text": c.text, "reward": scored.total[i], "length": len(c.token_ids), "finish_reason": c.finish_reason,
        "components": {name: values[i] for name, values in scored.components.items()},
        **({"correct": correct[i]} if correct is not None else {})}]}
        for i, (p, (c,)) in enumerate(zip(prompts[:samples], greedy))]
    if correct_component is None:
        return metrics, rows
    metrics["eval/accuracy"] = mean(correct)
    if k > 1:
        sampled = engines.generate(ids, n=k, temperature=temperature, max_tokens=max_tokens, seed=seed)
        ok = _correct(_score(scorer, prompts, sampled), correct_component, threshold)
        metrics[f"eval/pass@{k}"] = mean(any(ok[i * k : (i + 1) * k]) for i in range(len(prompts)))
    return metrics, rows


def _score(scorer, prompts: list[Prompt], completions):
    n = len(completions[0])
    return scorer.score(
        [p.text for p in prompts for _ in range(n)],
        [c.text for group in completions for c in group],
        columns_for(prompts, n),
    )


def _correct(scored, component: str, threshold: float) -> list[bool]:
    return [s is not None and s >= threshold for s in scored.components[component]]


@dataclass
class EvalResult:
    """What `rlp eval` scored and the metrics: written as JSON beside the runs."""

    model: str
    data: str
    problems: int
    accuracy: str  # what eval/accuracy means, in words
    metrics: dict[str, float]
    time: str
    samples: list[dict]  # the greedy answers to the first prompts (grpo.log_samples_groups of them)


def run_eval(recipe, model_path: str | None = None) -> dict[str, float]:
    """The metrics of `evaluate_model` (the pipeline report caches these)."""
    return evaluate_model(recipe, model_path).metrics


def evaluate_model(recipe, model_path: str | None = None) -> EvalResult:
    """`rlp eval`: start engines for `model_path` (default model.path) and the reward service,
    evaluate on data.eval, shut down. Inputs are checked before any actor starts."""
    from rl_pipeline.cluster import connect
    from rl_pipeline.config import InputError
    from rl_pipeline.pipelines.grpo_inputs import check_grpo_inputs
    from rl_pipeline.workers.reward import RewardService
    from rl_pipeline.workers.rollout import RolloutGroup

    if model_path is not None:
        recipe = recipe.model_copy(deep=True)
        recipe.model.path = model_path
    inputs = check_grpo_inputs(recipe)
    if not inputs.eval:
        raise InputError("data.eval: required by rlp eval (the held-out prompts)")
    g = recipe.grpo
    with connect(recipe.cluster):
        engines = RolloutGroup.start(recipe.model.path, recipe.rollout, g.seed, recipe.cluster.placement_strategy)
        scorer = RewardService.start(recipe.rewards)
        try:
            metrics, samples = evaluate(
                engines, scorer, inputs.eval, correct_component=inputs.correct_component,
                threshold=g.accuracy_threshold, k=g.eval_samples, temperature=recipe.rollout.temperature,
                max_tokens=recipe.rollout.max_tokens, seed=g.seed, samples=g.log_samples_groups)
        finally:
            scorer.shutdown()
            engines.shutdown()
    return EvalResult(recipe.model.path, recipe.data.eval.path, len(inputs.eval),
                      accuracy_meaning(inputs.correct_component, g.accuracy_threshold), metrics,
                      time.strftime("%Y-%m-%dT%H:%M:%S"), samples)


def accuracy_meaning(component: str | None, threshold: float) -> str:
    if component is None:
        return "not reported: no reward grades correctness (set grpo.accuracy_reward)"
    return f"share of greedy answers whose '{component}' reward is >= {threshold:g} (grpo.accuracy_threshold)"


def default_results_path(recipe, model: str) -> Path:
    """output_dir/eval/<model path as one name>-<time>.json: one file per evaluation."""
    slug = "-".join(part for part in Path(model).parts if part not in ("/", ".", "..")) or "model"
    return Path(recipe.output_dir) / "eval" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_results(result: EvalResult, path: str | Path) -> Path:
    """The result as JSON at `path`, written to a temp name and renamed."""
    from rl_pipeline.atomic import atomic_write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(asdict(result), indent=2) + "\n")
    return out
