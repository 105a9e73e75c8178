"""Trainer -> rollout engines: push the current policy weights into every vLLM engine.

One interface, two backends, picked by device in `backend_for`:
- CPU (`ObjectStoreBackend`): the trainer exports a full Hugging Face-named state dict as
  torch.save bytes into Ray's object store (`trainer.export_weights() -> ray.ObjectRef`); every
  engine fetches that one object and loads it through the worker extension
  (`collective_rpc("rlp_load_weights")` -> vLLM's `reload_weights`).
- GPU, through vLLM's own weight-transfer engines (`vllm.distributed.weight_transfer`, built
  inside each engine by the worker extension, driven from the trainer's ranks); the layout
  picks the backend on the first push by comparing GPU UUIDs:
  - colocated (trainer rank 0 and the engine on the same GPU, `cluster.colocate`):
    `CudaIpcBackend`. Each rank hands CUDA IPC handles of its bf16 parameters to the engines;
    the engine maps the trainer's memory and copies from it (zero-copy on the trainer side).
    The trainer and the engine share the device; vLLM's sleep mode (`RolloutEngine.sleep` /
    `wake_up`, on for engines given a fraction of a GPU) frees the engine's memory around
    training.
  - separated (engines on other GPUs): `NcclBackend`. Trainer rank 0 and every engine worker
    form one NCCL group (vLLM's StatelessProcessGroup + PyNccl) on the first push; each push
    broadcasts the weights from rank 0 in packed buffers.
  Under ZeRO-3 every rank gathers each parameter in turn; rank 0 sends.

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


class CudaIpcBackend:
    """Same GPU: CUDA IPC handles of the trainer's parameters (vLLM's "ipc" engine)."""

    name = "cuda_ipc"

    def push(self, trainer, engines) -> dict[str, float]:
        import ray

        start = time.perf_counter()
        handles = list(engines.engines)
        seconds = trainer.group.call_all("send_weights_ipc", handles)
        return {"sync/seconds": time.perf_counter() - start, "sync/bytes": float(_weight_bytes(trainer)),
                "sync/send_seconds": max(seconds)}


class NcclBackend:
    """Other GPUs: NCCL broadcast from trainer rank 0 to every engine worker (vLLM's "nccl" engine)."""

    name = "nccl"

    def __init__(self) -> None:
        self.connected = False

    def connect(self, trainer, engines) -> None:
        """One NCCL group: trainer rank 0 is rank 0, engine i's workers follow (tp ranks each)."""
        import ray

        from rl_pipeline.workers.group import node_address

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


def _weight_bytes(trainer) -> int:
    import ray

    cached = getattr(trainer, "_rlp_weight_bytes", None)
    if cached is None:
        cached = ray.get(trainer.group.actors[0].weight_meta.remote())["bytes"]
        trainer._rlp_weight_bytes = cached
    return cached


def same_gpu(trainer, engines) -> bool:
    """True when trainer rank 0 and engine 0 report the same physical GPU."""
    import ray

    trainer_gpu = ray.get(trainer.group.actors[0].gpu_uuid.remote())
    engine_gpu = ray.get(engines.engines[0].worker_rpc.remote("rlp_device_uuid"))[0]
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

    `device` None takes the engines' device on the first push (`RolloutGroup.device`).
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        # The CUDA backend depends on where the actors run: picked on the first push.
        self.backend = backend_for(device) if device == "cpu" else None
        self.pushes = 0

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
