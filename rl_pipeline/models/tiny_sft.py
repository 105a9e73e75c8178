"""Plain-torch SFT of a small model on chat rows, in one process and seconds: for tests and
benchmarks that need a model with a habit (calling a tool in the right markup) without starting
Ray and DeepSpeed. The pipeline's own SFT (`rlp sft`) is what users run; this uses the same
tokenization (`rl_pipeline.data.sft.tokenize_messages`: loss on assistant turns only)."""

from __future__ import annotations

from pathlib import Path

import torch

from rl_pipeline.data.sft import tokenize_messages


def sft_on_messages(model_dir: str | Path, out_dir: str | Path, conversations: list[list[dict]], steps: int,
                    batch_size: int = 32, lr: float = 2e-3, seed: int = 0) -> Path:
    """Train the model in `model_dir` on `conversations` for `steps` AdamW steps; save to out_dir."""
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
    for _ in range(steps):
        pick = torch.randint(0, len(samples), (batch_size,))
        x, m = ids[pick], mask[pick, 1:]
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)
        loss = -(logp * m).sum() / m.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
