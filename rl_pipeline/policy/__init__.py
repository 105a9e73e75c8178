"""The policy floor, between the drivers (pipelines/) and the actors (workers/): one object that
starts the trainer ranks and the rollout engines together and owns everything about the weights
the engines hold (versions, pushes, hand-overs of shared GPUs, recovery of replaced engines).

- `policy.py`: `Policy` and `weight_push_mode` (full weights or LoRA adapters);
- `handover.py`: the hybrid engine's turns on shared GPUs, and the recipe check for them.
"""

from rl_pipeline.policy.handover import HybridEngine, check_hybrid_engine
from rl_pipeline.policy.policy import Policy, weight_push_mode

__all__ = ["HybridEngine", "Policy", "check_hybrid_engine", "weight_push_mode"]
