"""What the GPU transports send from a trainer rank: its parameters, one full tensor at a time.

`TrainerTensors` is the part of a trainer rank that the GPU senders (cuda_ipc, nccl) read from:
it reads the rank's DeepSpeed engine and spec (a `TrainerRank`, workers/trainer/engine.TrainerEngine).
Under ZeRO-3 each parameter is gathered on every rank in turn, so all ranks must iterate together.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class TrainerRank(Protocol):
    """What the trainer-side senders read of a rank (workers/trainer/engine.TrainerEngine has it)."""

    rank: int
    spec: Any  # workers/trainer/engine.TrainerSpec
    engine: Any  # the rank's DeepSpeed engine

    def full_state_dict(self) -> dict | None:
        """The unsharded weights on rank 0, None on the others."""

    def node_address(self) -> tuple[str, int]:
        """(ip, free port) of the rank's node."""


class TrainerTensors:
    """One rank's parameters as the transports send them; no state of its own."""

    def __init__(self, core: TrainerRank) -> None:
        self.core = core

    def gpu_uuid(self) -> str:
        """The physical GPU of this rank: an engine reporting the same UUID shares the device."""
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)

    def sync_tensors(self):
        """(Hugging Face name, full tensor on this GPU) per parameter, tied duplicates left out
        (named_parameters yields a shared tensor once)."""
        import contextlib

        import deepspeed

        if self.core.spec.trainer.lora is not None:  # the base with the adapters merged (trainer.lora.push: merged)
            yield from self._lora_weights(merge=True)
            return
        zero3 = self.core.spec.trainer.zero_stage == 3
        for name, param in self.core.engine.module.named_parameters():
            gather = deepspeed.zero.GatheredParameters([param]) if zero3 else contextlib.nullcontext()
            with gather:
                yield name, param.detach()

    def _lora_weights(self, merge: bool):
        from rl_pipeline.models.lora import merged_weights

        return merged_weights(self.core.engine.module, merge=merge)

    def weight_meta(self) -> dict:
        """Names, dtypes and shapes of what `sync_tensors` sends (no gather needed)."""
        names, dtypes, shapes = [], [], []
        if self.core.spec.trainer.lora is not None:  # names and shapes of the merge, without computing it
            named = self._lora_weights(merge=False)
        else:
            named = self.core.engine.module.named_parameters()
        for name, param in named:
            names.append(name)
            dtypes.append(str(param.dtype).removeprefix("torch."))
            shapes.append(list(getattr(param, "ds_shape", param.shape)))
        return {"names": names, "dtype_names": dtypes, "shapes": shapes,
                "bytes": sum(torch.Size(s).numel() * torch.empty(0, dtype=getattr(torch, d)).element_size()
                             for s, d in zip(shapes, dtypes))}
