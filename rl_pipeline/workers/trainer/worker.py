"""The policy trainer actor: one Ray actor per data-parallel rank, composed of parts.

Each part owns its state and is given the rank's core (`engine.TrainerEngine`: the DeepSpeed
engine, the tokenizer, one optimiser step over micro-batches): one part per training objective
(`sft_steps`, `grpo_steps`, `rm_steps`), GPU memory switching for the hybrid engine (`memory`)
and the weight-sync senders (`rl_pipeline.weight_sync.trainer_side`). Ray calls only the actor's
own methods, so the class body below is the whole remote surface, one line per method, each naming
the part's method that runs (`remote.expose`); the driver names either one
(`group.call_all(TrainerWorker.save_state, path)`). A new objective is a new part and its lines here.
"""

from __future__ import annotations

from rl_pipeline.remote import expose
from rl_pipeline.weight_sync.adapter import AdapterSender
from rl_pipeline.weight_sync.cuda_ipc import CudaIpcSender
from rl_pipeline.weight_sync.nccl import NcclSender
from rl_pipeline.weight_sync.object_store import ObjectStoreSender
from rl_pipeline.weight_sync.tensors import TrainerTensors
from rl_pipeline.weight_sync.trainer_side import WeightSender
from rl_pipeline.workers.trainer.engine import TrainerEngine, TrainerSpec
from rl_pipeline.workers.trainer.grpo_steps import GRPOSteps
from rl_pipeline.workers.trainer.memory import TrainerMemory
from rl_pipeline.workers.trainer.rm_steps import RewardModelSteps
from rl_pipeline.workers.trainer.sft_steps import SFTSteps


class TrainerWorker:
    """One data-parallel rank. Created by TrainerGroup; call `setup` on all ranks together."""

    def __init__(self, rank: int, world_size: int, spec: TrainerSpec) -> None:
        self.core = TrainerEngine(rank, world_size, spec)
        self.sft = SFTSteps(self.core)
        self.grpo = GRPOSteps(self.core)
        self.rm = RewardModelSteps(self.core)
        self.memory = TrainerMemory(self.core)
        self.weights = WeightSender(self.core)

    # the rank itself: process group, checkpoints, export
    node_address = expose(TrainerEngine.node_address, "core")
    node_id = expose(TrainerEngine.node_id, "core")
    setup = expose(TrainerEngine.setup, "core")
    save_state = expose(TrainerEngine.save_state, "core")
    load_state = expose(TrainerEngine.load_state, "core")
    save_hf = expose(TrainerEngine.save_hf, "core")
    # objectives
    sft_step = expose(SFTSteps.sft_step, "sft")
    eval_nll = expose(SFTSteps.eval_nll, "sft")
    greedy_matches = expose(SFTSteps.greedy_matches, "sft")
    grpo_step = expose(GRPOSteps.grpo_step, "grpo")
    base_logprobs = expose(GRPOSteps.base_logprobs, "grpo")
    score = expose(GRPOSteps.score, "grpo")
    rm_step = expose(RewardModelSteps.rm_step, "rm")
    rm_eval = expose(RewardModelSteps.rm_eval, "rm")
    # the hybrid engine's memory switches
    offload = expose(TrainerMemory.offload, "memory")
    onload = expose(TrainerMemory.onload, "memory")
    gpu_memory = expose(TrainerMemory.gpu_memory, "memory")
    # weight sync, one part per transport
    gpu_uuid = expose(TrainerTensors.gpu_uuid, "weights.tensors")
    weight_meta = expose(TrainerTensors.weight_meta, "weights.tensors")
    export_weights = expose(ObjectStoreSender.export_weights, "weights.object_store")
    send_weights_ipc = expose(CudaIpcSender.send_weights_ipc, "weights.cuda_ipc")
    init_nccl_sync = expose(NcclSender.init_nccl_sync, "weights.nccl")
    send_weights_nccl = expose(NcclSender.send_weights_nccl, "weights.nccl")
    export_adapter = expose(AdapterSender.export_adapter, "weights.adapter")
