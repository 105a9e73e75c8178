"""The SFT objective on a trainer rank: the token-mean NLL step, validation loss, greedy accuracy.

The driver sends each rank its micro-batches as token-id lists together with the global
normaliser (the target-token count of the whole global batch), so losses are global token means
whatever the rank count or accumulation (see algorithms/sft.py).
"""

from __future__ import annotations

import torch

from rl_pipeline.workers.trainer.engine import TrainerEngine, collate


class SFTSteps:
    """TrainerWorker's SFT part: it keeps no state of its own, the rank's engine is `core`'s."""

    def __init__(self, core: TrainerEngine) -> None:
        self.core = core

    def sft_step(self, micro_batches: list[list[dict]], global_target_tokens: int) -> dict:
        """One optimiser step over this rank's micro-batches; returns this rank's loss share."""
        from rl_pipeline.algorithms.sft import sft_loss
        from rl_pipeline.models.logprobs import sequence_logprobs

        core, engine = self.core, self.core.engine
        engine.train()
        totals = {"loss_share": 0.0, "tokens": 0}

        def loss_of(samples: list[dict]) -> torch.Tensor:
            batch = collate(samples, core.tokenizer.pad_token_id, engine.device)
            logp, _ = sequence_logprobs(engine, batch["input_ids"], None, batch["position_ids"])
            loss = sft_loss(logp, batch["loss_mask"], global_target_tokens)
            totals["loss_share"] += loss.item()
            totals["tokens"] += sum(len(s["input_ids"]) for s in samples)
            return loss

        core.accumulate(micro_batches, loss_of)
        return {**totals, "grad_norm": core.grad_norm(), "lr": engine.get_lr()[0]}

    @torch.no_grad()
    def eval_nll(self, micro_batches: list[list[dict]]) -> tuple[float, int]:
        """(sum of target-token NLL, target tokens) over this rank's share of a validation set."""
        from rl_pipeline.algorithms.sft import count_target_tokens, masked_nll_sum
        from rl_pipeline.models.logprobs import sequence_logprobs

        core, engine = self.core, self.core.engine
        engine.eval()
        total, count = 0.0, 0
        for samples in micro_batches:
            batch = collate(samples, core.tokenizer.pad_token_id, engine.device)
            logp, _ = sequence_logprobs(engine, batch["input_ids"], None, batch["position_ids"])
            total += float(masked_nll_sum(logp, batch["loss_mask"]))
            count += count_target_tokens(batch["loss_mask"])
        return total, count

    @torch.no_grad()
    def greedy_matches(self, pairs: list[tuple[list[int], list[int]]]) -> int:
        """How many of this rank's (prompt ids, target ids) pairs greedy decoding reproduces
        exactly; needs the full weights on the rank (ZeRO stage <= 2)."""
        from rl_pipeline.models.generate import greedy_exact_matches

        core, engine = self.core, self.core.engine
        engine.eval()
        return greedy_exact_matches(engine.module, pairs, core.tokenizer.pad_token_id,
                                    core.tokenizer.eos_token_id, core.spec.trainer.micro_batch_size, engine.device)

