"""The policy trainer: DeepSpeed ranks as Ray actors (`TrainerWorker`) and the driver's handle on
them (`TrainerGroup`).

engine.py      the rank's core part: DeepSpeed engine, optimiser step, checkpoints, export (TrainerEngine)
sft_steps.py   the SFT objective (the SFTSteps part)
grpo_steps.py  the GRPO objective and the sampler/trainer logprob check (the GRPOSteps part)
memory.py      states to CPU memory and back for the hybrid engine (the TrainerMemory part)
rm_steps.py    the reward-model objective: Bradley-Terry pairs, held-out pair accuracy (RewardModelSteps)
worker.py      TrainerWorker: the parts, and its remote surface (one line per method, naming the part's)
group.py       TrainerGroup: start all ranks, call them together (typed calls), merge their metric shares
"""

from rl_pipeline.workers.trainer.engine import TrainerSpec, collate, deepspeed_config, pick_device
from rl_pipeline.workers.trainer.group import TrainerGroup
from rl_pipeline.workers.trainer.worker import TrainerWorker

__all__ = ["TrainerGroup", "TrainerSpec", "TrainerWorker", "collate", "deepspeed_config", "pick_device"]
