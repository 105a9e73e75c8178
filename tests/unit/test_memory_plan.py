"""The memory guard's estimates on known shapes, and its refusals (rl_pipeline/memory_plan.py)."""

from __future__ import annotations

import pytest

from rl_pipeline.config import InputError, parse_recipe
from rl_pipeline.memory_plan import ModelShape, check_memory_plan, trainer_estimate

QWEN25_1_5B = ModelShape(layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128,
                         vocab=151936, tied=True)
QWEN25_7B = ModelShape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128,
                       vocab=152064, tied=False)
H200_GIB = 139.8


def recipe(**sections) -> object:
    raw = {"model": {"path": "m"}, "data": {"train": {"path": "t.jsonl"}, "max_length": 1088},
           "trainer": {"max_tokens_per_micro_batch": 16384, "gpus_per_rank": 0.5},
           "rollout": {"gpus_per_engine": 0.5, "gpu_memory_utilization": 0.8, "max_model_len": 1088},
           "grpo": {}, "rewards": {"functions": [{"name": "math"}]}, "cluster": {"colocate": True}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_recipe(raw)


def test_parameter_counts_match_the_published_models():
    # transformers' Qwen2ForCausalLM of these configs (counted on the meta device)
    assert QWEN25_1_5B.params == 1_543_714_304
    assert QWEN25_7B.params == 7_615_616_512


def test_trainer_states_are_sixteen_bytes_per_parameter_plus_grads_and_shrink_with_offload():
    full = trainer_estimate(QWEN25_7B, recipe())
    p_gib = QWEN25_7B.params / 2**30
    assert full.parts["weights"] == pytest.approx(2 * p_gib)
    assert full.parts["master"] + full.parts["adam"] == pytest.approx(12 * p_gib)
    offloaded = trainer_estimate(QWEN25_7B, recipe(trainer={"offload_optimizer": True}))
    assert offloaded.parts["master"] == offloaded.parts["adam"] == 0
    checkpointed = trainer_estimate(QWEN25_7B, recipe(trainer={"gradient_checkpointing": True}))
    assert checkpointed.parts["activations"] < full.parts["activations"] / 4
    two_ranks = trainer_estimate(QWEN25_7B, recipe(trainer={"num_ranks": 2, "gpus_per_rank": 1}))
    assert two_ranks.parts["adam"] == pytest.approx(full.parts["adam"] / 2)


def test_a_7b_plan_is_refused_naming_role_estimate_and_keys_until_it_fits():
    with pytest.raises(InputError) as static:
        check_memory_plan(recipe(), QWEN25_7B, H200_GIB, hybrid=False)
    message = str(static.value)
    assert "colocated without the hybrid engine" in message and "trainer rank ~" in message
    assert "cluster.hybrid_engine" in message and "trainer.offload_optimizer" in message
    with pytest.raises(InputError, match=r"trainer rank ~\d+.* > the 139.8 GiB card"):
        check_memory_plan(recipe(), QWEN25_7B, H200_GIB, hybrid=True)  # full Adam states alone ~106 GiB
    fits = recipe(trainer={"offload_optimizer": True, "gradient_checkpointing": True})
    trainer, engine = check_memory_plan(fits, QWEN25_7B, H200_GIB, hybrid=True)
    assert trainer.gib < H200_GIB and engine.gib < H200_GIB


def test_an_engine_share_too_small_for_its_weights_is_refused():
    with pytest.raises(InputError, match="rollout.gpu_memory_utilization"):
        check_memory_plan(recipe(rollout={"gpu_memory_utilization": 0.1}), QWEN25_7B, H200_GIB, hybrid=True)


def test_the_1_5b_colocated_plans_that_ran_before_the_hybrid_engine_still_pass():
    # recipes/gpu/grpo_1gpu.yaml before the hybrid engine: engine 0.35 of the card, both resident.
    trainer, engine = check_memory_plan(recipe(rollout={"gpu_memory_utilization": 0.35}), QWEN25_1_5B, H200_GIB,
                                        hybrid=False)
    assert trainer.gib + engine.gib < H200_GIB


# Trainer peaks measured by bench/gpu/capacity.py on one H200 (BENCHMARKS.md section 8): torch's
# reserved memory while training, random Qwen2 of these shapes with vocabulary 151,936,
# trainer.max_tokens_per_micro_batch 16384. (shape, recipe overrides, measured GiB)
BENCH_1_5B = ModelShape(layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128,
                        vocab=151936, tied=True)
BENCH_7B = ModelShape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128,
                      vocab=151936, tied=False)
MEASURED_TRAINER_PEAKS = [
    (BENCH_1_5B, {}, 79.3),  # 1.5b hybrid, steps 2-3
    (BENCH_1_5B, {}, 106.3),  # 1.5b hybrid, step 1 (the allocator's first, looser packing)
    (BENCH_7B, {"offload_optimizer": True, "gradient_checkpointing": True}, 31.3),  # 7b, grpo_1gpu_large
]


@pytest.mark.parametrize("shape, trainer, measured", MEASURED_TRAINER_PEAKS)
def test_trainer_estimate_is_within_a_quarter_of_the_measured_peak(shape, trainer, measured):
    estimate = trainer_estimate(shape, recipe(trainer=trainer)).gib
    assert 0.75 <= estimate / measured <= 1.25, (estimate, measured)


def test_the_hybrid_engine_turns_itself_on_only_when_the_roles_do_not_fit_together():
    from rl_pipeline.memory_plan import decide_hybrid_engine

    small = recipe(rollout={"gpu_memory_utilization": 0.35})
    assert decide_hybrid_engine(small, BENCH_1_5B, H200_GIB) is False  # fits resident: no switching cost
    assert decide_hybrid_engine(recipe(), BENCH_1_5B, H200_GIB) is True  # engine at 0.8: they must take turns
    forced = recipe(cluster={"hybrid_engine": False})
    assert decide_hybrid_engine(forced, BENCH_1_5B, H200_GIB) is False  # as set
