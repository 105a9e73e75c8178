"""The engine side of the weight sync: the worker extension that vLLM mixes into its worker class, so the pipeline can push weights.

A rollout engine starts `vllm.LLM(..., worker_extension_cls=EXTENSION)`; vLLM then adds these
methods to every worker process of the engine, and `remote.worker_rpc(llm,
RolloutWorkerExtension.rlp_load_weights, blob)` runs them there. Method names carry the `rlp_` prefix on purpose: vLLM's own
worker already defines `update_weights` (its NCCL/IPC weight-transfer engines) and a name clash
aborts engine start-up.

On CUDA the weights do not travel through Ray's object store: `rlp_init_transfer` and
`rlp_receive_weights` drive vLLM's own weight-transfer engines (`vllm.distributed.weight_transfer`:
"nccl" broadcasts from the trainer's rank 0 on another GPU, "ipc" maps the trainer's CUDA tensors
on the same GPU). The engines are built here on demand, so one `vllm.LLM` serves either layout
without a `weight_transfer_config` fixed at start-up.

This module is imported inside vLLM's worker processes: keep it free of Ray and of anything
heavy at import time. `EngineWeights` is the engine actor's side the transports call
(workers/rollout.RolloutEngine has those methods).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Callable, Protocol

# The dotted path vLLM imports in its worker processes.
EXTENSION = "rl_pipeline.weight_sync.engine_side.RolloutWorkerExtension"


def load_state_blob(blob: bytes) -> dict:
    """A state dict from `torch.save` bytes, tensors on the CPU (tensors only, no pickled code)."""
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _tied_lm_head(model):
    """The LM head when it is a module of its own sharing the embedding's weight tensor (tied
    embeddings), else None."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head is embed or getattr(head, "weight", None) is None:
        return None
    return head if head.weight.data_ptr() == embed.weight.data_ptr() else None


def _refresh_tied_lm_head(model) -> None:
    """Re-derive the LM head's kernel state after a reload when it is tied to the embedding.

    The reload refreshes the embedding layer only; a tied head shares its weight tensor but
    keeps kernel state built from the old values (on the CPU a packed oneDNN matrix made by
    `process_weights_after_loading`), so without this the logits keep using old weights.
    """
    head = _tied_lm_head(model)
    method = getattr(head, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(head)


# vLLM's layerwise reload logs "<Layer>: Failed to load weights" for every layer that a pushed
# state dict has no tensors for. Two such layers are expected on every push and are not failures:
# rotary embeddings (a cos/sin cache, no weights) and an LM head tied to the embedding (its weight
# arrives as embed_tokens; see _refresh_tied_lm_head). Any other layer's warning still shows.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
RELOAD_WARNING = "%s: Failed to load weights"


class ExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's reload warning for the layer classes in `expected`, keeps every other record."""

    def __init__(self, expected: set[str]) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == RELOAD_WARNING and args and args[0] in self.expected)


def _expected_missing_layers(model) -> set[str]:
    head = _tied_lm_head(model)
    return {"RotaryEmbedding"} | ({type(head).__name__} if head is not None else set())


@contextlib.contextmanager
def _quiet_expected_reload_warnings(model):
    log_filter = ExpectedReloadWarnings(_expected_missing_layers(model))
    logger = logging.getLogger(RELOAD_LOGGER)
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


class EngineWeights(Protocol):
    """The rollout engine actor's methods that the transports call (workers/rollout.RolloutEngine)."""

    def receive_weights(self, backend: str, update_info: dict) -> dict[str, float]:
        """Load weights sent over NCCL or CUDA IPC into every worker of the engine."""

    def worker_rpc(self, method: Callable, *args) -> list:
        """Run a `RolloutWorkerExtension` method on every worker of the engine (rank order)."""


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
        with _quiet_expected_reload_warnings(self.model_runner.model):
            self.reload_weights(weights_iterator=iter(state.items()))
        _refresh_tied_lm_head(self.model_runner.model)
        done = time.perf_counter()
        return {"tensors": float(len(state)), "decode_s": decoded - start, "reload_s": done - decoded}

    # ---- CUDA: vLLM's weight-transfer engines ---------------------------------------------
    def _rlp_transfer_engine(self, backend: str):
        engines = self.__dict__.setdefault("_rlp_transfer_engines", {})
        if backend not in engines:
            from vllm.config.weight_transfer import WeightTransferConfig
            from vllm.distributed.weight_transfer import WeightTransferEngineFactory

            engines[backend] = WeightTransferEngineFactory.create_engine(
                WeightTransferConfig(backend=backend), self.vllm_config, self.device, self.model_runner.get_model()
            )
        return engines[backend]

    def rlp_init_transfer(self, backend: str, init_info: dict) -> None:
        """Build vLLM's `backend` ("nccl" | "ipc") transfer engine; for NCCL, join the trainer's
        group (blocks until the trainer's rank 0 joins too)."""
        # A fresh transfer engine each time: after an engine replacement the NCCL group is rebuilt
        # with every engine, and the old group's communicator must not be reused.
        self.__dict__.setdefault("_rlp_transfer_engines", {}).pop(backend, None)
        engine = self._rlp_transfer_engine(backend)
        engine.init_transfer_engine(engine.parse_init_info(dict(init_info)))

    def rlp_receive_weights(self, backend: str, update_info: dict) -> dict[str, float]:
        """Receive one full set of weights and load it in place (vLLM's layerwise reload)."""
        import torch

        engine = self._rlp_transfer_engine(backend)
        start = time.perf_counter()
        with _quiet_expected_reload_warnings(self.model_runner.get_model()):
            engine.start_weight_update()
            try:
                engine.update_weights(dict(update_info))  # receives, loads, synchronizes the device
            finally:
                engine.finish_weight_update()
        torch.cuda.synchronize()
        return {"reload_s": time.perf_counter() - start, "tensors": float(len(update_info["names"]))}

    def rlp_device_uuid(self) -> str:
        """The physical GPU of this worker (same UUID as the trainer's: the same device)."""
        import torch

        return str(torch.cuda.get_device_properties(self.device.index or 0).uuid)

    def rlp_device_used_gib(self) -> float:
        """GiB in use on this worker's GPU by every process (vLLM's sleep-mode pool keeps entries
        for released memory, so its own count does not drop when the engine sleeps)."""
        import torch

        free, total = torch.cuda.mem_get_info(self.device)
        return (total - free) / 2**30
