"""The policy trainer actor: one Ray actor per data-parallel rank.

`TrainerWorker` is a composition: the DeepSpeed engine (`engine.TrainerEngine`), one mixin per
training objective (`sft_steps`, `grpo_steps`, `rm_steps`), GPU memory switching for the hybrid
engine (`memory`) and the weight-sync sender
(`rl_pipeline.weight_sync.trainer_side`). A new objective (a reward-model loss, distillation) is
a new mixin here, not more methods on one class.
"""

from __future__ import annotations

from rl_pipeline.weight_sync.trainer_side import WeightSender
from rl_pipeline.workers.trainer.engine import TrainerEngine
from rl_pipeline.workers.trainer.grpo_steps import GRPOSteps
from rl_pipeline.workers.trainer.memory import TrainerMemory
from rl_pipeline.workers.trainer.rm_steps import RewardModelSteps
from rl_pipeline.workers.trainer.sft_steps import SFTSteps


class TrainerWorker(SFTSteps, GRPOSteps, RewardModelSteps, TrainerMemory, WeightSender, TrainerEngine):
    """One data-parallel rank. Created by TrainerGroup; call `setup` on all ranks together."""
