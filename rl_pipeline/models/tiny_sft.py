"""Plain-torch SFT of a small model on chat rows, in one process and seconds: for tests and
benchmarks that need a model with a habit (calling a tool in the right markup) without starting
Ray and DeepSpeed. The pipeline's own SFT (`rlp sft`) is what users run; this uses the same
tokenization (`rl_pipeline.data.sft.tokenize_messages`: loss on assistant turns only)."""

from __future__ import annotations

from pathlib import Path

import torch

from rl_pipeline.data.sft import tokenize_messages


def sft_on_messages(model_dir: str | Path, out_dir: str | Path, conversations: list[list[dict]], steps: int,
                    batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                    stop_at: tuple[list[list[dict]], float] | None = None, check_every: int = 25) -> Path:
    """Train the model in `model_dir` on `conversations` for `steps` AdamW steps; save to out_dir.

    `stop_at=(held_out, accuracy)` ends training at the first check (every `check_every` steps)
    where `final_answer_accuracy` on `held_out` reaches `accuracy`: learning to copy is a sharp
    phase transition, so a fixed step count lands on either side of it from seed to seed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    samples = [tokenize_messages(tokenizer, messages, row) for row, messages in enumerate(conversations)]
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(samples), width))
    for i, s in enumerate(samples):
        ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        mask[i, : len(s.loss_mask)] = torch.tensor(s.loss_mask, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98))
    model.train()
    for step in range(steps):
        if stop_at and step and step % check_every == 0 and final_answer_accuracy(model, tokenizer, stop_at[0]) >= stop_at[1]:
            break
        pick = torch.randint(0, len(samples), (batch_size,))
        x, m = ids[pick], mask[pick, 1:]
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)
        loss = -(logp * m).sum() / m.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = Path(out_dir)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@torch.no_grad()
def final_answer_accuracy(model, tokenizer, conversations: list[list[dict]]) -> float:
    """Share of conversations whose last assistant turn is argmax-correct token by token, given
    the true conversation before it (teacher forcing: one forward pass, no generation)."""
    was_training = model.training
    model.eval()
    hits = 0
    for row, messages in enumerate(conversations):
        sample = tokenize_messages(tokenizer, messages, row)
        last = max(i for i, m in enumerate(sample.loss_mask) if m)
        first = last
        while first > 0 and sample.loss_mask[first - 1]:
            first -= 1
        ids = torch.tensor([sample.input_ids])
        predicted = model(input_ids=ids).logits[0, first - 1:last].argmax(-1)
        hits += bool((predicted == ids[0, first:last + 1]).all())
    model.train(was_training)
    return hits / max(len(conversations), 1)
