"""The policy trainer: DeepSpeed ranks as Ray actors (`TrainerWorker`) and the driver's handle on
them (`TrainerGroup`).

engine.py      the rank's DeepSpeed engine, optimiser step, checkpoints, export (TrainerEngine)
sft_steps.py   the SFT objective (SFTSteps mixin)
grpo_steps.py  the GRPO objective and the sampler/trainer logprob check (GRPOSteps mixin)
memory.py      states to CPU memory and back for the hybrid engine (TrainerMemory mixin)
rm_steps.py    the reward-model objective: Bradley-Terry pairs, held-out pair accuracy (RewardModelSteps)
worker.py      TrainerWorker = the objectives + weight-sync sender + engine
group.py       TrainerGroup: start all ranks, call them together, merge their metric shares
"""

from rl_pipeline.workers.trainer.engine import TrainerSpec, collate, deepspeed_config, pick_device
from rl_pipeline.workers.trainer.group import TrainerGroup
from rl_pipeline.workers.trainer.worker import TrainerWorker

__all__ = ["TrainerGroup", "TrainerSpec", "TrainerWorker", "collate", "deepspeed_config", "pick_device"]
