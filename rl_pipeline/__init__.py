"""rl_pipeline: Ray-based post-training of causal LMs (SFT, GRPO, R1-style distillation)."""

__version__ = "0.1.0"
