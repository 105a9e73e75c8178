"""The GRPO objective on a trainer rank: the clipped-surrogate update and the logprob checks.

Log-probabilities are of softmax(logits / temperature), the distribution the engines sampled;
`score` serves the sampler/trainer gap check of the weight sync.
"""

from __future__ import annotations

import torch

from rl_pipeline.workers.trainer.engine import TrainerEngine, collate


class GRPOSteps:
    """TrainerWorker's GRPO part. Owns the sampling temperature of the batch being trained on and
    the algorithm object built from the driver's AlgorithmSpec; the engine is `core`'s."""

    def __init__(self, core: TrainerEngine) -> None:
        self.core = core
        self.temperature = 1.0  # of the rollouts being trained on; grpo_step sets it
        self._objective_spec, self._objective_built = None, None

    def grpo_step(self, mini_batches: list[tuple[list[list[dict]], tuple[float, float]]], algorithm, step: int,
                  inner_epochs: int = 1, temperature: float = 1.0) -> dict:
        """GRPO step `step` over this rank's share of the batch: `inner_epochs` (mu) epochs, each
        one optimiser step per mini-batch. mini_batches[k] = (this rank's micro-batches of
        mini-batch k, its global (tokens, sequences) normaliser over all ranks). `algorithm` is an
        AlgorithmSpec (rl_pipeline/algorithms/registry.py): the objective, built here once.

        Every update of the step uses the schedule's lr at `step`. pi_old is the policy before the
        first update: with one update it is the current forward (ratio 1, the gradient of the
        surrogate is still right); otherwise a no-grad pass computes it first. Log-probabilities
        are of softmax(logits / temperature), the distribution the engines sampled. Returns metric
        shares averaged over the updates (global values once summed over ranks), and under
        "reported" the pi_old logprobs of the completion tokens of rows with a `report_as` id.
        """
        from rl_pipeline.algorithms.grpo import LossNormaliser
        from rl_pipeline.batch import collate_grpo

        core, engine = self.core, self.core.engine
        self.temperature = temperature
        objective = self._objective(algorithm)
        lr = core.set_lr(step)
        pad = core.tokenizer.pad_token_id
        batches = [([collate_grpo(rows, pad, engine.device) for rows in micro], LossNormaliser(*norm))
                   for micro, norm in mini_batches]
        if inner_epochs * len(batches) > 1:
            with torch.no_grad():
                engine.eval()
                for micro, _ in batches:
                    for batch in micro:
                        batch["old_logp"] = self._logprobs(batch)[0]
        engine.train()
        shares: dict[str, float] = {}
        gap, reported = _LogprobGap(), {}
        for epoch in range(inner_epochs):
            for micro, norm in batches:
                check = (gap, reported) if epoch == 0 else None
                core.accumulate(micro, lambda b, n=norm, c=check: self._grpo_micro_loss(b, n, objective, shares, c))
        updates = inner_epochs * len(batches)
        return {"shares": {k: v / updates for k, v in shares.items()}, "grad_norm": core.grad_norm(), "lr": lr,
                "reported": reported, **gap.result()}

    def _objective(self, spec):
        """The spec's algorithm object, built on this rank (a user's file is imported here too) and
        kept while the driver sends the same spec."""
        if self._objective_spec == spec:
            return self._objective_built
        self._objective_spec, self._objective_built = spec, spec.build()
        return self._objective_built

    def _logprobs(self, batch: dict, with_entropy: bool = False):
        """Completion-token logprobs (and entropies) of a collated GRPO micro-batch at self.temperature."""
        from rl_pipeline.models.logprobs import sequence_logprobs

        return sequence_logprobs(self.core.engine, batch["input_ids"], None, batch["position_ids"], with_entropy,
                                 temperature=self.temperature, positions=batch["mask"])

    def _grpo_micro_loss(self, batch: dict, norm, objective, shares: dict, first_epoch) -> torch.Tensor:
        """`first_epoch` (the gap check and the reported logprobs) is None after the first epoch."""
        logp, entropy = self._logprobs(batch, with_entropy=True)
        old = batch.get("old_logp", logp.detach())
        if first_epoch is not None:
            sync_check, reported = first_epoch
            sync_check.add(old, batch["sampler_logp"], batch["mask"])
            for row, report_as, first, end in batch["report"]:
                reported[report_as] = old[row, first:end].float().tolist()
        loss, metrics = objective.loss(
            logp, old, batch["advantages"], batch["mask"], normaliser=norm, ref_logp=batch["ref_logp"],
            sampler_logp=batch["sampler_logp"] if objective.needs_sampler_logprobs else None,
        )
        metrics["policy/entropy"] = (entropy * batch["mask"]).sum() / max(norm.tokens, 1.0)
        for key, value in metrics.items():
            shares[key] = shares.get(key, 0.0) + float(value)
        return loss

    def base_logprobs(self, rows: list[dict], micro_batch_size: int = 16, temperature: float = 1.0) -> list[list[float]]:
        """LoRA's reference: completion logprobs of the frozen base (adapters off) on this rank."""
        from rl_pipeline.models.logprobs import completion_logprobs

        engine = self.core.engine
        engine.eval()
        with engine.module.disable_adapter():
            return completion_logprobs(engine, self.core.tokenizer.pad_token_id, engine.device, rows,
                                       micro_batch_size, temperature)

    @torch.no_grad()
    def score(self, rows: list[dict], temperature: float = 1.0) -> list[list[float]]:
        """log p of each completion token under the current weights at `temperature` (the
        sampler/trainer gap check): rows hold prompt_ids and completion_ids."""
        from rl_pipeline.models.logprobs import sequence_logprobs

        engine = self.core.engine
        engine.eval()
        sequences = [r["prompt_ids"] + r["completion_ids"] for r in rows]
        samples = [{"input_ids": ids, "loss_mask": [0] * len(ids)} for ids in sequences]
        batch = collate(samples, self.core.tokenizer.pad_token_id, engine.device)
        logp, _ = sequence_logprobs(engine, batch["input_ids"], None, batch["position_ids"],
                                    temperature=temperature)
        logp = logp.float().cpu()
        out = []
        for i, r in enumerate(rows):
            first = len(r["prompt_ids"]) - 1  # logp[t] scores token t + 1
            out.append(logp[i, first : first + len(r["completion_ids"])].tolist())
        return out


class _LogprobGap:
    """|sampler logprob - trainer logprob| over completion tokens of fresh rollouts: the best
    detector of a broken weight sync."""

    def __init__(self) -> None:
        self.total, self.count, self.max = 0.0, 0, 0.0

    def add(self, trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> None:
        gap = (trainer_logp.detach().float() - sampler_logp.float()).abs()[mask]
        if gap.numel():
            self.total += float(gap.sum())
            self.count += gap.numel()
            self.max = max(self.max, float(gap.max()))

    def result(self) -> dict[str, float]:
        return {"gap_sum": self.total, "gap_count": self.count, "gap_max": self.max}


