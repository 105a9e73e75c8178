"""The GRPO driver gives reward functions what the rollout knows about each completion: its token
count and how it ended, so `length_penalty` budgets tokens (not characters) and sees truncation."""

from __future__ import annotations

from rl_pipeline.config import RewardsConfig
from rl_pipeline.data.prompts import Prompt
from rl_pipeline.pipelines.grpo import reward_columns
from rl_pipeline.workers.reward import score_batch
from rl_pipeline.workers.rollout import Completion


def completion(tokens: int, text: str, finish_reason: str) -> Completion:
    return Completion(list(range(tokens)), [0.0] * tokens, text, finish_reason, finish_reason == "length")


def test_length_penalty_under_grpo_counts_tokens_and_penalises_truncation():
    prompts = [Prompt(0, [1, 2], "1+1=", {"ground_truth": "2"}), Prompt(1, [1, 3], "2+2=", {"ground_truth": "4"})]
    completions = [
        [completion(6, "12", "stop"),  # 2 characters but 6 tokens: over the 4-token budget -> -1
         completion(3, "a longer answer", "stop")],  # 15 characters but 3 tokens: within it -> 0
        [completion(2, "ab", "length"),  # short, but cut off by max_tokens -> truncated_score
         completion(4, "abcd", "stop")],  # 4 tokens: past the soft limit 4 - 1 = 3 -> (3 - 4) / 1 = -1
    ]
    columns = reward_columns(prompts, completions)
    assert columns["ground_truth"] == ["2", "2", "4", "4"]  # the dataset's columns are still there
    assert columns["completion_length"] == [6, 3, 2, 4] and columns["truncated"] == [False, False, True, False]
    assert columns["finish_reason"] == ["stop", "stop", "length", "stop"]

    config = RewardsConfig(functions=[{"name": "length_penalty", "kwargs": {
        "max_length": 4, "cache_length": 1, "truncated_score": -0.5}}], num_workers=1)
    flat = [c for group in completions for c in group]
    result = score_batch(config, [p.text for p in prompts for _ in range(2)], [c.text for c in flat], columns)
    # by characters and without truncation flags it would be [0, -1, 0, -1]
    assert result.total == [-1.0, 0.0, -0.5, -1.0]
