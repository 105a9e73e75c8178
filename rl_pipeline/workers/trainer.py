"""The policy trainer: one Ray actor per data-parallel rank, each holding a DeepSpeed engine.

Backends: gloo + fp32 on CPU, NCCL + bf16 on CUDA; ZeRO stage 0-3 from the recipe. The driver
sends each rank its micro-batches as token-id lists together with the global normaliser (the
target-token count of the whole global batch), so losses are global token means whatever the
rank count or accumulation (see algorithms/sft.py).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rl_pipeline.config import ModelConfig, TrainerConfig
from rl_pipeline.workers.trainer_sync import CudaWeightSender

log = logging.getLogger(__name__)


@dataclass
class TrainerSpec:
    """Everything a rank needs; the actor never reads the recipe file itself."""

    model: ModelConfig
    trainer: TrainerConfig
    total_steps: int
    seed: int = 0
    # "optimizer_step": the lr schedule advances with every optimiser step (SFT). "grpo_step": the
    # lr is a function of the GRPO step the driver names, so mu x mini-batches updates per step and
    # skipped steps do not shift it (set by the GRPO driver; no DeepSpeed scheduler then).
    schedule_unit: Literal["optimizer_step", "grpo_step"] = "optimizer_step"


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def collate(samples: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch. Samples hold input_ids, loss_mask and optional position_ids.

    No attention mask is passed to the model: with right padding a causal model never lets a
    real token attend to a pad, and position ids that restart mark packed samples, from which
    transformers builds a block-diagonal mask. Pads get their own position run and no loss.
    """
    width = max(len(s["input_ids"]) for s in samples)
    ids, mask, pos = [], [], []
    for s in samples:
        n = len(s["input_ids"])
        ids.append(list(s["input_ids"]) + [pad_id] * (width - n))
        mask.append(list(s["loss_mask"]) + [0] * (width - n))
        positions = list(s.get("position_ids") or range(n))
        pos.append(positions + list(range(width - n)))
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long, device=device)  # noqa: E731
    return {"input_ids": as_tensor(ids), "loss_mask": as_tensor(mask), "position_ids": as_tensor(pos)}


