"""What a GRPO run or `rlp eval` reads, checked before any actor starts: the model source, the
algorithm (built from grpo.algorithm), the reward functions and the accuracy component, tools,
prompt lengths, the prompts themselves, and an on-policy distillation teacher (its model and
vocabulary).

Both drivers (`pipelines/grpo.py`, `pipelines/evaluate.py`) import it; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from rl_pipeline.algorithms import Algorithm, AlgorithmError, AlgorithmSpec
from rl_pipeline.algorithms.grpo import GRPOLossConfig
from rl_pipeline.config import InputError, Recipe
from rl_pipeline.data.prompts import Prompt, load_prompts
from rl_pipeline.models.loading import check_model_source, check_reward_model_paths, load_tokenizer
from rl_pipeline.models.lora import check_lora
from rl_pipeline.pipelines.accuracy import correctness_component


@dataclass
class GRPOInputs:
    tokenizer: object
    train: list[Prompt]
    eval: list[Prompt] | None
    correct_component: str | None  # None: no reward grades correctness (pipelines/accuracy.py), or none at all
    algorithm: Algorithm | None = None  # the objective, built on the driver (advantages); the ranks build theirs
    algorithm_spec: AlgorithmSpec | None = None  # what the ranks build it from (sent with every step)


def algorithm_spec(recipe: Recipe) -> AlgorithmSpec:
    """The objective the recipe names, with the grpo.* loss settings (presets applied by the schema) and
    the teacher's coef / reward_weight as kwargs of a teacher-driven entry."""
    g = recipe.grpo
    settings = GRPOLossConfig(
        eps_low=g.eps_low, eps_high=g.eps_high, beta=g.kl_coef, kl_estimator=g.kl_estimator,
        aggregation=g.loss_aggregation, tis_cap=g.tis_cap, mis_band=g.mis_band, is_level=g.is_level,
        scale_advantages_by_std=g.scale_advantages_by_std,
        # Dr. GRPO's constant: the longest completion, which with tools spans every turn.
        max_length_norm=recipe.tools.max_total_tokens if recipe.tools else recipe.rollout.max_tokens,
    )
    kwargs = dict(g.algorithm.kwargs)
    if recipe.teacher is not None:
        kwargs = {"coef": recipe.teacher.coef, "reward_weight": recipe.teacher.reward_weight, **kwargs}
    return AlgorithmSpec(g.algorithm.name, kwargs, settings)


def build_algorithm(recipe: Recipe) -> tuple[AlgorithmSpec, Algorithm]:
    """The objective's spec and the driver's copy of it; a bad setting or keyword argument is an
    InputError here."""
    try:
        spec = algorithm_spec(recipe)
        return spec, spec.build()
    except (AlgorithmError, ValueError) as exc:
        raise InputError(f"grpo.algorithm: {exc}") from None


def check_grpo_inputs(recipe: Recipe) -> GRPOInputs:
    """Everything that can be wrong with the input, found before any actor starts."""
    from rl_pipeline.workers.reward import component_names, validate

    recipe.require("data", "grpo", "rollout")
    try:
        check_model_source(recipe.model.path)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    check_lora(recipe.model, recipe.trainer.lora)
    spec, algorithm = build_algorithm(recipe)
    if recipe.rewards is None:
        inputs = _check_inputs_without_rewards(recipe)
        inputs.algorithm, inputs.algorithm_spec = algorithm, spec
        return inputs
    try:
        validate(recipe.rewards)
    except InputError:
        raise  # already names rewards.functions[i]
    except (ValueError, LookupError, ImportError, TypeError) as exc:
        raise InputError(f"rewards.functions: {exc}") from None
    check_reward_model_paths(recipe.rewards)
    names = component_names(recipe.rewards)
    inputs = _load_inputs(recipe, correctness_component(recipe.rewards, names, recipe.grpo.accuracy_reward))
    inputs.algorithm, inputs.algorithm_spec = algorithm, spec
    return inputs


def _check_inputs_without_rewards(recipe: Recipe) -> GRPOInputs:
    """Pure on-policy distillation (teacher.reward_weight 0) needs no reward functions; nothing grades."""
    if recipe.teacher is None or recipe.teacher.reward_weight > 0:
        recipe.require("rewards")  # names the missing section
    if recipe.grpo.eval_every:
        raise InputError("grpo.eval_every is set but there is no rewards section to grade the evaluation with")
    inputs = _load_inputs(recipe, None)
    inputs.eval = None  # nothing to grade it with
    return inputs


def _load_inputs(recipe: Recipe, correct: str | None) -> GRPOInputs:
    """Prompt lengths, tokenizer, train / eval prompts, and the teacher's model and vocabulary."""
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
    if recipe.teacher is not None:
        check_teacher(recipe, tokenizer)
    return GRPOInputs(tokenizer, train, evals, correct)


def check_teacher(recipe: Recipe, student_tokenizer) -> None:
    """The teacher must exist and share the student's vocabulary: its logprobs are of the student's token ids."""
    teacher = recipe.teacher.model
    check_model_source(teacher.path, "teacher.model.path")
    vocab = load_tokenizer(teacher.tokenizer or teacher.path, teacher.trust_remote_code).get_vocab()
    student = student_tokenizer.get_vocab()
    if vocab != student:
        differ = sorted(set(vocab.items()) ^ set(student.items()))[:3]
        raise InputError(f"teacher.model: the tokenizer of {teacher.tokenizer or teacher.path} does not share the "
                         f"student's vocabulary ({len(vocab)} vs {len(student)} tokens; e.g. {differ}): the teacher "
                         "must score the student's token ids")
