"""Cut a GRPO batch's rows into per-rank micro-batches by a token budget instead of a row count.

With a fixed `trainer.micro_batch_size` every micro-batch is padded to its longest row, so a batch
of completions whose lengths spread from a few tokens to `rollout.max_tokens` spends much of the
forward and backward pass on padding. `token_budget_shards` sorts the rows by length, deals them
round-robin to the ranks (every rank gets the same mix of long and short rows), and cuts each
rank's rows, longest first, into micro-batches whose padded size (rows x longest row) stays within
`trainer.max_tokens_per_micro_batch`, at the cut points that minimise padded tokens plus a fixed
cost per forward pass. Neighbours in length share a micro-batch, so little padding is left, and
the first micro-batch holds the longest rows: a budget that does not fit in memory fails on
the first forward pass, not halfway through a step. A row longer than the budget gets a
micro-batch of its own.

Every rank runs the same number of micro-batches (ZeRO-3 gathers parameters in each forward pass,
and all ranks must take part): ranks with fewer are evened out by splitting their largest ones.

The loss does not change: GRPO losses are normalised by global token and sequence counts
(algorithms/grpo.py), so how rows are grouped into micro-batches only changes float rounding.
"""

from __future__ import annotations


def row_length(row: dict) -> int:
    return len(row["input_ids"])


def token_budget_shards(rows: list[dict], ranks: int, max_tokens: int) -> list[list[list[dict]]]:
    """shards[rank][micro_batch] = rows, each micro-batch's rows x longest row <= max_tokens
    (unless a single row is longer), the same number of micro-batches on every rank."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    by_length = sorted(rows, key=row_length, reverse=True)
    per_rank = [by_length[r::ranks] for r in range(ranks)]
    shards = [_cut(rank_rows, max_tokens) for rank_rows in per_rank]
    most = max(len(s) for s in shards)
    for micro_batches in shards:
        while len(micro_batches) < most and any(len(mb) > 1 for mb in micro_batches):
            _split_largest(micro_batches)
    return shards


# What one more forward/backward pass costs beyond its tokens, in padded-token equivalents. On one
# H200 (BENCHMARKS.md table 6) a pass cost ~0.1 s beyond its tokens (Python in the HF model and
# DeepSpeed's hooks), ~4k tokens of trainer throughput: at 512 the cut made 8 small passes with 9%
# padding and trained 1.7x slower than 3 large ones with 24% padding. On the CPU the per-pass cost
# is small against the tokens' own, so the same constant leans to fewer, fuller passes there too.
PASS_COST_TOKENS = 8192


def _cut(rows: list[dict], max_tokens: int) -> list[list[dict]]:
    """Rows sorted longest first -> consecutive micro-batches within the padded-token budget,
    cut where the total of padded tokens + PASS_COST_TOKENS per micro-batch is least.

    A micro-batch of rows i..j-1 is padded to row i's length (the longest). Dynamic programming
    over the cut points (O(n x rows per micro-batch)): best[j] = min over i of best[i] +
    (j - i) x len(i) + PASS_COST_TOKENS. Unlike a greedy fill it may close a micro-batch before
    the budget is full when the rows that follow are much shorter."""
    n = len(rows)
    lengths = [row_length(r) for r in rows]
    best = [0.0] + [float("inf")] * n
    cut_at = [0] * (n + 1)
    for i in range(n):  # a micro-batch starting at row i, padded to lengths[i]
        if best[i] == float("inf"):
            continue
        j = i + 1
        while j <= n and ((j - i) * lengths[i] <= max_tokens or j == i + 1):
            cost = best[i] + (j - i) * lengths[i] + PASS_COST_TOKENS
            if cost < best[j]:
                best[j], cut_at[j] = cost, i
            j += 1
    bounds, j = [], n
    while j > 0:
        bounds.append((cut_at[j], j))
        j = cut_at[j]
    return [rows[i:j] for i, j in reversed(bounds)]


def _split_largest(micro_batches: list[list[dict]]) -> None:
    """Split the micro-batch with the most padded tokens in two halves, in place."""
    index = max(range(len(micro_batches)),
                key=lambda i: (len(micro_batches[i]) > 1, len(micro_batches[i]) * row_length(micro_batches[i][0])))
    rows = micro_batches[index]
    half = len(rows) // 2
    micro_batches[index : index + 1] = [rows[:half], rows[half:]]


def padded_tokens(micro_batches: list[list[dict]]) -> tuple[int, int]:
    """(tokens the forward passes compute, padded to each micro-batch's longest row; real tokens)."""
    padded = sum(len(mb) * max(row_length(r) for r in mb) for mb in micro_batches if mb)
    real = sum(row_length(r) for mb in micro_batches for r in mb)
    return padded, real
