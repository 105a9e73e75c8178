"""Fixtures for tool-use tests: the multiplication task and a tiny model that learned to call the
calculator. Import them into a test module (`from tests.tool_fixtures import tool_model`); they are
session-scoped, so every module that imports them shares one copy."""

from __future__ import annotations

from pathlib import Path

import pytest

# 120 plain-torch SFT steps (batch 32, lr 2e-3, seed 0) on 256 demonstrations: the model writes
# well-formed calculator calls in most samples at temperature 1 (copying the operands is not yet
# reliable, and the final answer is mostly wrong). ~15 s on 2 cores.
TOOL_MODEL_SFT_STEPS = 120


@pytest.fixture(scope="session")
def tool_task_dir(tmp_path_factory) -> Path:
    """train.jsonl (256) and test.jsonl (32) of 3-digit multiplications with tool-use demonstrations."""
    from rl_pipeline.data.tool_task import write_multiplication_task

    return write_multiplication_task(tmp_path_factory.mktemp("tool_task"), {"train": 256, "test": 32}, seed=0)


@pytest.fixture(scope="session")
def tool_model(tiny_model_dir, tool_task_dir, tmp_path_factory) -> Path:
    """The tiny model after TOOL_MODEL_SFT_STEPS of SFT on tool_task_dir's demonstrations."""
    import json

    from rl_pipeline.models.tiny_sft import sft_on_messages

    rows = [json.loads(line) for line in (tool_task_dir / "train.jsonl").read_text().splitlines()]
    return sft_on_messages(tiny_model_dir, tmp_path_factory.mktemp("tool_model"), [r["messages"] for r in rows],
                           steps=TOOL_MODEL_SFT_STEPS, batch_size=32)
