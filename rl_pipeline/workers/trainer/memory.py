"""A trainer rank's GPU memory, for the hybrid engine: move its states to CPU memory and back.

`TrainerMemory` is a TrainerWorker part driven by policy/handover.py. While the engines
generate, the rank's DeepSpeed states live in (pinned) CPU memory; while it trains they are on the
GPU. DeepSpeed's `offload_states` / `reload_states` (its ZeRO-2 and -3 optimizers) move them: the
fp32 master weights (`hp_params`), the Adam moments (`optim_states`), the gradient buffers
(`lp_grads`, `contiguous_grad_buffer`) and the bf16 working weights (`lp_params`). The bf16 weights
go last, after the weight push: CUDA IPC hands the engines pointers to exactly those tensors.

On CPU ranks there is nothing to move: every call is a no-op that still reports, so the CPU suite
tests the schedule with the real actors.
"""

from __future__ import annotations

import time

import torch

from rl_pipeline.workers.trainer.engine import TrainerEngine

GIB = 2**30
# Everything but the bf16 working weights: offloaded right after the optimiser step.
TRAINING_STATES = ("hp_params", "optim_states", "lp_grads", "contiguous_grad_buffer")
WEIGHTS = ("lp_params",)


class TrainerMemory:
    """Moves the states of `core`'s DeepSpeed engine; DeepSpeed itself records what is offloaded."""

    def __init__(self, core: TrainerEngine) -> None:
        self.core = core

    def _movable(self) -> bool:
        """DeepSpeed moves states only with its ZeRO-2/3 optimizers (ZeRO-1 in bf16 uses another
        that cannot) and only while the parameters themselves live on the GPU."""
        core = self.core
        return (core.device == "cuda" and hasattr(core.engine.optimizer, "offload_states")
                and not core.spec.trainer.offload_params)

    def offload(self, states: tuple[str, ...] | list[str]) -> dict:
        """Move `states` (names of DeepSpeed's OffloadStateTypeEnum) to CPU memory."""
        start = time.perf_counter()
        moved = self._movable()
        if moved:
            from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

            include = [OffloadStateTypeEnum(name) for name in states]
            if self.core.spec.trainer.offload_optimizer:
                # Master weights and moments already live in CPU memory (ZeRO-Offload), which they
                # mostly fill (12 bytes per parameter): the bf16 weights stay on the GPU.
                include = [s for s in include if s.value not in ("hp_params", "optim_states", "lp_params")]
            self.core.engine.offload_states(include=include, device=OffloadDeviceEnum.cpu, pin_memory=True)
        return {"seconds": time.perf_counter() - start, "moved": moved, "at": time.time(), **self.gpu_memory()}

    def onload(self, states: tuple[str, ...] | list[str] | None = None) -> dict:
        """Bring offloaded states back to the GPU: all of them (before training, saving or
        exporting), or only `states` (the bf16 weights for a push to a replaced engine)."""
        start = time.perf_counter()
        engine = self.core.engine
        optimizer = engine.optimizer if engine is not None else None
        offloaded = set(getattr(optimizer, "offloaded_states", None) or ())
        moved = self._movable() and bool(offloaded)
        if moved and states is None:
            engine.reload_states()
        elif moved:
            from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum

            # reload_states brings back what `offloaded_states` names: name only the wanted ones.
            wanted = {OffloadStateTypeEnum(name) for name in states} & offloaded
            optimizer.offloaded_states = set(wanted)
            try:
                engine.reload_states()
            finally:
                optimizer.offloaded_states = (offloaded - wanted) | set(optimizer.offloaded_states)
        return {"seconds": time.perf_counter() - start, "moved": moved, "at": time.time(), **self.gpu_memory()}

    def gpu_memory(self, reset_peak: bool = False) -> dict:
        """GiB this rank holds now (allocated, reserved by torch's cache) and its peak since the last
        reset; the device's used memory (all processes). Zeros on CPU."""
        if self.core.device != "cuda":
            return {"allocated_gib": 0.0, "reserved_gib": 0.0, "peak_gib": 0.0, "device_used_gib": 0.0}
        free, total = torch.cuda.mem_get_info()
        out = {"allocated_gib": torch.cuda.memory_allocated() / GIB, "reserved_gib": torch.cuda.memory_reserved() / GIB,
               "peak_gib": torch.cuda.max_memory_reserved() / GIB, "device_used_gib": (total - free) / GIB}
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()
        return out
