"""Per-token log-probabilities and entropies of given sequences, shared by trainer and reference.

Convention: for input ids x[0..T-1], position t of the result holds log p(x[t+1] | x[..t]),
so results have length T-1 and align with `labels = input_ids[:, 1:]`.

Temperature: with `temperature=T` every number is of softmax(logits / T), the distribution the
rollout engines sample from, so pi_old, pi_theta and pi_ref all belong to the sampling policy.

Memory: the LM head turns [tokens, hidden] into [tokens, vocab] logits; at a real vocabulary
(32k-150k) that tensor in float32, plus what autograd keeps of it for the log-softmax and an
entropy, is the largest thing in a GRPO train step. `token_logprobs` never builds it whole: it
takes hidden states (or logits) PER TOKEN, only at the positions asked for (completion tokens),
projects `chunk_tokens` of them at a time, and under autograd recomputes each chunk's logits in
the backward pass (activation checkpointing) instead of keeping them. The entropy is a metric:
it is computed without gradients. Because the unit is the token, not the padded row, micro-batches
that pack several sequences into one row (restarting position ids) need nothing special.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_TOKENS = 1024
# Config fields of models whose logits are not just lm_head(hidden): those run the full forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[label] per position, computed in float32 for stability."""
    logp, _ = token_logprobs(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), temperature=temperature)
    return logp.view(labels.shape)


def token_logprobs(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: torch.nn.Module | None = None,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token (log p(label), entropy) of N tokens, `chunk_tokens` at a time; float32 [N] each.

    `hidden` is [N, H] hidden states with `head` the LM head, or [N, V] logits with head=None.
    The entropy (None unless asked) carries no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score a sampling distribution, got {temperature}")

    def score(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = (h if head is None else head(h)).float()
        if temperature != 1.0:
            logits = logits / temperature
        norm = torch.logsumexp(logits, dim=-1)
        logp = torch.gather(logits, -1, y.unsqueeze(-1)).squeeze(-1) - norm
        entropy = torch.empty(0)
        if with_entropy:
            with torch.no_grad():  # H = logsumexp(z) - sum softmax(z) * z
                entropy = norm.detach() - (torch.softmax(logits.detach(), dim=-1) * logits.detach()).sum(-1)
        return logp, entropy

    # Recompute rather than keep each chunk's logits for backward; only worth it with a head.
    recompute = head is not None and torch.is_grad_enabled()
    logps, entropies = [], []
    # At least one (maybe empty) chunk: a micro-batch with no token to score still returns a
    # result attached to the graph, so its (zero) loss can be backpropagated like any other.
    for start in range(0, max(hidden.shape[0], 1), chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], labels[start : start + chunk_tokens]
        logp, entropy = checkpoint(score, h, y, use_reentrant=False) if recompute else score(h, y)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(the transformer body, the LM head) of a causal LM, or None when its logits are more than
    lm_head(last hidden state) (soft-capping, scaling), the parts cannot be found, or the model
    is a ZeRO-3 DeepSpeed engine.

    ZeRO-3 partitions parameters and gathers them around the engine's own forward; calling the
    body and the (tied) head separately, with the head recomputed in backward, gave gradients
    that differ between 2 ranks and 1 rank x 2 accumulation steps (tests/integration/test_sft.py),
    so a ZeRO-3 engine runs its full forward and only the log-softmax is chunked."""
    if callable(getattr(model, "zero_optimization_stage", None)) and model.zero_optimization_stage() == 3:
        return None
    model = getattr(model, "module", model)
    if callable(getattr(model, "get_base_model", None)):
        # A peft model (trainer.lora): its adapters live inside the wrapped model's own layers,
        # so that model's backbone and head run them (and honour disable_adapter).
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or not isinstance(backbone, torch.nn.Module) or backbone is model:
        return None
    return backbone, head


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    with_entropy: bool = False,
    *,
    temperature: float = 1.0,
    positions: torch.Tensor | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `model` on [B, T] ids; return [B, T-1] next-token logprobs (and entropies).

    `positions` (bool [B, T-1]) picks the label positions to score (e.g. completion tokens);
    the others hold 0. Only picked tokens ever reach the LM head (see the module docstring).
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
    labels = input_ids[:, 1:]
    picked = torch.ones_like(labels, dtype=torch.bool) if positions is None else positions.bool()
    parts = backbone_and_head(model)
    if parts is None:
        features, head = model(**inputs).logits[:, :-1][picked], None
    else:
        backbone, head = parts
        features = backbone(**inputs).last_hidden_state[:, :-1][picked]
    logp, entropy = token_logprobs(features, labels[picked], head, temperature=temperature,
                                   with_entropy=with_entropy, chunk_tokens=chunk_tokens)

    def spread(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(labels.shape, dtype=values.dtype, device=values.device).masked_scatter(picked, values)

    return spread(logp), (spread(entropy) if with_entropy else None)


@torch.no_grad()
def completion_logprobs(model, pad_id: int, device, rows: list[dict], micro_batch_size: int = 16,
                        temperature: float = 1.0) -> list[list[float]]:
    """For each row (input_ids, prompt_len): `model`'s logprobs of its completion tokens at `temperature`."""
    from rl_pipeline.batch import collate_grpo

    out: list[list[float]] = []
    for i in range(0, len(rows), micro_batch_size):
        chunk = [{**r, "trained": True, "ref_logprobs": None} for r in rows[i : i + micro_batch_size]]
        batch = collate_grpo(chunk, pad_id, device)
        logp, _ = sequence_logprobs(model, batch["input_ids"], None, batch["position_ids"],
                                    temperature=temperature, positions=batch["mask"])
        for row, values in zip(chunk, logp.float().cpu()):
            start = row["prompt_len"] - 1
            out.append(values[start : start + len(row["input_ids"]) - row["prompt_len"]].tolist())
    return out
