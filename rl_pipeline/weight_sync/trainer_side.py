"""The trainer rank's side of every transport, as one mixin of `TrainerWorker`.

Each method is called on all ranks together (under ZeRO-3 every parameter is gathered on all
ranks in turn); rank 0 sends.
"""

from __future__ import annotations

from rl_pipeline.weight_sync.adapter import AdapterSender
from rl_pipeline.weight_sync.cuda_ipc import CudaIpcSender
from rl_pipeline.weight_sync.nccl import NcclSender
from rl_pipeline.weight_sync.object_store import ObjectStoreSender


class WeightSender(ObjectStoreSender, CudaIpcSender, NcclSender, AdapterSender):
    """export_weights (object store), send_weights_ipc (CUDA IPC), init_nccl_sync /
    send_weights_nccl (NCCL), export_adapter (LoRA adapters only), plus gpu_uuid and weight_meta
    for the driver."""
