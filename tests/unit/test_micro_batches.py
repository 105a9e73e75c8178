"""Token-budget micro-batches of a GRPO batch (rl_pipeline/data/micro_batches.py)."""

from __future__ import annotations

import random

import pytest
import torch

from rl_pipeline.algorithms.grpo import GRPOLossConfig, LossNormaliser, grpo_policy_loss
from rl_pipeline.batch import collate_grpo
from rl_pipeline.data.micro_batches import padded_tokens, token_budget_shards
from rl_pipeline.models.logprobs import sequence_logprobs


def make_rows(lengths: list[int], prompt_len: int = 4, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i, completion in enumerate(lengths):
        ids = [rng.randrange(20, 100) for _ in range(prompt_len + completion)]
        rows.append({"input_ids": ids, "prompt_len": prompt_len, "advantage": [rng.uniform(-1, 1)] * completion,
                     "trained": True,
                     "sampler_logprobs": [-1.0] * completion, "ref_logprobs": None, "id": i})
    return rows


def test_every_row_lands_once_within_budget_and_ranks_run_equal_counts():
    rows = make_rows([3, 60, 5, 100, 7, 9, 2, 80, 30, 31, 4, 6])  # 12 rows, lengths 6..104 with the prompt
    shards = token_budget_shards(rows, ranks=2, max_tokens=128)
    ids = sorted(r["id"] for rank in shards for mb in rank for r in mb)
    assert ids == list(range(12))
    assert len(shards[0]) == len(shards[1])  # ZeRO-3: every rank takes part in every forward pass
    for rank in shards:
        for mb in rank:
            # rows x longest row within budget, unless one row alone is longer (104 <= 128 here)
            assert len(mb) * max(len(r["input_ids"]) for r in mb) <= 128


def test_a_row_longer_than_the_budget_gets_a_micro_batch_of_its_own():
    rows = make_rows([300, 2, 3])
    (rank,) = token_budget_shards(rows, ranks=1, max_tokens=64)
    assert [len(mb) for mb in rank] == [1, 2] and len(rank[0][0]["input_ids"]) == 304


def test_sorting_by_length_removes_most_padding():
    # Lengths spread from 1 to 256 tokens, as sampled completions do.
    rng = random.Random(1)
    rows = make_rows([rng.randrange(1, 257) for _ in range(256)], prompt_len=20)
    fixed = [rows[i : i + 32] for i in range(0, 256, 32)]  # micro_batch_size 32, arrival order
    (budget,) = token_budget_shards(rows, ranks=1, max_tokens=32 * 276)
    fixed_padded, real = padded_tokens(fixed)
    budget_padded, real_again = padded_tokens(budget)
    assert real == real_again
    # Random order pads every micro-batch of 32 to ~its longest row (~1.8x the real tokens here).
    # Sorted, a micro-batch of width W holds ~8832/W rows spanning ~8832/W lengths, so padding
    # is small for long rows and grows only among the short ones (~1.2x overall here).
    assert fixed_padded > 1.5 * real and budget_padded < 1.25 * real


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_gradient_is_the_same_whatever_the_micro_batches(tiny_model_dir, aggregation):
    """The update of one GRPO batch through fixed-size micro-batches equals the update through
    token-budget micro-batches: losses are normalised by global counts, not per micro-batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = make_rows([1, 9, 3, 17, 5, 2, 12, 7], seed=3)
    norm = LossNormaliser(tokens=float(sum(len(r["sampler_logprobs"]) for r in rows)), sequences=float(len(rows)))
    config = GRPOLossConfig(aggregation=aggregation)

    def gradient(micro_batches: list[list[dict]]) -> torch.Tensor:
        model.zero_grad()
        for mb in micro_batches:
            batch = collate_grpo(mb, pad_id=0, device="cpu")
            logp, _ = sequence_logprobs(model, batch["input_ids"], None, batch["position_ids"])
            # pi_old = a fixed shift of pi_theta, so the ratio is not 1 and the clip is exercised
            loss, _ = grpo_policy_loss(logp, logp.detach() - 0.1, batch["advantages"], batch["mask"],
                                       normaliser=norm, config=config)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    fixed = gradient([rows[i : i + 3] for i in range(0, len(rows), 3)])
    (budget,) = token_budget_shards(rows, ranks=1, max_tokens=40)
    assert len(budget) > 2  # really cut in several micro-batches
    torch.testing.assert_close(gradient(budget), fixed, rtol=1e-4, atol=1e-6)


def test_grpo_mini_batches_cut_by_tokens_keep_each_mini_batch_and_its_normaliser():
    from rl_pipeline.batch import GRPOBatch, GRPOSample

    rng = random.Random(5)
    samples = [GRPOSample(prompt_ids=[1, 2, 3], completion_ids=[7] * rng.randrange(1, 40), sampler_logprobs=[],
                          advantage=1.0, reward=1.0, group=i // 4, truncated=False) for i in range(16)]
    for s in samples:
        s.sampler_logprobs = [-1.0] * len(s.completion_ids)
    batch = GRPOBatch(samples, groups_total=4, groups_dropped=0)
    by_rows = batch.mini_batches(ranks=2, count=2, micro_batch_size=3)
    by_tokens = batch.mini_batches(ranks=2, count=2, micro_batch_size=3, max_tokens_per_micro_batch=64)
    for (rows_shards, rows_norm), (token_shards, token_norm) in zip(by_rows, by_tokens):
        # The same samples make up mini-batch k either way, so its normaliser is the same.
        assert (token_norm.tokens, token_norm.sequences) == (rows_norm.tokens, rows_norm.sequences)
        same = lambda shards: sorted(tuple(r["input_ids"]) for rank in shards for mb in rank for r in mb)  # noqa: E731
        assert same(token_shards) == same(rows_shards)
        assert len(token_shards[0]) == len(token_shards[1])
        assert all(len(mb) * max(len(r["input_ids"]) for r in mb) <= 64 or len(mb) == 1
                   for rank in token_shards for mb in rank)


def test_the_cut_closes_a_micro_batch_early_when_the_padding_saved_beats_a_pass():
    from rl_pipeline.data.micro_batches import PASS_COST_TOKENS

    # One row of 1000 tokens and 99 rows of 10; all 100 fit one micro-batch of 100 x 1000 tokens.
    # Together: 100,000 padded tokens + one pass. Split: 1,000 + 990 tokens + two passes
    # (1,990 + 2 x 8,192 = 18,374 < 108,192), so the cut must split them.
    rows = [{"input_ids": [0] * 1000}] + [{"input_ids": [0] * 10} for _ in range(99)]
    (rank,) = token_budget_shards(rows, ranks=1, max_tokens=100_000)
    assert PASS_COST_TOKENS == 8192 and [len(mb) for mb in rank] == [1, 99]
    # Rows of equal length are never split needlessly: 40 x 100 tokens fit one pass of 4,000.
    (same,) = token_budget_shards([{"input_ids": [0] * 100} for _ in range(40)], ranks=1, max_tokens=4000)
    assert [len(mb) for mb in same] == [40]
