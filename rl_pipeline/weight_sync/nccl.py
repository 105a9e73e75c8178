"""The other-GPU transport: an NCCL broadcast from trainer rank 0 to every engine worker.

Used when the engines run on GPUs of their own. Trainer rank 0 and every engine worker form one
NCCL group (vLLM's StatelessProcessGroup + PyNccl, its "nccl" weight-transfer engine) on the
first push; each push broadcasts the weights from rank 0 in packed buffers. Driver side
`NcclBackend`, trainer side `NcclSender` (a TrainerWorker mixin); the engine side is
`engine_side.rlp_init_transfer` / `rlp_receive_weights`.
"""

from __future__ import annotations

import logging
import time

import torch

from rl_pipeline.weight_sync.tensors import TrainerTensors

log = logging.getLogger(__name__)


class NcclBackend:
    name = "nccl"

    def __init__(self) -> None:
        self.connected = False

    def connect(self, trainer, engines) -> None:
        """One NCCL group: trainer rank 0 is rank 0, engine i's workers follow (tp ranks each)."""
        import ray

        rank0 = trainer.group.actors[0]
        address, port = ray.get(rank0.node_address.remote())
        tp = engines.cfg.tensor_parallel_size
        world = 1 + tp * len(engines.engines)
        joins = [engine.worker_rpc.remote("rlp_init_transfer", "nccl", {
            "master_address": address, "master_port": port, "rank_offset": 1 + i * tp, "world_size": world})
            for i, engine in enumerate(engines.engines)]
        joins += [actor.init_nccl_sync.remote(address, port, world) for actor in trainer.group.actors]
        ray.get(joins)  # everyone blocks in the rendezvous until all have joined
        self.meta = ray.get(rank0.weight_meta.remote())
        self.connected = True
        log.info("weight sync: NCCL group of %d ranks at %s:%d (%d tensors, %.1f MB)", world, address, port,
                 len(self.meta["names"]), self.meta["bytes"] / 1e6)

    def push(self, trainer, engines) -> dict[str, float]:
        import ray

        if not self.connected:
            self.connect(trainer, engines)
        start = time.perf_counter()
        info = {k: self.meta[k] for k in ("names", "dtype_names", "shapes")} | {"packed": True}
        receives = [engine.receive_weights.remote("nccl", info) for engine in engines.engines]
        sends = [actor.send_weights_nccl.remote() for actor in trainer.group.actors]
        received = ray.get(receives)
        sent = ray.get(sends)
        return {"sync/seconds": time.perf_counter() - start, "sync/bytes": float(self.meta["bytes"]),
                "sync/send_seconds": max(sent), "sync/engine_reload_s_max": max(r["reload_s"] for r in received)}


class NcclSender(TrainerTensors):
    def init_nccl_sync(self, master_address: str, master_port: int, world_size: int) -> None:
        """Rank 0 joins the trainer -> engines NCCL group as its rank 0 (vLLM's NCCL engine)."""
        if self.rank == 0:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            self._nccl_group = NCCLWeightTransferEngine.trainer_init(
                {"master_address": master_address, "master_port": master_port, "world_size": world_size})

    def send_weights_nccl(self) -> float:
        """Broadcast every weight from rank 0 (packed buffers); other ranks only help gather."""
        start = time.perf_counter()
        if self.rank != 0:
            for _ in self._sync_tensors():
                pass
            return 0.0
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

        NCCLWeightTransferEngine.trainer_send_weights(self._sync_tensors(), {"group": self._nccl_group, "packed": True})
        torch.cuda.synchronize()
        return time.perf_counter() - start
