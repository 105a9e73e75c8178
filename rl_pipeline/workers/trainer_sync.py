"""The trainer rank's side of the CUDA weight sync (rl_pipeline.weight_sync drives it).

A mixin of `TrainerWorker`: it reads the rank's DeepSpeed engine (`self.engine`), rank
(`self.rank`) and spec (`self.spec`), and every rank calls these methods together, since under
ZeRO-3 each parameter is gathered on all ranks in turn. Rank 0 sends: CUDA IPC handles to
engines on the same GPUs, or an NCCL broadcast to engines on other GPUs (vLLM's weight-transfer
engines).
"""

from __future__ import annotations

import torch


class CudaWeightSender:
    """Weight export for vLLM's `ipc` and `nccl` weight-transfer engines."""

    def gpu_uuid(self) -> str:
        """The physical GPU of this rank: an engine reporting the same UUID shares the device."""
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)

    def _sync_tensors(self):
        """(Hugging Face name, full tensor on this GPU) per parameter, tied duplicates left out
        (named_parameters yields a shared tensor once). Under ZeRO-3 each parameter is gathered
        on every rank in turn, so all ranks must iterate together."""
        import contextlib

        import deepspeed

        zero3 = self.spec.trainer.zero_stage == 3
        for name, param in self.engine.module.named_parameters():
            gather = deepspeed.zero.GatheredParameters([param]) if zero3 else contextlib.nullcontext()
            with gather:
                yield name, param.detach()

    def weight_meta(self) -> dict:
        """Names, dtypes and shapes of what `_sync_tensors` sends (no gather needed)."""
        names, dtypes, shapes = [], [], []
        for name, param in self.engine.module.named_parameters():
            names.append(name)
            dtypes.append(str(param.dtype).removeprefix("torch."))
            shapes.append(list(getattr(param, "ds_shape", param.shape)))
        return {"names": names, "dtype_names": dtypes, "shapes": shapes,
                "bytes": sum(torch.Size(s).numel() * torch.empty(0, dtype=getattr(torch, d)).element_size()
                             for s, d in zip(shapes, dtypes))}

    def init_nccl_sync(self, master_address: str, master_port: int, world_size: int) -> None:
        """Rank 0 joins the trainer -> engines NCCL group as its rank 0 (vLLM's NCCL engine)."""
        if self.rank == 0:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

            self._nccl_group = NCCLWeightTransferEngine.trainer_init(
                {"master_address": master_address, "master_port": master_port, "world_size": world_size})

    def send_weights_nccl(self) -> float:
        """Broadcast every weight from rank 0 (packed buffers); other ranks only help gather."""
        import time

        start = time.perf_counter()
        if self.rank != 0:
            for _ in self._sync_tensors():
                pass
            return 0.0
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

        NCCLWeightTransferEngine.trainer_send_weights(self._sync_tensors(), {"group": self._nccl_group, "packed": True})
        torch.cuda.synchronize()
        return time.perf_counter() - start

    def send_weights_ipc(self, engines: list) -> float:
        """Hand CUDA IPC handles of the weights to the engines on this GPU; rank 0 sends them to
        every engine (vLLM's IPC engine merges the handles of all ranks by GPU UUID). Zero-copy
        under ZeRO 0-2 (the engine reads the trainer's bf16 parameters); packed under ZeRO-3."""
        import time
        from dataclasses import asdict

        import ray
        from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine

        def send(update_info) -> None:
            info = asdict(update_info)
            ray.get([engine.receive_weights.remote("ipc", info) for engine in engines])

        start = time.perf_counter()
        IPCWeightTransferEngine.trainer_send_weights(
            self._sync_tensors(), {"send_mode": send, "packed": self.spec.trainer.zero_stage == 3})
        torch.cuda.synchronize()
        return time.perf_counter() - start
