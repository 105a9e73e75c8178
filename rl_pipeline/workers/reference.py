"""The reference model: a frozen copy of the starting policy that computes per-token logprobs
of given sequences for the KL term, at the sampling temperature (softmax(logits / T), as the
trainer scores pi_theta). Started only when grpo.kl_coef > 0.

The on-policy distillation teacher is the same role with the teacher's model (recipe `teacher:`):
a frozen causal LM scoring the student's sampled tokens, filling `teacher_logprobs`.

A LoRA run starts no reference role: its base is frozen on the trainer ranks, so the reference
logprobs come from there with the adapters switched off (a ReferenceGroup over the trainer ranks
calling their `base_logprobs`), through the same `completion_logprobs`."""

from __future__ import annotations

from typing import Callable

from rl_pipeline.config import ModelConfig


class ReferenceWorker:
    """One replica holding the frozen model (bf16 on CUDA, fp32 on CPU)."""

    def __init__(self, model: ModelConfig, device: str = "auto") -> None:
        from rl_pipeline.models.loading import load_causal_lm, load_tokenizer
        from rl_pipeline.workers.trainer import pick_device

        self.device = pick_device(device)
        self.model = load_causal_lm(model.path, model.dtype, self.device, model.trust_remote_code).eval()
        self.model.requires_grad_(False)
        self.pad_id = load_tokenizer(model.tokenizer or model.path, model.trust_remote_code).pad_token_id

    def completion_logprobs(self, rows: list[dict], micro_batch_size: int = 16,
                            temperature: float = 1.0) -> list[list[float]]:
        """For each row (input_ids, prompt_len): logprobs of its completion tokens at `temperature`."""
        from rl_pipeline.models.logprobs import completion_logprobs

        return completion_logprobs(self.model, self.pad_id, self.device, rows, micro_batch_size, temperature)



class ReferenceGroup:
    """Replicas of the reference model; rows are split evenly across them. `method` is the actor
    method that scores rows (`ReferenceWorker.completion_logprobs`, or the LoRA trainer ranks'
    `TrainerWorker.base_logprobs`); `owns_actors` False (those ranks) leaves them running at shutdown."""

    def __init__(self, group, method: Callable | None = None, owns_actors: bool = True) -> None:
        self.group, self.owns_actors = group, owns_actors
        self.method = method or ReferenceWorker.completion_logprobs

    @classmethod
    def start(cls, model: ModelConfig, replicas: int = 1, cpus: float = 0.25, gpus: float = 0.0,
              device: str = "auto", strategy: str = "PACK", placement=None, role: str = "reference") -> "ReferenceGroup":
        """`placement` (a group.Placement from rl_pipeline.cluster) overrides cpus, gpus and strategy;
        `role` names the actors ("teacher" for a distillation teacher)."""
        from rl_pipeline.workers.group import ActorGroup, Placement, Resources

        placement = placement or Placement(Resources(cpus=cpus, gpus=gpus), strategy)
        group = ActorGroup.start(role, ReferenceWorker, replicas, init_args=[(model, device)] * replicas,
                                 **placement.group_kwargs())
        return cls(group)

    def add_logprobs(self, samples, temperature: float = 1.0, field: str = "ref_logprobs") -> None:
        """Fill `field` (ref_logprobs, or teacher_logprobs for a distillation teacher) of every
        GRPOSample in place, at the sampling `temperature`."""
        rows = [s.as_row() for s in samples]
        n = len(self.group)
        chunks = [rows[i * len(rows) // n : (i + 1) * len(rows) // n] for i in range(n)]
        results = self.group.call_each(self.method, [(c, 16, temperature) for c in chunks])
        for sample, logprobs in zip(samples, [lp for chunk in results for lp in chunk]):
            setattr(sample, field, logprobs)

    def shutdown(self) -> None:
        if self.owns_actors:
            self.group.shutdown()
