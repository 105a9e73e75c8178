"""The reward-model objective on a trainer rank: a Bradley-Terry step and held-out pair metrics.

The driver sends each rank its micro-batches of pairs ({"chosen": ids, "rejected": ids,
"margin": m}) with the global normaliser (the pair count of the whole global batch), so the loss
is a global pair mean whatever the rank count or accumulation (see algorithms/rm.py). The model
is the scalar-head classifier TrainerSpec(head="scalar") builds; both sides of every pair go
through one forward pass.
"""

from __future__ import annotations

import torch

from rl_pipeline.workers.trainer.engine import TrainerEngine


def collate_pairs(pairs: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Chosen sides then rejected sides, right-padded, with the attention mask the classifier
    uses (it reads the score at the last non-pad token)."""
    sequences = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    width = max(len(s) for s in sequences)
    ids = [list(s) + [pad_id] * (width - len(s)) for s in sequences]
    mask = [[1] * len(s) + [0] * (width - len(s)) for s in sequences]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
        "margin": torch.tensor([float(p.get("margin", 0.0)) for p in pairs], device=device),
    }


class RewardModelSteps:
    """TrainerWorker's reward-model part: no state of its own, the rank's engine is `core`'s."""

    def __init__(self, core: TrainerEngine) -> None:
        self.core = core

    def _pair_rewards(self, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        engine = self.core.engine
        batch = collate_pairs(pairs, self.core.tokenizer.pad_token_id, engine.device)
        rewards = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        rewards = rewards.float()
        return rewards[: len(pairs)], rewards[len(pairs):], batch["margin"]

    def rm_step(self, micro_batches: list[list[dict]], global_pairs: int, margin_scale: float = 0.0,
                center_coef: float = 0.0) -> dict:
        """One optimiser step over this rank's micro-batches of pairs; returns this rank's sums."""
        from rl_pipeline.algorithms.rm import pair_counts, rm_loss

        self.core.engine.train()
        totals = {"loss_share": 0.0, "correct": 0.0, "margin_sum": 0.0, "reward_sum": 0.0, "pairs": 0, "tokens": 0}

        def loss_of(pairs: list[dict]) -> torch.Tensor:
            chosen, rejected, margin = self._pair_rewards(pairs)
            loss = rm_loss(chosen, rejected, global_pairs, margin * margin_scale if margin_scale else None, center_coef)
            totals["loss_share"] += loss.item()
            for key, value in pair_counts(chosen.detach(), rejected.detach()).items():
                totals[key] += value
            totals["tokens"] += sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs)
            return loss

        self.core.accumulate(micro_batches, loss_of)
        return {**totals, "grad_norm": self.core.grad_norm(), "lr": self.core.engine.get_lr()[0]}

    @torch.no_grad()
    def rm_eval(self, micro_batches: list[list[dict]]) -> dict:
        """Sums over this rank's held-out pairs: Bradley-Terry loss (no margin or centering),
        pairs ranked right, reward margin, pair count."""
        from rl_pipeline.algorithms.rm import bradley_terry_losses, pair_counts

        self.core.engine.eval()
        totals = {"loss_sum": 0.0, "correct": 0.0, "margin_sum": 0.0, "reward_sum": 0.0, "pairs": 0}
        for pairs in micro_batches:
            chosen, rejected, _ = self._pair_rewards(pairs)
            totals["loss_sum"] += float(bradley_terry_losses(chosen, rejected).sum())
            for key, value in pair_counts(chosen, rejected).items():
                totals[key] += value
        return totals