def deepspeed_config(cfg: TrainerConfig, device: str, world_size: int) -> dict:
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda")
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.grad_clip or 0.0,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": cfg.eps,
                "weight_decay": cfg.weight_decay,
                # torch's AdamW everywhere: DeepSpeed's fused Adam is CUDA-only and JIT-built with
                # nvcc at start-up, which failed on the H100 machine (DeepSpeed 0.19.8 cannot parse
                # torch's arch "9.0a"); torch's multi-tensor AdamW needs no build.
                "torch_adam": True,
                # torch's fused (single-kernel) AdamW on CUDA: one launch for all parameters
                # instead of a few per tensor; the CPU keeps the multi-tensor path.
                **({"fused": True} if device == "cuda" else {}),
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class TrainerWorker(CudaWeightSender):
    """One data-parallel rank. Created by TrainerGroup; call `setup` on all ranks together."""

    def __init__(self, rank: int, world_size: int, spec: TrainerSpec) -> None:
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.device = pick_device(spec.trainer.device)
        self.engine = None
        self.temperature = 1.0  # of the rollouts being trained on; grpo_step sets it

    def node_address(self) -> tuple[str, int]:
        from rl_pipeline.workers.group import node_address

        return node_address()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the DeepSpeed engine; returns the parameter count."""
        import deepspeed

        from rl_pipeline.algorithms.schedule import lambda_for
        from rl_pipeline.models.loading import load_causal_lm, load_tokenizer

        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
        )
        cfg, model_cfg = self.spec.trainer, self.spec.model
        if self.device == "cpu":
            # DeepSpeed JIT-compiles a shared-memory allreduce op (~1 min of g++) when its comm
            # backend starts; only its inference allreduce uses it, training goes through gloo.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if self.device == "cuda" else "gloo")
        seed_everything(self.spec.seed + self.rank)
        self.tokenizer = load_tokenizer(model_cfg.tokenizer or model_cfg.path, model_cfg.trust_remote_code)
        # Master weights stay fp32; DeepSpeed's bf16 mode casts the working copy.
        model = load_causal_lm(model_cfg.path, "float32", "cpu", model_cfg.trust_remote_code)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        schedule = lambda_for(cfg.lr, cfg.min_lr, cfg.warmup_steps, self.spec.total_steps, cfg.schedule)
        per_optimizer_step = self.spec.schedule_unit == "optimizer_step"
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(cfg, self.device, self.world_size),
            lr_scheduler=(lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))
            if per_optimizer_step else None,
        )
        return sum(p.numel() for p in model.parameters())

    def _accumulate(self, micro_batches: list, loss_of) -> None:
        """Backward every micro-batch, then one optimiser step at the boundary we set.

        `loss_of(micro_batch)` returns this micro-batch's share of the global loss (already
        divided by the global normaliser). DeepSpeed averages gradients over ranks; scaling by
        world size makes that a sum, so the update is the gradient of the global loss.
        """
        last = len(micro_batches) - 1
        for i, micro_batch in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(i == last)
            loss = loss_of(micro_batch)
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()

    def _grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    # ---- SFT -------------------------------------------------------------------------------
    def sft_step(self, micro_batches: list[list[dict]], global_target_tokens: int) -> dict:
        """One optimiser step over this rank's micro-batches; returns this rank's loss share."""
        from rl_pipeline.algorithms.sft import sft_loss
        from rl_pipeline.models.logprobs import sequence_logprobs

        self.engine.train()
        totals = {"loss_share": 0.0, "tokens": 0}

        def loss_of(samples: list[dict]) -> torch.Tensor:
            batch = collate(samples, self.tokenizer.pad_token_id, self.engine.device)
            logp, _ = sequence_logprobs(self.engine, batch["input_ids"], None, batch["position_ids"])
            loss = sft_loss(logp, batch["loss_mask"], global_target_tokens)
            totals["loss_share"] += loss.item()
            totals["tokens"] += sum(len(s["input_ids"]) for s in samples)
            return loss

        self._accumulate(micro_batches, loss_of)
        return {**totals, "grad_norm": self._grad_norm(), "lr": self.engine.get_lr()[0]}

    # ---- GRPO ------------------------------------------------------------------------------
    def grpo_step(self, mini_batches: list[tuple[list[list[dict]], tuple[float, float]]], loss_cfg, step: int,
                  inner_epochs: int = 1, temperature: float = 1.0) -> dict:
        """GRPO step `step` over this rank's share of the batch: `inner_epochs` (mu) epochs, each
        one optimiser step per mini-batch. mini_batches[k] = (this rank's micro-batches of
        mini-batch k, its global (tokens, sequences) normaliser over all ranks).

        Every update of the step uses the schedule's lr at `step`. pi_old is the policy before the
        first update: with one update it is the current forward (ratio 1, the gradient of the
        surrogate is still right); otherwise a no-grad pass computes it first. Log-probabilities
        are of softmax(logits / temperature), the distribution the engines sampled. Returns metric
        shares averaged over the updates (global values once summed over ranks).
        """
        from rl_pipeline.algorithms.grpo import LossNormaliser
        from rl_pipeline.batch import collate_grpo

        self.temperature = temperature
        lr = self._set_lr(step)
        pad = self.tokenizer.pad_token_id
        batches = [([collate_grpo(rows, pad, self.engine.device) for rows in micro], LossNormaliser(*norm))
                   for micro, norm in mini_batches]
        if inner_epochs * len(batches) > 1:
            with torch.no_grad():
                self.engine.eval()
                for micro, _ in batches:
                    for batch in micro:
                        batch["old_logp"] = self._logprobs(batch)[0]
        self.engine.train()
        shares: dict[str, float] = {}
        gap = _LogprobGap()
        for epoch in range(inner_epochs):
            for micro, norm in batches:
                check = gap if epoch == 0 else None
                self._accumulate(micro, lambda b, n=norm, c=check: self._grpo_micro_loss(b, n, loss_cfg, shares, c))
        updates = inner_epochs * len(batches)
        return {"shares": {k: v / updates for k, v in shares.items()}, "grad_norm": self._grad_norm(), "lr": lr,
                **gap.result()}

    def _set_lr(self, step: int) -> float:
        """Give every parameter group the lr of GRPO step `step` (trainer.* schedule over spec.total_steps)."""
        from rl_pipeline.algorithms.schedule import lr_at

        cfg = self.spec.trainer
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, self.spec.total_steps, cfg.schedule)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _logprobs(self, batch: dict, with_entropy: bool = False):
        """Completion-token logprobs (and entropies) of a collated GRPO micro-batch at self.temperature."""
        from rl_pipeline.models.logprobs import sequence_logprobs

        return sequence_logprobs(self.engine, batch["input_ids"], None, batch["position_ids"], with_entropy,
                                 temperature=self.temperature, positions=batch["mask"])

    def _grpo_micro_loss(self, batch: dict, norm, loss_cfg, shares: dict, sync_check) -> torch.Tensor:
        from rl_pipeline.algorithms.grpo import grpo_policy_loss

        logp, entropy = self._logprobs(batch, with_entropy=True)
        old = batch.get("old_logp", logp.detach())
        if sync_check is not None:
            sync_check.add(old, batch["sampler_logp"], batch["mask"])
        loss, metrics = grpo_policy_loss(
            logp, old, batch["advantages"], batch["mask"], normaliser=norm, config=loss_cfg,
            ref_logp=batch["ref_logp"], sampler_logp=batch["sampler_logp"] if loss_cfg.tis_cap else None,
        )
        metrics["policy/entropy"] = (entropy * batch["mask"]).sum() / max(norm.tokens, 1.0)
        for key, value in metrics.items():
            shares[key] = shares.get(key, 0.0) + float(value)
        return loss

    def export_weights(self) -> bytes | None:
        """The full weights as torch.save bytes on rank 0 (all ranks call it under ZeRO-3)."""
        import io

        state = self.full_state_dict()
        if state is None:
            return None
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    @torch.no_grad()
    def score(self, rows: list[dict], temperature: float = 1.0) -> list[list[float]]:
        """log p of each completion token under the current weights at `temperature` (the
        sampler/trainer gap check): rows hold prompt_ids and completion_ids."""
        from rl_pipeline.models.logprobs import sequence_logprobs

        self.engine.eval()
        sequences = [r["prompt_ids"] + r["completion_ids"] for r in rows]
        samples = [{"input_ids": ids, "loss_mask": [0] * len(ids)} for ids in sequences]
        batch = collate(samples, self.tokenizer.pad_token_id, self.engine.device)
        logp, _ = sequence_logprobs(self.engine, batch["input_ids"], None, batch["position_ids"],
                                    temperature=temperature)
        logp = logp.float().cpu()
        out = []
        for i, r in enumerate(rows):
            first = len(r["prompt_ids"]) - 1  # logp[t] scores token t + 1
            out.append(logp[i, first : first + len(r["completion_ids"])].tolist())
        return out

    @torch.no_grad()
    def eval_nll(self, micro_batches: list[list[dict]]) -> tuple[float, int]:
        """(sum of target-token NLL, target tokens) over this rank's share of a validation set."""
        from rl_pipeline.algorithms.sft import count_target_tokens, masked_nll_sum
        from rl_pipeline.models.logprobs import sequence_logprobs

        self.engine.eval()
        total, count = 0.0, 0
        for samples in micro_batches:
            batch = collate(samples, self.tokenizer.pad_token_id, self.engine.device)
            logp, _ = sequence_logprobs(self.engine, batch["input_ids"], None, batch["position_ids"])
            total += float(masked_nll_sum(logp, batch["loss_mask"]))
            count += count_target_tokens(batch["loss_mask"])
        return total, count

    @torch.no_grad()
    def greedy_matches(self, pairs: list[tuple[list[int], list[int]]]) -> int:
        """How many of this rank's (prompt ids, target ids) pairs greedy decoding reproduces
        exactly; needs the full weights on the rank (ZeRO stage <= 2)."""
        from rl_pipeline.models.generate import greedy_exact_matches

        self.engine.eval()
        return greedy_exact_matches(self.engine.module, pairs, self.tokenizer.pad_token_id,
                                    self.tokenizer.eos_token_id, self.spec.trainer.micro_batch_size, self.engine.device)

    # ---- state -----------------------------------------------------------------------------
    def save_state(self, checkpoint_dir: str) -> None:
        """Model, optimizer, scheduler (DeepSpeed) and this rank's RNG; all ranks call it."""
        self.engine.save_checkpoint(checkpoint_dir, tag="deepspeed")
        torch.save(rng_state(), Path(checkpoint_dir) / f"rng_rank{self.rank}.pt")

    def load_state(self, checkpoint_dir: str) -> None:
        path, _ = self.engine.load_checkpoint(checkpoint_dir, tag="deepspeed")
        if path is None:
            raise RuntimeError(f"rank {self.rank}: no DeepSpeed state in {checkpoint_dir}")
        set_rng_state(torch.load(Path(checkpoint_dir) / f"rng_rank{self.rank}.pt", weights_only=False))

    def full_state_dict(self) -> dict | None:
        """The unsharded weights on rank 0 (None elsewhere); every rank must call it under ZeRO-3."""
        from rl_pipeline.models.loading import without_tied_duplicates

        if self.spec.trainer.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        elif self.rank == 0:
            state = self.engine.module.state_dict()
        else:
            state = None
        return None if state is None else without_tied_duplicates(state)

    def save_hf(self, out_dir: str) -> str | None:
        """Write the model in Hugging Face format (rank 0 writes; all ranks call under ZeRO-3)."""
        from rl_pipeline.models.loading import save_hf_model

        state = self.full_state_dict()
        if self.rank != 0:
            return None
        save_hf_model(self.engine.module, self.tokenizer, out_dir, state_dict=state)
        return out_dir


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


