"""The one batch type of a GRPO step, built from rollouts and rewards, and its tensor form.

`build_batch` (pure: no Ray, no I/O) turns B prompts x G completions with their rewards and the
advantages the driver computed into per-sample training rows, leaves out the groups it is told
to drop, and masks truncated completions. Stages add fields (reference logprobs) rather than re-tokenizing.
`collate_grpo` turns rows into the aligned [N, T-1] tensors the loss needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl_pipeline.algorithms.grpo import LossNormaliser
from rl_pipeline.data.micro_batches import token_budget_shards


@dataclass
class GRPOSample:
    """One completion of one prompt, ready to train on."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    advantage: list[float]  # one per completion id (a float given here is broadcast over the completion)
    reward: float
    group: int
    truncated: bool
    trained: bool = True  # False: masked out of the loss (truncated and grpo.mask_truncated)
    ref_logprobs: list[float] | None = None
    teacher_logprobs: list[float] | None = None  # on-policy distillation: the teacher's, at the sampling T
    loss_mask: list[int] | None = None  # per completion id: 0 = not sampled (a tool result); None = all 1
    policy_version: int = 0  # the policy version that sampled it (rl_pipeline/policy)
    shown: dict | None = None  # what a sample log shows beside the ids: texts, reward components (pipelines/samples.py)
    # Set on the samples a step's sample log shows: the trainer returns their per-token logprobs under
    # this id (the sampler/trainer gap of pipelines/samples.py).
    report_as: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.advantage, list):  # a sequence's advantage holds for each of its tokens
            self.advantage = [float(self.advantage)] * len(self.completion_ids)
        if len(self.advantage) != len(self.completion_ids):
            raise ValueError(f"{len(self.advantage)} advantages for {len(self.completion_ids)} completion ids")

    def trained_tokens(self) -> int:
        """Completion ids that count in the loss (sampled ones only, when a loss mask is set)."""
        return len(self.completion_ids) if self.loss_mask is None else sum(self.loss_mask)

    def as_row(self) -> dict:
        """What a trainer rank receives (plain lists, cheap to ship through Ray)."""
        return {
            "input_ids": self.prompt_ids + self.completion_ids,
            "prompt_len": len(self.prompt_ids),
            "advantage": self.advantage if self.trained else [0.0] * len(self.advantage),
            "trained": self.trained,
            "sampler_logprobs": self.sampler_logprobs,
            "ref_logprobs": self.ref_logprobs,
            "loss_mask": self.loss_mask,
            "report_as": self.report_as,
        }


