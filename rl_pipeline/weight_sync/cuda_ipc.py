"""The same-GPU transport: CUDA IPC handles of the trainer's parameters (vLLM's "ipc" engine).

Used when trainer rank 0 and the engines share a GPU (`cluster.colocate`). Each rank hands IPC
handles of its bf16 parameters to the engines; the engine maps the trainer's memory and copies
from it (zero-copy on the trainer side). Driver side `CudaIpcBackend`, trainer side
`CudaIpcSender` (a TrainerWorker part); the engine side is `engine_side.rlp_receive_weights`.
"""

from __future__ import annotations

import time

import torch

from rl_pipeline.remote import call
from rl_pipeline.weight_sync.engine_side import EngineWeights
from rl_pipeline.weight_sync.tensors import TrainerTensors


class CudaIpcBackend:
    name = "cuda_ipc"

    def push(self, trainer, engines) -> dict[str, float]:
        start = time.perf_counter()
        handles = list(engines.engines)
        seconds = trainer.group.call_all(CudaIpcSender.send_weights_ipc, handles)
        return {"sync/seconds": time.perf_counter() - start, "sync/bytes": float(weight_bytes(trainer)),
                "sync/send_seconds": max(seconds)}


def weight_bytes(trainer) -> int:
    """Bytes of one full push (asked of rank 0 once, then cached on the trainer group)."""
    import ray

    cached = getattr(trainer, "_rlp_weight_bytes", None)
    if cached is None:
        cached = ray.get(call(trainer.group.actors[0], TrainerTensors.weight_meta))["bytes"]
        trainer._rlp_weight_bytes = cached
    return cached


class CudaIpcSender:
    """A trainer rank's CUDA IPC sender, reading the rank's tensors; no state of its own."""

    def __init__(self, tensors: TrainerTensors) -> None:
        self.tensors = tensors

    def send_weights_ipc(self, engines: list) -> float:
        """Hand CUDA IPC handles of the weights to the engines on this GPU; rank 0 sends them to
        every engine (vLLM's IPC engine merges the handles of all ranks by GPU UUID). Zero-copy
        under ZeRO 0-2 (the engine reads the trainer's bf16 parameters); packed under ZeRO-3."""
        from dataclasses import asdict

        import ray
        from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine

        def send(update_info) -> None:
            info = asdict(update_info)
            ray.get([call(engine, EngineWeights.receive_weights, "ipc", info) for engine in engines])

        start = time.perf_counter()
        IPCWeightTransferEngine.trainer_send_weights(
            self.tensors.sync_tensors(), {"send_mode": send, "packed": self.tensors.core.spec.trainer.zero_stage == 3})
        torch.cuda.synchronize()
        return time.perf_counter() - start
