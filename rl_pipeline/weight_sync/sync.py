"""The driver's side of the weight sync: pick a transport, push after each update, check the gap.

`WeightSync(device).push(trainer, engines)` is called by the GRPO driver after each update; it
returns `sync/seconds` and `sync/bytes` for the metrics. The transport is picked on the first
push (`backend_for`): the object store on CPU; on CUDA, CUDA IPC when trainer rank 0 and engine 0
report the same GPU, else NCCL. A LoRA run whose engines serve adapters (`adapter_only`) sends
the adapter alone on every device (adapter.py).
"""

from __future__ import annotations

import logging

from rl_pipeline.remote import call
from rl_pipeline.weight_sync.adapter import AdapterBackend
from rl_pipeline.weight_sync.cuda_ipc import CudaIpcBackend
from rl_pipeline.weight_sync.nccl import NcclBackend
from rl_pipeline.weight_sync.engine_side import EngineWeights, RolloutWorkerExtension
from rl_pipeline.weight_sync.object_store import ObjectStoreBackend, WeightExporter, WeightLoader
from rl_pipeline.weight_sync.tensors import TrainerTensors

log = logging.getLogger(__name__)


def same_gpu(trainer, engines) -> bool:
    """True when trainer rank 0 and engine 0 report the same physical GPU."""
    import ray

    trainer_gpu = ray.get(call(trainer.group.actors[0], TrainerTensors.gpu_uuid))
    engine_gpu = ray.get(call(engines.engines[0], EngineWeights.worker_rpc, RolloutWorkerExtension.rlp_device_uuid))[0]
    return trainer_gpu == engine_gpu


def backend_for(device: str, trainer=None, engines=None):
    """The sync backend for engines on `device` ("cpu" or "cuda..."); on CUDA the layout decides:
    IPC when trainer rank 0 and engine 0 share a GPU, else NCCL."""
    if device == "cpu":
        return ObjectStoreBackend()
    if device.startswith("cuda"):
        if trainer is not None and engines is not None and same_gpu(trainer, engines):
            return CudaIpcBackend()
        return NcclBackend()
    raise ValueError(f"weight sync: unknown engine device {device!r}; expected 'cpu' or 'cuda'")


class WeightSync:
    """Push the trainer's weights into every rollout engine; returns sync/seconds and sync/bytes.

    `device` None takes the engines' device on the first push (`RolloutGroup.device`);
    `adapter_only` (trainer.lora, engines serving adapters) pushes the LoRA adapter alone.
    """

    def __init__(self, device: str | None = None, adapter_only: bool = False) -> None:
        self.device = device
        # The CUDA backend depends on where the actors run: picked on the first push.
        if adapter_only:
            self.backend = AdapterBackend()
        else:
            self.backend = backend_for(device) if device == "cpu" else None
        self.pushes = 0

    def engines_replaced(self) -> None:
        """An engine was replaced: NCCL rebuilds its group (the dead engine's ranks are gone) on
        the next push; the other transports reach the new engine as they are."""
        if isinstance(self.backend, NcclBackend):
            self.backend.connected = False

    def push(self, trainer: WeightExporter, engines: WeightLoader) -> dict[str, float]:
        if self.backend is None:
            self.device = self.device or engines.device
            self.backend = backend_for(self.device, trainer, engines)
        stats = self.backend.push(trainer, engines)
        self.pushes += 1
        (log.info if self.pushes == 1 else log.debug)(  # every push's time is in the metrics (sync/seconds)
            "weight sync #%d (%s): %.1f MB in %.3fs",
            self.pushes, self.backend.name, stats["sync/bytes"] / 1e6, stats["sync/seconds"],
        )
        return stats


def logprob_gap(trainer, engines, prompt_ids: list[list[int]], max_tokens: int = 32, seed: int = 0) -> dict:
    """Sample one completion per prompt, then score it with the trainer: |sampler logprob -
    trainer logprob| over the sampled tokens (mean and max). Right after a sync this is the
    precision gap alone (bf16 on GPUs); stale or corrupted weights show up as a large gap."""
    groups = engines.generate(prompt_ids, n=1, temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=seed)
    rows = [{"prompt_ids": list(p), "completion_ids": g[0].token_ids} for p, g in zip(prompt_ids, groups)]
    scored = trainer.score(rows)
    gaps = [abs(a - b) for g, s in zip(groups, scored) for a, b in zip(g[0].logprobs, s)]
    return {"gap_mean": sum(gaps) / max(len(gaps), 1), "gap_max": max(gaps, default=0.0), "tokens": len(gaps)}
