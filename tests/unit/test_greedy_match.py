"""`greedy_exact_matches` (SFT's stop-at-accuracy check): batched, left-padded greedy decoding
counts exactly the pairs whose target equals what the model generates for that prompt alone."""

from __future__ import annotations

import torch

from rl_pipeline.models.generate import greedy_exact_matches
from rl_pipeline.models.loading import load_causal_lm, load_tokenizer


def test_counts_exact_matches_across_prompt_lengths(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), "float32", "cpu").eval()
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("1+1=", "07+45=", "99+99+9=")]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    alone = []  # each prompt's own greedy continuation of 4 tokens: no padding involved
    for ids in prompts:
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=4, do_sample=False, eos_token_id=eos, pad_token_id=pad)
        alone.append(out[0, len(ids):].tolist())
    wrong = [alone[1][0] + 1] + alone[1][1:]  # first token changed: not what greedy produces
    pairs = [(prompts[0], alone[0]), (prompts[1], wrong), (prompts[2], alone[2]), (prompts[1], alone[1][:2])]
    # Pairs 0, 2 and 3 (a prefix target: only its length is generated) match; pair 1 does not.
    # batch_size 4 mixes three prompt lengths in one left-padded batch; 1 decodes each alone.
    assert greedy_exact_matches(model, pairs, pad, eos, batch_size=4, device="cpu") == 3
    assert greedy_exact_matches(model, pairs, pad, eos, batch_size=1, device="cpu") == 3
