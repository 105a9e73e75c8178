"""What "correct" means in `train/accuracy` and `eval/accuracy`: one reward component scoring at
least `grpo.accuracy_threshold`, and that component must grade correctness.

`grpo.accuracy_reward` names it. Otherwise it is the first reward that grades against the
reference: the built-in `math` (the answer against `ground_truth`) and `code` (the program against
its tests), or a function that takes a `ground_truth` parameter (a veRL-style one included). A
recipe with none of them reports no accuracy, only reward means: a length or format reward that
scores 1 does not make an answer right, and "accuracy 0.000" for a model that is 28.5% right
was what the first reward, whatever it measured, used to produce.
"""

from __future__ import annotations

import inspect
import logging

import rewards
from rl_pipeline.config import InputError, RewardsConfig

log = logging.getLogger(__name__)

# Built-in rewards that grade against the row's reference (answer or tests).
GRADING_REWARDS = ("math", "code")


def grades_correctness(name: str) -> bool:
    """Whether the reward `name` (registered name, module:fn or file.py:fn) compares a completion
    with the row's reference: a built-in grader, or a function with a `ground_truth` parameter."""
    if name in GRADING_REWARDS:
        return True
    try:
        target = rewards.resolve(name)
    except rewards.RewardError:
        return False  # the recipe check reports an unknown reward
    if getattr(target, "__wrapped_verl__", None) is not None:
        return True  # veRL's fn(data_source, solution_str, ground_truth, extra_info)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "ground_truth" in params or list(params)[:2] == ["data_source", "solution_str"]


def correctness_component(config: RewardsConfig, names: list[str], accuracy_reward: str | None) -> str | None:
    """The component whose score decides "correct" (see the module docstring), or None when the
    recipe has no grading reward; says which on the console either way."""
    if accuracy_reward is not None:
        if accuracy_reward not in names:
            raise InputError(f"grpo.accuracy_reward: '{accuracy_reward}' is not a reward component; components: {names}")
        return accuracy_reward
    for spec, name in zip(config.functions, names):
        if grades_correctness(spec.name):
            return name
    log.warning("accuracy is not reported: no reward in rewards.functions (%s) grades answers against the reference "
                "(math, code, or a function taking ground_truth); set grpo.accuracy_reward to the one that does",
                ", ".join(names))
    return None
