"""A trainer rank's DeepSpeed engine: build it, accumulate and step, save and load its state.

`TrainerEngine` is the core part of `TrainerWorker`: it owns the process group, the model and the
optimizer (DeepSpeed: gloo + fp32 on CPU, NCCL + bf16 on CUDA; ZeRO stage 0-3 from the recipe),
and what every training objective shares: one optimiser step over micro-batches (`accumulate`),
the lr of a GRPO step, checkpoints and the Hugging Face export. Each objective (SFT, GRPO, reward
model, ...) is a part of its own next to this module, given this one, that only computes its loss;
`TrainerSpec.head` picks the model class (a causal LM, or a scalar-head classifier for RMs).
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
    # "causal_lm": the model of model.path as it is (SFT, GRPO). "scalar": a sequence classifier
    # with one output (a reward model, `rlp rm`); a causal-LM checkpoint gets a new score head.
    head: Literal["causal_lm", "scalar"] = "causal_lm"
    # True when the ranks are the only busy processes while they train (SFT, RM, synchronous
    # GRPO): a CPU rank then takes its share of the cores. False when engines generate meanwhile
    # (grpo.overlap_generation): one thread each.
    alone: bool = True


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
    if cfg.offload_optimizer and device == "cuda":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.offload_params and device == "cuda":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    # The optimiser step runs where the master weights live: on the GPU with torch's fused AdamW,
    # in CPU memory (ZeRO-Offload) with torch's multi-tensor AdamW.
    fused = device == "cuda" and not cfg.offload_optimizer
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
                **({"fused": True} if fused else {}),
            },
        },
        # ZeRO-Offload insists on DeepSpeed's CPU Adam, a C++ op JIT-built at start-up (a compiler
        # and a minute per machine, and the build failed on the GPU image's arch string before);
        # torch's AdamW on the CPU master weights needs no build.
        "zero_force_ds_cpu_optimizer": False,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class TrainerEngine:
    """One data-parallel rank's engine. Created by TrainerGroup; call `setup` on all ranks together."""

    def __init__(self, rank: int, world_size: int, spec: TrainerSpec) -> None:
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.device = pick_device(spec.trainer.device)
        self.engine = None  # DeepSpeed's, built by setup
        self.tokenizer = None

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
        from rl_pipeline.models.loading import load_causal_lm, load_scalar_head_model, load_tokenizer

        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
        )
        cfg, model_cfg = self.spec.trainer, self.spec.model
        if self.device == "cpu":
            # DeepSpeed JIT-compiles a shared-memory allreduce op (~1 min of g++) when its comm
            # backend starts; only its inference allreduce uses it, training goes through gloo.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
            torch.set_num_threads(cpu_threads(cfg.cpu_threads, self.world_size, self.spec.alone))
        deepspeed.init_distributed(dist_backend="nccl" if self.device == "cuda" else "gloo")
        seed_everything(self.spec.seed + self.rank)
        self.tokenizer = load_tokenizer(model_cfg.tokenizer or model_cfg.path, model_cfg.trust_remote_code)
        # Master weights stay fp32; DeepSpeed's bf16 mode casts the working copy. A LoRA base is
        # frozen (no master copy): in bf16 it is read straight in, without a float32 pass in host memory.
        bf16 = deepspeed_config(cfg, self.device, self.world_size)["bf16"]["enabled"]
        base_dtype = "bfloat16" if cfg.lora is not None and bf16 else "float32"
        if self.spec.head == "scalar":
            model = load_scalar_head_model(model_cfg.path, self.tokenizer, model_cfg.trust_remote_code)
        else:
            model = load_causal_lm(model_cfg.path, base_dtype, "cpu", model_cfg.trust_remote_code)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.lora is not None:  # a frozen base (cast to bf16 by DeepSpeed on CUDA) and trainable adapters
            from rl_pipeline.models.lora import wrap

            model = wrap(model, cfg.lora, self.spec.head, cfg.gradient_checkpointing)
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

    def accumulate(self, micro_batches: list, loss_of) -> None:
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

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def set_lr(self, step: int) -> float:
        """Give every parameter group the lr of GRPO step `step` (trainer.* schedule over spec.total_steps)."""
        from rl_pipeline.algorithms.schedule import lr_at

        cfg = self.spec.trainer
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, self.spec.total_steps, cfg.schedule)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    @property
    def lora(self) -> bool:
        return self.spec.trainer.lora is not None

    def save_state(self, checkpoint_dir: str) -> None:
        """Model, optimizer, scheduler (DeepSpeed) and this rank's RNG; all ranks call it. With LoRA
        the frozen base is left out: it is model.path, loaded again on resume."""
        self.engine.save_checkpoint(checkpoint_dir, tag="deepspeed", exclude_frozen_parameters=self.lora)
        torch.save(rng_state(), Path(checkpoint_dir) / f"rng_rank{self.rank}.pt")

    def load_state(self, checkpoint_dir: str) -> None:
        path, _ = self.engine.load_checkpoint(checkpoint_dir, tag="deepspeed", load_module_strict=not self.lora)
        if path is None:
            raise RuntimeError(f"rank {self.rank}: no DeepSpeed state in {checkpoint_dir}")
        set_rng_state(torch.load(Path(checkpoint_dir) / f"rng_rank{self.rank}.pt", weights_only=False))

    def full_state_dict(self) -> dict | None:
        """The unsharded weights on rank 0 (None elsewhere); every rank must call it under ZeRO-3."""
        from rl_pipeline.models.loading import without_tied_duplicates

        if self.lora:  # the base with the adapters merged in (no ZeRO-3 with LoRA: weights are whole)
            from rl_pipeline.models.lora import merged_weights

            return dict(merged_weights(self.engine.module)) if self.rank == 0 else None
        if self.spec.trainer.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        elif self.rank == 0:
            state = self.engine.module.state_dict()
        else:
            state = None
        return None if state is None else without_tied_duplicates(state)

    def save_hf(self, out_dir: str) -> str | None:
        """Write the model in Hugging Face format (rank 0 writes; all ranks call under ZeRO-3).

        With LoRA, out_dir gets the merged model (trainer.lora.merge_on_export) or the adapters
        alone, and `adapter_dir(out_dir)` the adapters in peft's format either way."""
        from rl_pipeline.models.loading import save_hf_model

        if self.lora and not self.spec.trainer.lora.merge_on_export:
            state = None
        else:
            state = self.full_state_dict()
        if self.rank != 0:
            return None
        if not self.lora:
            save_hf_model(self.engine.module, self.tokenizer, out_dir, state_dict=state)
            return out_dir
        from rl_pipeline.models.lora import save_adapter

        save_adapter(self.engine.module, adapter_dir(out_dir), self.spec.model.path)
        if state is None:  # final_model is the adapter (peft's layout) plus the tokenizer
            save_adapter(self.engine.module, out_dir, self.spec.model.path)
            self.tokenizer.save_pretrained(out_dir)
        else:
            save_hf_model(self.engine.module.get_base_model(), self.tokenizer, out_dir, state_dict=state)
        return out_dir


def adapter_dir(model_dir: str | Path) -> Path:
    """Where a LoRA run's adapters are saved beside an exported model: final_model -> final_adapter."""
    path = Path(model_dir)
    return path.with_name(path.name.replace("model", "adapter") if "model" in path.name else path.name + "_adapter")



def cpu_threads(configured: int | None, ranks: int, alone: bool) -> int:
    """torch threads of a CPU rank: `configured`; else, for ranks that are the only busy processes,
    this process's cores shared among `ranks` (Ray starts actors with OMP_NUM_THREADS=1, and an SFT
    rank alone on 2 cores used one: 0.29 -> 0.19 s a step with two); else one. OpenMP threads on
    cores that other processes keep busy wait for each other (5-10x slower: bench/sft_throughput.py)."""
    if configured:
        return configured
    return max(1, len(os.sched_getaffinity(0)) // max(ranks, 1)) if alone else 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
