"""Trainer -> rollout engines: push the current policy weights into every vLLM engine.

One package, one module per role and per transport:
- `sync.py`: the driver's side. `WeightSync(device).push(trainer, engines)` after each update
  picks the transport on the first push (`backend_for`) and returns `sync/seconds` and
  `sync/bytes`; `logprob_gap` checks a sync end to end.
- transports, each with its driver-side backend and its trainer-side sender part:
  - `object_store.py` (CPU): rank 0 exports torch.save bytes into Ray's object store, every
    engine loads that one object with vLLM's `reload_weights`.
  - `cuda_ipc.py` (same GPU, `cluster.colocate`): CUDA IPC handles of the trainer's bf16
    parameters; the engine copies from the trainer's memory.
  - `nccl.py` (other GPUs): one NCCL group of trainer rank 0 and every engine worker, a packed
    broadcast per push.
  - `adapter.py` (trainer.lora, any device): only the LoRA adapter travels (object store); each
    engine writes it to a shared-memory folder and serves base + adapter under a new LoRA id.
  Under ZeRO-3 every rank gathers each parameter in turn (`tensors.py`); rank 0 sends.
- `trainer_side.py`: `WeightSender`, the transports' sender parts of one TrainerWorker rank.
- `engine_side.py`: the vLLM worker extension that receives and reloads weights in each engine
  (imported inside vLLM's worker processes: it stays free of Ray), and `EngineWeights`, the
  engine actor's methods the transports call.
Every remote call names its method (`rl_pipeline/remote.py`), never a string.
"""

from rl_pipeline.weight_sync.cuda_ipc import CudaIpcBackend
from rl_pipeline.weight_sync.nccl import NcclBackend
from rl_pipeline.weight_sync.object_store import ObjectStoreBackend
from rl_pipeline.weight_sync.sync import WeightSync, backend_for, logprob_gap, same_gpu

__all__ = ["CudaIpcBackend", "NcclBackend", "ObjectStoreBackend", "WeightSync", "backend_for", "logprob_gap",
           "same_gpu"]