class TrainerGroup:
    """The driver's handle on all trainer ranks: start them, then call them together."""

    def __init__(self, group) -> None:
        self.group = group

    @classmethod
    def start(cls, spec: TrainerSpec, strategy: str = "PACK", placement=None) -> "TrainerGroup":
        """`placement` (a group.Placement from rl_pipeline.cluster) overrides strategy and resources."""
        import ray

        from rl_pipeline.workers.group import ActorGroup, Placement, Resources

        cfg = spec.trainer
        n = cfg.num_ranks
        placement = placement or Placement(Resources(cpus=cfg.cpus_per_rank, gpus=cfg.gpus_per_rank), strategy)
        group = ActorGroup.start(
            "trainer", TrainerWorker, n, init_args=[(rank, n, spec) for rank in range(n)], **placement.group_kwargs(),
        )
        addr, port = ray.get(group.actors[0].node_address.remote())  # rank 0 hosts the rendezvous
        group.call_all("setup", addr, port)
        return cls(group)

    def sft_step(self, shards: list[list[list[dict]]], global_target_tokens: int) -> dict:
        """One optimiser step; shards[r] are rank r's micro-batches. Returns global metrics."""
        results = self.group.call_each("sft_step", [(s, global_target_tokens) for s in shards])
        return {
            "loss": sum(r["loss_share"] for r in results),
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
            "tokens": sum(r["tokens"] for r in results),
        }

    def grpo_step(self, mini_batches: list, loss_cfg, step: int, inner_epochs: int = 1,
                  temperature: float = 1.0) -> dict:
        """GRPO step `step`: mu epochs of one optimiser step per mini-batch; mini_batches[k] =
        (shards[rank][micro_batch], that mini-batch's global LossNormaliser), as
        GRPOBatch.mini_batches builds them. Metric shares summed over ranks (global values)."""
        per_rank = self.group.call_each("grpo_step", [
            ([(shards[rank], (norm.tokens, norm.sequences)) for shards, norm in mini_batches], loss_cfg, step,
             inner_epochs, temperature)
            for rank in range(len(self.group))
        ])
        metrics: dict[str, float] = {}
        for result in per_rank:
            for key, value in result["shares"].items():
                metrics[key] = metrics.get(key, 0.0) + value
        gap_count = sum(r["gap_count"] for r in per_rank)
        metrics["rollout/logprob_diff_mean"] = sum(r["gap_sum"] for r in per_rank) / max(gap_count, 1)
        metrics["rollout/logprob_diff_max"] = max(r["gap_max"] for r in per_rank)
        metrics["policy/grad_norm"] = per_rank[0]["grad_norm"]
        metrics["policy/lr"] = per_rank[0]["lr"]
        return metrics

    def export_weights(self):
        """ObjectRef of the full weights (torch.save bytes) from rank 0; the driver never
        fetches it, engines do. Waits until every rank took part (ZeRO-3 gathers)."""
        import ray

        refs = [actor.export_weights.remote() for actor in self.group.actors]
        ray.get(refs[1:])  # the other ranks return None; this surfaces their errors
        ray.wait(refs[:1])
        return refs[0]

    def node_ids(self) -> list[str]:
        return self.group.call_all("node_id")

    def score(self, rows: list[dict], temperature: float = 1.0) -> list[list[float]]:
        """Per-token completion logprobs under the current weights at `temperature`, from rank 0."""
        import ray

        return ray.get(self.group.actors[0].score.remote(rows, temperature))

    def eval_loss(self, shards: list[list[list[dict]]]) -> float:
        results = self.group.call_each("eval_nll", [(s,) for s in shards])
        total, count = map(sum, zip(*results))
        return total / max(count, 1)

    def greedy_accuracy(self, pairs: list[tuple[list[int], list[int]]]) -> float:
        """Fraction of (prompt, target) pairs that greedy decoding reproduces; ranks split them."""
        n = len(self.group)
        matches = self.group.call_each("greedy_matches", [(pairs[r::n],) for r in range(n)])
        return sum(matches) / max(len(pairs), 1)

    def save_state(self, checkpoint_dir: str) -> None:
        self.group.call_all("save_state", checkpoint_dir)

    def load_state(self, checkpoint_dir: str) -> None:
        self.group.call_all("load_state", checkpoint_dir)

    def save_hf(self, out_dir: str) -> str:
        return self.group.call_all("save_hf", out_dir)[0]

    def shutdown(self) -> None:
        self.group.shutdown()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
