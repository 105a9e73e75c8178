"""The worker extension that vLLM mixes into its worker class, so the pipeline can push weights.

A rollout engine starts `vllm.LLM(..., worker_extension_cls=EXTENSION)`; vLLM then adds these
methods to every worker process of the engine, and `llm.collective_rpc("rlp_load_weights",
args=(blob,))` runs them there. Method names carry the `rlp_` prefix on purpose: vLLM's own
worker already defines `update_weights` (its NCCL/IPC weight-transfer engines) and a name clash
aborts engine start-up.

This module is imported inside vLLM's worker processes: keep it free of Ray and of anything
heavy at import time.
"""

from __future__ import annotations

import io
import time

# The dotted path vLLM imports in its worker processes.
EXTENSION = "rl_pipeline.workers.vllm_extension.RolloutWorkerExtension"


def load_state_blob(blob: bytes) -> dict:
    """A state dict from `torch.save` bytes, tensors on the CPU (tensors only, no pickled code)."""
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _refresh_tied_lm_head(model) -> None:
    """Re-derive the LM head's kernel state after a reload when it is tied to the embedding.

    The reload refreshes the embedding layer only; a tied head shares its weight tensor but
    keeps kernel state built from the old values (on the CPU a packed oneDNN matrix made by
    `process_weights_after_loading`), so without this the logits keep using old weights.
    """
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    method = getattr(head, "quant_method", None)
    if head is None or embed is None or method is None or head is embed:
        return
    if getattr(head, "weight", None) is not None and head.weight.data_ptr() == embed.weight.data_ptr():
        method.process_weights_after_loading(head)


class RolloutWorkerExtension:
    """Mixed into vLLM's worker (`self` is the worker): load new policy weights in place."""

    def rlp_load_weights(self, blob: bytes) -> dict[str, float]:
        """Load a full Hugging Face-named state dict (torch.save bytes) into the running model.

        `reload_weights` goes through the model's own `load_weights` (name mapping, fused
        q/k/v and gate/up projections, tied embeddings, tensor-parallel sharding) and then
        re-runs the post-load processing, so it also works after the CPU backend repacked the
        weights into its kernel layout, where a plain `model.load_weights` fails.
        """
        start = time.perf_counter()
        state = load_state_blob(blob)
        decoded = time.perf_counter()
        self.reload_weights(weights_iterator=iter(state.items()))
        _refresh_tied_lm_head(self.model_runner.model)
        done = time.perf_counter()
        return {"tensors": float(len(state)), "decode_s": decoded - start, "reload_s": done - decoded}

    def rlp_ping(self) -> int:
        """The worker's rank: a cheap check that the extension is installed."""
        return int(getattr(self, "rank", 0))
