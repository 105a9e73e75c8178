"""The other-GPU transport: an NCCL broadcast from trainer rank 0 to every engine worker.

Used when the engines run on GPUs of their own. Trainer rank 0 and every engine worker form one
NCCL group (vLLM's StatelessProcessGroup + PyNccl, its "nccl" weight-transfer engine) on the
first push; each push broadcasts the weights from rank 0 in packed buffers. Driver side
`NcclBackend`, trainer side `NcclSender` (a TrainerWorker part); the engine side is
`engine_side.rlp_init_transfer` / `rlp_receive_weights`.
"""

from __future__ import annotations

import logging
import time

import torch

from rl_pipeline.remote import call
from rl_pipeline.weight_sync.engine_side import EngineWeights, RolloutWorkerExtension
from rl_pipeline.weight_sync.tensors import TrainerRank, TrainerTensors

log = logging.getLogger(__name__)


class NcclBackend:
    name = "nccl"

    def __init__(self) -> None:
        self.connected = False

    def connect(self, trainer, engines) -> None:
        """One NCCL group: trainer rank 0 is rank 0, engine i's workers follow (tp ranks each)."""
        import ray

        rank0 = trainer.group.actors[0]
        address, port = ray.get(call(rank0, TrainerRank.node_address))  # rank 0 hosts the rendezvous
        tp = engines.cfg.tensor_parallel_size
        world = 1 + tp * len(engines.engines)
        joins = [call(engine, EngineWeights.worker_rpc, RolloutWorkerExtension.rlp_init_transfer, "nccl", {
            "master_address": address, "master_port": port, "rank_offset": 1 + i * tp, "world_size": world})
            for i, engine in enumerate(engines.engines)]
        joins += [call(actor, NcclSender.init_nccl_sync, address, port, world) for actor in trainer.group.actors]
        ray.get(joins)  # everyone blocks in the rendezvous until all have joined
        self.meta = ray.get(call(rank0, TrainerTensors.weight_meta))
        self.connected = True
        log.info("weight sync: NCCL group of %d ranks at %s:%d (%d tensors, %.1f MB)", world, address, port,
                 len(self.meta["names"]), self.meta["bytes"] / 1e6)

    def push(self, trainer, engines) -> dict[str, float]:
        import ray

        if not self.connected:
            self.connect(trainer, engines)
        start = time.perf_counter()
        info = {k: self.meta[k] for k in ("names", "dtype_names", "shapes")} | {"packed": True}
        receives = [call(engine, EngineWeights.receive_weights, "nccl", info) for engine in engines.engines]
        sends = [call(actor, NcclSender.send_weights_nccl) for actor in trainer.group.actors]
        received = ray.get(receives)
        sent = ray.get(sends)
        return {"sync/seconds": time.perf_counter() - start, "sync/bytes": float(self.meta["bytes"]),
                "sync/send_seconds": max(sent), "sync/engine_reload_s_max": max(r["reload_s"] for r in received)}


class NcclSender:
    """A trainer rank's NCCL sender: owns rank 0's NCCL group with the engines, reads the rank's tensors."""

    def __init__(self, tensors: TrainerTensors) -> None:
        self.tensors = tensors
        self._nccl_group = None

    def init_nccl_sync(self, master_address: str, master_port: int, world_size: int) -> None:
        """Rank 0 joins the trainer -> engines NCCL group as its rank 0 (vLLM's NCCL engine)."""
        if self.tensors.core.rank == 0:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            self._nccl_group = NCCLWeightTransferEngine.trainer_init(
                {"master_address": master_address, "master_port": master_port, "world_size": world_size})

    def send_weights_nccl(self) -> float:
        """Broadcast every weight from rank 0 (packed buffers); other ranks only help gather."""
        start = time.perf_counter()
        if self.tensors.core.rank != 0:
            for _ in self.tensors.sync_tensors():
                pass
            return 0.0
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

        NCCLWeightTransferEngine.trainer_send_weights(self.tensors.sync_tensors(),
                                                      {"group": self._nccl_group, "packed": True})
        torch.cuda.synchronize()
        return time.perf_counter() - start
