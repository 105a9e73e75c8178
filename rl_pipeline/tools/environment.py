"""The environment interface: multi-turn tasks whose next turn is not a tool's result but the
world's answer to what the policy said (a game, a user simulator, a checker that gives hints).

Shaped like the interfaces TRL and veRL users know (gym's reset/step on text)::

    class Guess(Environment):
        def reset(self, prompt, **columns):       # once per trajectory, with the dataset row
            self.target = columns["ground_truth"]
        def step(self, action):                   # after every assistant turn that ends by EOS
            if action.strip() == self.target:
                return StepResult(observation=None, reward=1.0, done=True)
            return StepResult(observation="higher" if ... else "lower", reward=0.0, done=False)

The rollout builds one instance per trajectory (``tools.environment`` names the class, as
``module:Class`` or ``file.py:Class``; ``tools.environment_kwargs`` are its constructor's
arguments), appends each observation as a user turn (its token ids masked out of the loss, like
tool results) and sums the rewards into the trajectory's ``env_reward``, which reward functions
read from the ``trajectory`` keyword.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StepResult:
    """The environment's answer to one assistant turn."""

    observation: str | None  # the next user turn; None when done
    reward: float = 0.0
    done: bool = False


class Environment:
    """Base class of a multi-turn environment; one instance serves one trajectory."""

    def reset(self, prompt: str, **columns: Any) -> None:
        """Start an episode for `prompt` (the dataset row's other columns as keywords)."""

    def step(self, action: str) -> StepResult:  # pragma: no cover - the interface
        """React to the assistant's turn (its text, the final answer of that turn)."""
        raise NotImplementedError