@dataclass
class GRPOBatch:
    samples: list[GRPOSample]
    groups_total: int
    groups_dropped: int

    def normaliser(self) -> LossNormaliser:
        """Global token and sequence counts of the trained completions (see algorithms/grpo.py)."""
        return _normaliser(self.samples)

    def trimmed_to_multiple(self, ranks: int) -> "GRPOBatch":
        """Drop the last few samples so every rank gets the same number of rows: ranks must run
        the same number of forward passes (ZeRO-3 gathers parameters in each)."""
        keep = len(self.samples) - len(self.samples) % ranks
        if keep == len(self.samples):
            return self
        return GRPOBatch(self.samples[:keep], self.groups_total, self.groups_dropped)

    def mini_batches(self, ranks: int, count: int, micro_batch_size: int,
                     max_tokens_per_micro_batch: int | None = None) -> list[tuple[list, LossNormaliser]]:
        """The batch as `count` optimiser steps (grpo.mini_batches): [(shards, normaliser)], where
        shards[rank][micro_batch] = rows and the normaliser counts that mini-batch on all ranks.

        Samples are dealt round-robin to ranks (equal counts: see trimmed_to_multiple), and each
        rank's rows are cut into `count` contiguous parts; part k of every rank is mini-batch k.
        `count` is capped at the rows per rank so that no optimiser step is empty. Micro-batches
        hold `micro_batch_size` rows, or, with `max_tokens_per_micro_batch`, a mini-batch's rows
        sorted by length and cut by padded tokens (data/micro_batches.py).
        """
        per_rank = [self.samples[r::ranks] for r in range(ranks)]
        rows = len(per_rank[0])
        count = max(1, min(count, rows))
        bounds = [k * rows // count for k in range(count + 1)]
        out = []
        for k in range(count):
            parts = [samples[bounds[k] : bounds[k + 1]] for samples in per_rank]
            members = [s for part in parts for s in part]
            if max_tokens_per_micro_batch is None:
                shards = [[[s.as_row() for s in part[i : i + micro_batch_size]]
                           for i in range(0, len(part), micro_batch_size)] for part in parts]
            else:
                shards = token_budget_shards([s.as_row() for s in members], ranks, max_tokens_per_micro_batch)
            out.append((shards, _normaliser(members)))
        return out


def _normaliser(samples: list[GRPOSample]) -> LossNormaliser:
    """Token and sequence counts of the trained completions among `samples` (sampled tokens only:
    tool-result tokens of a trajectory are masked out of the loss, so they are not counted)."""
    trained = [s for s in samples if s.trained and s.trained_tokens()]
    return LossNormaliser(tokens=float(sum(s.trained_tokens() for s in trained)), sequences=float(len(trained)))


def build_batch(
    prompt_ids: list[list[int]],
    completions: list[list],
    rewards: list[float],
    advantages: list[float],
    *,
    keep_groups: list[bool] | None = None,
    mask_truncated: bool = False,
    shown: list[dict] | None = None,
) -> GRPOBatch:
    """B prompts with G completions each -> a batch of training rows.

    `rewards` and `advantages` are group-contiguous (length B*G; the driver computes the
    advantages, see algorithms/grpo.group_advantages); groups whose `keep_groups` entry is False
    are left out (counted in groups_dropped). `completions[b][g]` has token_ids, logprobs and
    truncated (a rollout Completion), and a loss_mask when it is a multi-turn Trajectory
    (tool-result ids are not trained). `shown[i]`, if given, rides along for the sample log.
    """
    group_size = len(completions[0])
    keep = [True] * len(completions) if keep_groups is None else list(keep_groups)
    samples = []
    for b, group in enumerate(completions):
        if not keep[b]:
            continue
        for g, completion in enumerate(group):
            i = b * group_size + g
            samples.append(GRPOSample(
                prompt_ids=list(prompt_ids[b]), completion_ids=list(completion.token_ids),
                sampler_logprobs=list(completion.logprobs), advantage=float(advantages[i]),
                reward=float(rewards[i]), group=b, truncated=completion.truncated,
                trained=not (mask_truncated and completion.truncated),
                loss_mask=getattr(completion, "loss_mask", None), policy_version=completion.policy_version,
                shown=shown[i] if shown is not None else None,
            ))
    return GRPOBatch(samples, groups_total=len(completions), groups_dropped=keep.count(False))


def merge_batches(batches: list[GRPOBatch]) -> GRPOBatch:
    """Concatenate the kept groups of several generation rounds (dynamic-sampling refill)."""
    samples, offset = [], 0
    for batch in batches:
        for s in batch.samples:
            samples.append(GRPOSample(**{**vars(s), "group": s.group + offset}))
        offset += batch.groups_total
    return GRPOBatch(samples, sum(b.groups_total for b in batches), sum(b.groups_dropped for b in batches))


def collate_grpo(rows: list[dict], pad_id: int, device) -> dict[str, torch.Tensor | None]:
    """Right-padded ids [N, T] and label-aligned [N, T-1] tensors: completion-token mask,
    sampler and reference logprobs, advantages (a row's per-completion-token list; 0 elsewhere).
    Label position t predicts token t+1, so completion token j of a row sits at position
    prompt_len - 1 + j. A row's `loss_mask` (if any) clears the positions of ids that were not
    sampled (tool results). `report` lists (row, report_as id, first, end) label positions of
    the rows whose trainer logprobs go back to the driver (GRPOSample.report_as)."""
    width = max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width - 1), dtype=torch.bool)
    sampler = torch.zeros((n, width - 1), dtype=torch.float32)
    has_ref = rows[0]["ref_logprobs"] is not None
    ref = torch.zeros((n, width - 1), dtype=torch.float32) if has_ref else None
    advantages = torch.zeros((n, width - 1), dtype=torch.float32)
    report = []
    for i, row in enumerate(rows):
        seq, start = row["input_ids"], row["prompt_len"] - 1
        ids[i, : len(seq)] = torch.tensor(seq)
        end = start + len(seq) - row["prompt_len"]
        mask[i, start:end] = bool(row["trained"])
        if row.get("loss_mask") is not None:
            mask[i, start:end] &= torch.tensor(row["loss_mask"], dtype=torch.bool)
        sampler[i, start:end] = torch.tensor(row["sampler_logprobs"], dtype=torch.float32)
        if has_ref:
            ref[i, start:end] = torch.tensor(row["ref_logprobs"], dtype=torch.float32)
        advantages[i, start:end] = torch.tensor(row["advantage"], dtype=torch.float32)
        if row.get("report_as") is not None:
            report.append((i, row["report_as"], start, end))
    positions = torch.arange(width).expand(n, width)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return {"input_ids": move(ids), "position_ids": move(positions), "mask": move(mask),
            "sampler_logp": move(sampler), "ref_logp": move(ref), "advantages": move(advantages),
            "report": report}
