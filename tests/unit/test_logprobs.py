"""rl_pipeline.models.logprobs: the chunked per-token logprob + entropy utility against the plain
formula on full logits (a tiny random Qwen2 built in-process, float32, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from rl_pipeline.models.logprobs import backbone_and_head, sequence_logprobs


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).float()


def plain(model, ids, positions=None, temperature=1.0):
    """What the trainer computed before: full [B, T, V] logits, log-softmax, entropy with autograd."""
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_values_and_gradients_equal_the_full_logits_formula(model, temperature):
    ids = torch.randint(0, 96, (3, 17), generator=torch.Generator().manual_seed(1))
    picked = torch.zeros(3, 16, dtype=torch.bool)
    picked[0, 5:12], picked[1, 0:16], picked[2, 9:10] = True, True, True  # completion tokens only
    want_logp, want_entropy = plain(model, ids, temperature=temperature)
    (want_grad,) = torch.autograd.grad((want_logp * picked).sum(), model.lm_head.weight)

    logp, entropy = sequence_logprobs(model, ids, with_entropy=True, temperature=temperature, positions=picked,
                                      chunk_tokens=5)  # 24 picked tokens: five chunks, the last partial
    torch.testing.assert_close(logp[picked], want_logp[picked], atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy[picked], want_entropy[picked].detach(), atol=1e-5, rtol=0)
    assert (logp[~picked] == 0).all() and not entropy.requires_grad
    (grad,) = torch.autograd.grad((logp * picked).sum(), model.lm_head.weight)
    torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=1e-4)


def test_packed_rows_with_restarting_positions_score_like_separate_rows(model):
    """Two sequences packed in one row (position ids restart at the second) give the logprobs of
    each sequence scored alone: the utility works per token, not per padded row."""
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 96, (1, 7), generator=gen), torch.randint(0, 96, (1, 9), generator=gen)
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(9)]).unsqueeze(0)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, packed, position_ids=positions, chunk_tokens=4)
        alone_a, _ = sequence_logprobs(model, a)
        alone_b, _ = sequence_logprobs(model, b)
    torch.testing.assert_close(logp[0, :6], alone_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logp[0, 7:], alone_b[0], atol=1e-5, rtol=0)


def test_a_micro_batch_with_nothing_to_score_still_backpropagates(model):
    """Every row masked out (e.g. all truncated under grpo.mask_truncated): the zero loss of that
    micro-batch must still go through backward on every rank, as the others' do."""
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(3))
    logp, entropy = sequence_logprobs(model, ids, with_entropy=True, positions=torch.zeros(2, 8, dtype=torch.bool))
    assert logp.shape == (2, 8) and (logp == 0).all() and (entropy == 0).all()
    (logp.sum() * 1.0).backward()
    assert model.lm_head.weight.grad is not None and not model.lm_head.weight.grad.any()
    model.zero_grad()


def test_models_whose_logits_are_not_the_plain_head_use_the_full_forward(model):
    assert backbone_and_head(model) is not None
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits = cap * tanh(z / cap)
    try:
        assert backbone_and_head(model) is None
    finally:
        model.config.final_logit_softcapping = None
