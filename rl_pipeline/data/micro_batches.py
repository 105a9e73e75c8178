"""Cut a GRPO batch's rows into per-rank micro-batches by a token budget instead of a row count.

With a fixed `trainer.micro_batch_size` every micro-batch is padded to its longest row, so a batch
of completions whose lengths spread from a few tokens to `rollout.max_tokens` spends much of the
forward and backward pass on padding. `token_budget_shards` sorts the rows by length, deals them
round-robin to the ranks (every rank gets the same mix of long and short rows), and cuts each
rank's rows, longest first, into micro-batches whose padded size (rows x longest row) stays within
`trainer.max_tokens_per_micro_batch`. Neighbours in length share a micro-batch, so little padding
is left, and the first micro-batch is the largest: a budget that does not fit in memory fails on
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


def _cut(rows: list[dict], max_tokens: int) -> list[list[dict]]:
    """Rows sorted longest first -> consecutive micro-batches within the padded-token budget."""
    micro_batches: list[list[dict]] = []
    for row in rows:
        current = micro_batches[-1] if micro_batches else None
        # Rows come longest first, so the micro-batch's first row sets its padded width.
        if current and (len(current) + 1) * row_length(current[0]) <= max_tokens:
            current.append(row)
        else:
            micro_batches.append([row])
    return micro_batches


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
