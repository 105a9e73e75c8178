"""Held-out evaluation on the rollout engines: greedy accuracy, pass@k at temperature, mean
response length. Correctness is one reward component scoring at least a threshold."""

from __future__ import annotations

from statistics import mean

from rl_pipeline.data.prompts import Prompt, columns_for


def evaluate(engines, scorer, prompts: list[Prompt], tokenizer, *, correct_component: str, threshold: float,
             k: int, temperature: float, max_tokens: int, seed: int = 0) -> dict[str, float]:
    """Metrics under `eval/`: accuracy (greedy), pass@k, response length (greedy, tokens)."""
    ids = [p.token_ids for p in prompts]
    greedy = engines.generate(ids, n=1, temperature=0.0, max_tokens=max_tokens)
    greedy_ok = _correct(scorer, prompts, greedy, correct_component, threshold)
    metrics = {
        "eval/accuracy": mean(greedy_ok),
        "eval/response_length": mean(len(group[0].token_ids) for group in greedy),
    }
    if k > 1:
        sampled = engines.generate(ids, n=k, temperature=temperature, max_tokens=max_tokens, seed=seed)
        ok = _correct(scorer, prompts, sampled, correct_component, threshold)
        metrics[f"eval/pass@{k}"] = mean(any(ok[i * k : (i + 1) * k]) for i in range(len(prompts)))
    return metrics


def _correct(scorer, prompts: list[Prompt], completions, component: str, threshold: float) -> list[bool]:
    n = len(completions[0])
    result = scorer.score(
        [p.text for p in prompts for _ in range(n)],
        [c.text for group in completions for c in group],
        columns_for(prompts, n),
    )
    return [s is not None and s >= threshold for s in result.components[component]]


def run_eval(recipe, model_path: str | None = None) -> dict[str, float]:
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
            return evaluate(engines, scorer, inputs.eval, inputs.tokenizer, correct_component=inputs.correct_component,
                            threshold=g.accuracy_threshold, k=g.eval_samples, temperature=recipe.rollout.temperature,
                            max_tokens=recipe.rollout.max_tokens, seed=g.seed)
        finally:
            scorer.shutdown()
            engines.shutdown()
