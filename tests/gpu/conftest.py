"""GPU tests: real DeepSpeed (NCCL, bf16) and CUDA vLLM on a small model; skipped without CUDA.

Run on a GPU machine (the kit's settings are applied here):  python -m pytest -m gpu tests/gpu
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gpu)
            if not HAS_CUDA:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def gpu_ray():
    """Ray with every GPU of the machine, and the GPU kit's environment (bench/gpu/common.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))
    import common
    import ray

    common.gpu_env()
    ray.init(include_dashboard=False, num_gpus=torch.cuda.device_count())
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """4 layers, hidden 256, head_dim 64: starts in seconds, big enough for bf16 to round."""
    from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gpu") / "model",
                            TinyModelSpec(layers=4, hidden=256, heads=4, kv_heads=2, intermediate=768))
