"""Trainer -> rollout engines: push the current policy weights into every vLLM engine.

One interface, two backends, picked by device in `backend_for`:
- CPU (`ObjectStoreBackend`): the trainer exports a full Hugging Face-named state dict as
  torch.save bytes into Ray's object store (`trainer.export_weights() -> ray.ObjectRef`); every
  engine fetches that one object and loads it through the worker extension
  (`collective_rpc("rlp_load_weights")` -> vLLM's `reload_weights`).
- GPU (`NcclBackend`): a skeleton. Broadcasting over NCCL through vLLM's own weight-transfer
  engine (`vllm/distributed/weight_transfer/`), gathering ZeRO-3 shards on the way, is the
  work of issue 9 (the GPU path); it raises NotImplementedError instead of pretending.

The driver calls `WeightSync(device).push(trainer, engines)` after each update and logs the
returned `sync/seconds` and `sync/bytes`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)


class WeightExporter(Protocol):
    """The trainer side: a ref to torch.save bytes of the full, float32, CPU state dict."""

    def export_weights(self) -> Any: ...


class WeightLoader(Protocol):
    """The engine side (RolloutGroup): load the weights behind a ref into every engine."""

    device: str

    def load_weights(self, weights_ref: Any) -> dict[str, float]: ...


class ObjectStoreBackend:
    """CPU sync: one object-store copy of the weights, loaded by each engine with reload_weights."""

    name = "object_store"

    def push(self, trainer: WeightExporter, engines: WeightLoader) -> dict[str, float]:
        start = time.perf_counter()
        weights_ref = trainer.export_weights()
        exported = time.perf_counter()
        stats = engines.load_weights(weights_ref)
        return {
            "sync/seconds": time.perf_counter() - start,
            "sync/bytes": float(stats["sync/bytes"]),
            "sync/export_seconds": exported - start,
            "sync/load_seconds": float(stats["sync/seconds"]),
        }


class NcclBackend:
    """GPU sync over NCCL through vLLM's weight-transfer engine: not built yet (issue 9)."""

    name = "nccl"

    def __init__(self) -> None:
        raise NotImplementedError(
            "weight sync on CUDA (NCCL broadcast through vLLM's weight-transfer engine in "
            "vllm/distributed/weight_transfer/, gathering ZeRO-3 shards) is the work of issue 9, "
            "'The GPU path, measured'; until then only the CPU backend (object store + "
            "reload_weights) exists"
        )

    def push(self, trainer: WeightExporter, engines: WeightLoader) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError("see NcclBackend.__init__")


def backend_for(device: str):
    """The sync backend for engines on `device` ("cpu" or "cuda...")."""
    if device == "cpu":
        return ObjectStoreBackend()
    if device.startswith("cuda"):
        return NcclBackend()
    raise ValueError(f"weight sync: unknown engine device {device!r}; expected 'cpu' or 'cuda'")


class WeightSync:
    """Push the trainer's weights into every rollout engine; returns sync/seconds and sync/bytes.

    `device` None takes the engines' device on the first push (`RolloutGroup.device`).
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.backend = backend_for(device) if device is not None else None
        self.pushes = 0

    def push(self, trainer: WeightExporter, engines: WeightLoader) -> dict[str, float]:
        if self.backend is None:
            self.device = engines.device
            self.backend = backend_for(self.device)
        stats = self.backend.push(trainer, engines)
        self.pushes += 1
        log.info(
            "weight sync #%d (%s): %.1f MB in %.3fs",
            self.pushes, self.backend.name, stats["sync/bytes"] / 1e6, stats["sync/seconds"],
        )
        return stats
