"""Greedy exact-match checks inside a trainer: does the model continue each prompt with exactly
its target tokens? Used by SFT's `stop_at_accuracy`, so no rollout engine is needed.

Prompts are left-padded (with an attention mask) into batches so one `generate` call serves
prompts of different lengths; prompts are sorted by length first to keep padding small.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_exact_matches(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, eos_id: int,
                         batch_size: int, device) -> int:
    """How many (prompt ids, target ids) pairs `model` continues greedily with exactly the target
    (a target ending in EOS must therefore also stop there)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    matches = 0
    for start in range(0, len(order), batch_size):
        chunk = [pairs[i] for i in order[start : start + batch_size]]
        width = max(len(prompt) for prompt, _ in chunk)
        ids = [[pad_id] * (width - len(prompt)) + list(prompt) for prompt, _ in chunk]
        attention = [[0] * (width - len(prompt)) + [1] * len(prompt) for prompt, _ in chunk]
        out = model.generate(
            input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(attention, device=device),
            max_new_tokens=max(len(target) for _, target in chunk), do_sample=False,
            eos_token_id=eos_id, pad_token_id=pad_id,
        )
        for row, (_, target) in zip(out[:, width:].tolist(), chunk):
            matches += row[: len(target)] == list(target)
    return matches
