"""data.train.system_prompt_fraction: a fixed share of chat rows gets the system turn, so one
model learns to answer with and without it (the demo's expert, which distillation prompts both ways)."""

from __future__ import annotations

import pytest

from rl_pipeline.config import DatasetConfig
from rl_pipeline.data.sft import tokenize_row


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from rl_pipeline.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def with_system_turn(tokenizer, fraction: float, rows: int = 200) -> list[bool]:
    spec = DatasetConfig(path="task.jsonl", format="prompt_completion", chat=True, system_prompt="Add digit by digit.",
                         system_prompt_fraction=fraction)
    flags = []
    for i in range(rows):
        sample = tokenize_row(tokenizer, {"prompt": f"{i}+1=", "completion": str(i + 1)}, "prompt_completion", spec, i)
        flags.append("Add digit by digit." in tokenizer.decode(sample.input_ids))
    return flags


def test_a_fraction_of_rows_gets_the_system_turn_and_always_the_same_rows(tokenizer):
    half = with_system_turn(tokenizer, 0.5)
    assert 0.4 <= sum(half) / len(half) <= 0.6
    assert half == with_system_turn(tokenizer, 0.5), "the subset must not change between runs or epochs"
    assert all(with_system_turn(tokenizer, 1.0)) and not any(with_system_turn(tokenizer, 0.0))
