"""The DeepSpeed configuration a trainer rank builds per device (rl_pipeline/workers/trainer/engine.py)."""

from rl_pipeline.config import TrainerConfig
from rl_pipeline.workers.trainer import deepspeed_config


def test_cuda_ranks_use_torch_fused_adamw_and_cpu_ranks_the_multi_tensor_one():
    cuda = deepspeed_config(TrainerConfig(), "cuda", world_size=1)["optimizer"]["params"]
    cpu = deepspeed_config(TrainerConfig(), "cpu", world_size=1)["optimizer"]["params"]
    # DeepSpeed passes every param but torch_adam to torch.optim.AdamW (fused=True: one kernel).
    assert cuda["torch_adam"] and cuda["fused"] is True
    assert cpu["torch_adam"] and "fused" not in cpu
    assert deepspeed_config(TrainerConfig(), "cuda", world_size=1)["bf16"]["enabled"]
