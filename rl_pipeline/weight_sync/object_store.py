"""The CPU transport: the weights travel as one torch.save blob through Ray's object store.

Trainer side (`ObjectStoreSender.export_weights`, a TrainerWorker part): rank 0 serialises the
full Hugging Face-named state dict; every engine fetches that one object and loads it with
vLLM's `reload_weights` (`engine_side.RolloutWorkerExtension.rlp_load_weights`).
"""

from __future__ import annotations

import io
import time
from typing import Any, Protocol

import torch


class WeightExporter(Protocol):
    """The trainer group: a ref to torch.save bytes of the full, float32, CPU state dict."""

    def export_weights(self) -> Any: ...


class WeightLoader(Protocol):
    """The engine side (RolloutGroup): load the weights behind a ref into every engine."""

    device: str

    def load_weights(self, weights_ref: Any) -> dict[str, float]: ...


class ObjectStoreBackend:
    """CPU sync: one object-store copy of the weights, loaded by each engine with reload_weights."""

    name = "object_store"

    def export(self, trainer: WeightExporter):
        return trainer.export_weights()

    def load(self, engines: WeightLoader, ref) -> dict[str, float]:
        return engines.load_weights(ref)

    def push(self, trainer: WeightExporter, engines: WeightLoader) -> dict[str, float]:
        start = time.perf_counter()
        ref = self.export(trainer)
        exported = time.perf_counter()
        stats = self.load(engines, ref)
        return {
            "sync/seconds": time.perf_counter() - start,
            "sync/bytes": float(stats["sync/bytes"]),
            "sync/export_seconds": exported - start,
            "sync/load_seconds": float(stats["sync/seconds"]),
        }


class ObjectStoreSender:
    """A trainer rank's object-store sender: the rank's `full_state_dict()` as bytes (rank 0's)."""

    def __init__(self, core) -> None:
        self.core = core  # a tensors.TrainerRank

    def export_weights(self) -> bytes | None:
        """The full weights as torch.save bytes on rank 0 (all ranks call it under ZeRO-3)."""
        state = self.core.full_state_dict()
        if state is None:
            return None
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()
