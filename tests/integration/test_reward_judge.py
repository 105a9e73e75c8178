"""The `judge` reward: a vLLM engine in a Ray actor answers a rubric, the reply is parsed to a score.

A random tiny model would answer noise, so the fixture first teaches a tiny local model (built
with rl_pipeline.models.tiny) to grade: "Score: 9" when the graded answer starts with "yes",
"Score: 2" when it starts with "no". Its transformers greedy replies are the reference; the
judge served by vLLM must give the same replies' scores (9/10, 2/10).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rewards.model_based import parse_judge_score
from rl_pipeline.config import RewardsConfig
from rl_pipeline.workers.reward import RewardService

RUBRIC = "Grade: {completion}"
COMPLETIONS = ["yes abc", "no abc", "yes hij", "no j"]


def _chat_prompt(tokenizer, completion: str) -> str:
    messages = [{"role": "user", "content": RUBRIC.format(completion=completion)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _greedy_replies(model, tokenizer, completions: list[str]) -> list[str]:
    replies = []
    for completion in completions:
        enc = tokenizer(_chat_prompt(tokenizer, completion), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        replies.append(tokenizer.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
    return replies


def _training_batch(tokenizer, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    for _ in range(size):
        good = rng.random() < 0.5
        word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 6)))
        prompt = tokenizer(_chat_prompt(tokenizer, ("yes " if good else "no ") + word), add_special_tokens=False)
        reply = tokenizer(("Score: 9" if good else "Score: 2") + tokenizer.eos_token, add_special_tokens=False)
        ids = prompt["input_ids"] + reply["input_ids"]
        rows.append((ids, [-100] * len(prompt["input_ids"]) + reply["input_ids"]))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    return ids, labels


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory) -> tuple[Path, list[str]]:
    """Train until transformers' greedy replies grade the probes right (checked every 20 steps)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(layers=2, hidden=64, heads=2, kv_heads=2, intermediate=128)
    path = build_tiny_model(tmp_path_factory.mktemp("judge") / "model", spec)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng, want = random.Random(0), ["Score: 9", "Score: 2", "Score: 9", "Score: 2"]
    for step in range(1, 301):
        ids, labels = _training_batch(tokenizer, rng, 16)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            model.eval()
            replies = _greedy_replies(model, tokenizer, COMPLETIONS)
            model.train()
            if replies == want:
                break
    assert replies == want, f"the tiny judge did not learn its rubric in {step} steps: {replies}"
    model.save_pretrained(path)
    return path, replies


def test_judge_actor_scores_like_transformers_greedy(ray_local, judge_model):
    path, reference_replies = judge_model
    cfg = RewardsConfig(functions=[{"name": "judge", "kwargs": {
        "model": str(path), "rubric": RUBRIC, "max_score": 10, "max_tokens": 8}}], timeout_s=30.0)
    service = RewardService.start(cfg)  # starts vLLM inside the judge's own actor
    try:
        result = service.score(["q"] * 4, COMPLETIONS)
    finally:
        service.shutdown()
    expected = [parse_judge_score(reply) / 10 for reply in reference_replies]
    assert expected == [0.9, 0.2, 0.9, 0.2]
    assert result.components["judge"] == pytest.approx(expected)
    assert result.metrics["reward/judge/mean"] == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("reply", "score"),
    [("Score: 7", 7.0), ("score=8.5 because", 8.5), ("I give it 6/10.", 6.0), ("3 then 4", 4.0),
     ("Score: 2. Earlier draft said Score: 5", 5.0), ("no number", None)],
)
def test_parse_judge_score(reply, score):
    assert parse_judge_score(reply) == score
