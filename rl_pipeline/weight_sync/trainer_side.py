"""The trainer rank's side of every transport: one part per transport, each given the rank.

Each sending method is called on all ranks together (under ZeRO-3 every parameter is gathered on
all ranks in turn); rank 0 sends. `workers/trainer/worker.TrainerWorker` holds one `WeightSender`
and exposes these parts' methods as its own; the driver-side backends name the parts' methods
(`remote.call(actor, NcclSender.send_weights_nccl)`).
"""

from __future__ import annotations

from rl_pipeline.weight_sync.adapter import AdapterSender
from rl_pipeline.weight_sync.cuda_ipc import CudaIpcSender
from rl_pipeline.weight_sync.nccl import NcclSender
from rl_pipeline.weight_sync.object_store import ObjectStoreSender
from rl_pipeline.weight_sync.tensors import TrainerRank, TrainerTensors


class WeightSender:
    """tensors (gpu_uuid, weight_meta), object_store (export_weights), cuda_ipc (send_weights_ipc),
    nccl (init_nccl_sync, send_weights_nccl; it owns rank 0's NCCL group), adapter (export_adapter)."""

    def __init__(self, core: TrainerRank) -> None:
        self.tensors = TrainerTensors(core)
        self.object_store = ObjectStoreSender(core)
        self.cuda_ipc = CudaIpcSender(self.tensors)
        self.nccl = NcclSender(self.tensors)
        self.adapter = AdapterSender(core)
