"""Shared pytest fixtures: a tiny local model, a local Ray instance and the synthetic task.

Every fixture here is session-scoped, so a test run builds each thing once. Fixture names are
used across the suite; keep them stable.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of a randomly initialised tiny Qwen2 model + char-level chat tokenizer.

    Built once per session with `rl_pipeline.models.tiny.build_tiny_model` and the default
    `TinyModelSpec` (4 layers, hidden 128, head_dim 64, float32). Loads with transformers'
    `from_pretrained` and with vLLM. Treat it as read-only: other tests share it.
    """
    from rl_pipeline.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs (the development machine has 2 cores), no dashboard.

    Reuses an instance that is already initialised in this process (and then leaves it
    running); otherwise starts one and shuts it down at the end of the session. Size actors
    with fractional or zero CPUs. Yields the `ray` module.
    """
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    """Folder holding the synthetic arithmetic task: train.jsonl (512), eval.jsonl (64), test.jsonl (64).

    Written with `rl_pipeline.data.synthetic.write_task` (2-digit additions, seed 0). Rows have
    `id`, `prompt` ("07+45="), `ground_truth` ("52") and `completion` ("52").
    """
    from rl_pipeline.data.synthetic import write_task

    out = tmp_path_factory.mktemp("task")
    write_task(out, {"train": 512, "eval": 64, "test": 64}, digits=2, ops="+", seed=0)
    return out
