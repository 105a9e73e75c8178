"""What a GRPO run or `rlp eval` reads, checked before any actor starts: the model source, the
reward functions and the accuracy component, tools, prompt lengths, and the prompts themselves.

Both drivers (`pipelines/grpo.py`, `pipelines/evaluate.py`) import it; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from rl_pipeline.config import InputError, Recipe
from rl_pipeline.data.prompts import Prompt, load_prompts
from rl_pipeline.models.loading import check_model_source, load_tokenizer


@dataclass
class GRPOInputs:
    tokenizer: object
    train: list[Prompt]
    eval: list[Prompt] | None
    correct_component: str


def check_grpo_inputs(recipe: Recipe) -> GRPOInputs:
    """Everything that can be wrong with the input, found before any actor starts."""
    from rl_pipeline.workers.reward import component_names, validate

    recipe.require("data", "grpo", "rollout", "rewards")
    try:
        check_model_source(recipe.model.path)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    try:
        validate(recipe.rewards)
    except InputError:
        raise  # already names rewards.functions[i]
    except (ValueError, LookupError, ImportError, TypeError) as exc:
        raise InputError(f"rewards.functions: {exc}") from None
    names = component_names(recipe.rewards)
    correct = recipe.grpo.accuracy_reward or names[0]
    if correct not in names:
        raise InputError(f"grpo.accuracy_reward: '{correct}' is not a reward component; components: {names}")
    completion_key, completion_tokens = "rollout.max_tokens", recipe.rollout.max_tokens
    if recipe.tools is not None:
        from rl_pipeline.workers.multiturn import check_tools

        check_tools(recipe.tools)
        completion_key, completion_tokens = "tools.max_total_tokens", recipe.tools.max_total_tokens
    max_prompt = recipe.data.max_length - completion_tokens
    if max_prompt < 1:
        raise InputError(f"data.max_length ({recipe.data.max_length}) leaves no room for prompts after "
                         f"{completion_key} ({completion_tokens})")
    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.path, recipe.model.trust_remote_code)
    template = recipe.grpo.prompt_template
    train = load_prompts(recipe.data.train, tokenizer, "data.train", max_prompt, template)
    evals = None
    if recipe.data.eval is not None:
        evals = load_prompts(recipe.data.eval, tokenizer, "data.eval", max_prompt, template)
        evals = evals[: recipe.grpo.eval_limit] if recipe.grpo.eval_limit else evals
    elif recipe.grpo.eval_every:
        raise InputError("grpo.eval_every is set but data.eval is missing: nothing to evaluate on")
    return GRPOInputs(tokenizer, train, evals, correct)
