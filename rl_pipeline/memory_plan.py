"""The memory guard: estimate each GPU role's memory from the model config and the recipe, and
refuse a plan that cannot fit before any actor starts (instead of an OOM minutes in).

Estimates, in GiB per GPU (P = parameters, R = trainer ranks that ZeRO shards over):
- trainer rank: bf16 working weights 2P (ZeRO-3: 2P/R), fp32 master weights 4P/R, Adam moments
  8P/R, gradients 2P/R + 4P/R (the bf16 partition and the fp32 copy of the step) + DeepSpeed's
  reduce bucket (with trainer.offload_optimizer: no master, moments or gradient partitions on the
  GPU, two buckets; with trainer.lora the master weights, moments and gradients are those of the
  adapters alone, L = rank x (in + out) per adapted projection), activations of one micro-batch (per token and
  layer: the tensors a Qwen2/Llama block keeps for backward, or only its input with
  trainer.gradient_checkpointing, plus one block recomputed), the chunked LM head of
  models/logprobs.py, and the CUDA context.
- rollout engine: what vLLM takes, rollout.gpu_memory_utilization of the card (weights, KV cache,
  CUDA graphs), plus its CUDA context; asleep (hybrid engine) about the context alone.
Colocated without the hybrid engine both must fit together; with it, the trainer while training
next to a sleeping engine, and the engine while generating next to an offloaded trainer.
bench/gpu/capacity.py measures the peaks these estimates are checked against (BENCHMARKS.md,
tests/unit/test_memory_plan.py). Not modelled: start-up transients (the trainer loads float32
weights before DeepSpeed casts them, 4P, while the engine sleeps).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rl_pipeline.config import InputError, Recipe

log = logging.getLogger(__name__)

GIB = 2**30
CUDA_CONTEXT_GIB = 0.75  # per process: CUDA context, cuBLAS workspaces, NCCL buffers
REDUCE_BUCKET_BYTES = 5e8 * 2  # DeepSpeed's default reduce bucket (5e8 elements), bf16
LOGPROB_CHUNK_TOKENS = 1024  # models/logprobs.DEFAULT_CHUNK_TOKENS
FRAGMENTATION = 1.10  # torch's caching allocator rarely packs tighter


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        heads = config["num_attention_heads"]
        return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                   intermediate=config["intermediate_size"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads, vocab=config["vocab_size"],
                   tied=bool(config.get("tie_word_embeddings", False)))

    @property
    def params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + q + 2 * kv  # q, k, v, o (+ q/k/v biases as in Qwen2)
        block = attention + 3 * h * self.intermediate + 2 * h
        embeddings = self.vocab * h * (1 if self.tied else 2)
        return self.layers * block + embeddings + h

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Adapter parameters: rank x (in + out) for each targeted projection of each block."""
        h, kv, q, i = self.hidden, self.kv_heads * self.head_dim, self.heads * self.head_dim, self.intermediate
        sizes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                 "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(rank * sum(sizes[t]) for t in targets if t in sizes)

    def activation_bytes_per_token_layer(self) -> int:
        """bf16 tensors one decoder block keeps for backward per token (fp32 norm inputs)."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return 2 * (6 * h + 2 * kv + 4 * i) + 2 * 4 * h


@dataclass
class Estimate:
    role: str
    gib: float
    parts: dict[str, float]

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items() if v >= 0.05)
        return f"{self.role} ~{self.gib:.1f} GiB ({parts})"


def trainer_estimate(shape: ModelShape, recipe: Recipe) -> Estimate:
    t = recipe.trainer
    P, R = shape.params, t.num_ranks
    # What the optimiser updates: every weight, or the LoRA adapters alone (the base is frozen).
    trained = P if t.lora is None else shape.lora_params(t.lora.rank, t.lora.target_modules)
    bf16 = t.precision in ("auto", "bf16")
    shard = R if t.zero_stage >= 1 else 1
    weights = (2 if bf16 else 4) * P / (R if t.zero_stage == 3 else 1)
    if t.offload_params:
        weights = 0.0
    master = 0.0 if (t.offload_optimizer or not bf16) else 4 * trained / shard
    adam = 0.0 if t.offload_optimizer else 8 * trained / shard
    bucket = min(REDUCE_BUCKET_BYTES, 2 * trained)
    if t.offload_optimizer:  # gradients go to the CPU partition as they are reduced: buckets stay
        grads = 2 * bucket
    else:
        grads = 6 * trained / (shard if t.zero_stage >= 2 else 1) + bucket
    tokens = t.max_tokens_per_micro_batch or t.micro_batch_size * _max_length(recipe)
    per_layer = shape.activation_bytes_per_token_layer()
    if t.gradient_checkpointing:
        activations = tokens * (shape.layers * 2 * shape.hidden + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    # The LM head of models/logprobs.py: chunks of float32 logits (+ log-softmax, entropy) and
    # the final hidden states of the micro-batch.
    head = LOGPROB_CHUNK_TOKENS * shape.vocab * 4 * 3 + tokens * shape.hidden * 2 * 2
    parts = {"weights": weights, "master": master, "adam": adam, "grads": grads,
             "activations": activations, "lm_head": head}
    parts = {k: v / GIB for k, v in parts.items()}
    total = sum(parts.values()) * FRAGMENTATION + CUDA_CONTEXT_GIB
    parts["context"] = CUDA_CONTEXT_GIB
    return Estimate("trainer rank", total, parts)


def engine_estimate(shape: ModelShape, recipe: Recipe, device_gib: float) -> Estimate:
    r = recipe.rollout
    budget = (r.kv_cache_memory_bytes / GIB + 2 * shape.params / r.tensor_parallel_size / GIB
              if r.kv_cache_memory_bytes else r.gpu_memory_utilization * device_gib)
    return Estimate("rollout engine", budget + CUDA_CONTEXT_GIB,
                    {"gpu_memory_utilization": budget, "context": CUDA_CONTEXT_GIB})


def check_memory_plan(recipe: Recipe, shape: ModelShape, device_gib: float, hybrid: bool) -> list[Estimate]:
    """Raise InputError naming the role, the estimate and the keys to change when a GPU plan
    cannot fit on cards of `device_gib`; returns the estimates otherwise."""
    trainer = trainer_estimate(shape, recipe)
    engine = engine_estimate(shape, recipe, device_gib)
    weights_gib = 2 * shape.params / recipe.rollout.tensor_parallel_size / GIB
    trainer_keys = ("trainer.max_tokens_per_micro_batch, trainer.gradient_checkpointing, trainer.offload_optimizer, "
                    "trainer.zero_stage / trainer.num_ranks")
    problems = []
    if engine.parts["gpu_memory_utilization"] < weights_gib * 1.1:
        problems.append(f"the rollout engine's share ({engine.parts['gpu_memory_utilization']:.1f} GiB) does not hold "
                        f"its bf16 weights ({weights_gib:.1f} GiB) and a KV cache: raise "
                        f"rollout.gpu_memory_utilization or rollout.tensor_parallel_size")
    if recipe.cluster.colocate and not hybrid:
        together = trainer.gib + engine.gib
        if together > device_gib:
            problems.append(f"colocated without the hybrid engine, {trainer.describe()} + {engine.describe()} = "
                            f"{together:.1f} GiB > the {device_gib:.1f} GiB card: set cluster.hybrid_engine: true, "
                            f"lower rollout.gpu_memory_utilization, or change {trainer_keys}")
    else:
        asleep = CUDA_CONTEXT_GIB if hybrid else 0.0
        if trainer.gib + asleep > device_gib:
            problems.append(f"{trainer.describe()} > the {device_gib:.1f} GiB card: change {trainer_keys}")
        # During generation the trainer keeps its context, and with trainer.offload_optimizer its
        # bf16 weights (workers/trainer/memory.py leaves them: host memory goes to the optimizer).
        # With trainer.lora the frozen base is not an optimizer state: it stays too.
        keeps_weights = recipe.trainer.offload_optimizer or recipe.trainer.lora is not None
        resident = CUDA_CONTEXT_GIB + (trainer.parts["weights"] if keeps_weights else 0.0)
        if hybrid and engine.gib + resident > device_gib:
            problems.append(f"{engine.describe()} next to the offloaded trainer ({resident:.1f} GiB) > the "
                            f"{device_gib:.1f} GiB card: lower rollout.gpu_memory_utilization")
    if problems:
        raise InputError("memory plan: " + "; ".join(problems) + " (estimates: rl_pipeline/memory_plan.py; "
                         "cluster.memory_check: false skips this check)")
    return [trainer, engine]


def model_shape(model_path: str) -> ModelShape | None:
    """The shape from a local model folder's config.json; None when there is none to read."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    data = data.get("text_config", data)  # multimodal wrappers keep the LM's fields here
    try:
        return ModelShape.from_config(data)
    except KeyError:
        return None


def probe_gpu_gib() -> float | None:
    """Memory of a GPU of the connected Ray cluster (a one-off task on a sliver of one), None
    without GPUs. Assumes one kind of GPU per cluster."""
    import ray

    if ray.cluster_resources().get("GPU", 0) <= 0:
        return None

    @ray.remote(num_gpus=0.01, num_cpus=0)
    def total_gib() -> float:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GIB

    return ray.get(total_gib.remote())


def decide_hybrid_engine(recipe: Recipe, shape: ModelShape, device_gib: float) -> bool:
    """`cluster.hybrid_engine` for colocated GPUs: as set, or (None) on only when the plan does
    not fit without it."""
    if recipe.cluster.hybrid_engine is not None:
        return recipe.cluster.hybrid_engine
    try:
        check_memory_plan(recipe, shape, device_gib, hybrid=False)
    except InputError:
        return True
    return False


def plan_memory(recipe: Recipe, run_dir: Path | None = None) -> bool:
    """What `rlp grpo` runs after connecting to Ray, before any actor starts: decide whether the
    hybrid engine is on and check that the plan fits. Returns the decision.

    `cluster.hybrid_engine` None (the default) turns it on for colocated GPUs only when the
    estimates say trainer and engine do not fit on the card together: taking turns costs time
    (the trainer's states cross PCIe twice a step), so a plan that fits without it runs without
    it. The estimates go to the log and to run_dir/memory_plan.json.
    """
    c = recipe.cluster
    device_gib = probe_gpu_gib()
    colocated_gpus = c.colocate and device_gib is not None and not recipe.grpo.overlap_generation
    shape = model_shape(recipe.model.path) if c.memory_check and device_gib is not None else None
    if shape is None:  # nothing to estimate from (or asked not to): on wherever it can be
        return c.hybrid_engine if c.hybrid_engine is not None else colocated_gpus
    hybrid = decide_hybrid_engine(recipe, shape, device_gib) if colocated_gpus else bool(c.hybrid_engine)
    estimates = check_memory_plan(recipe, shape, device_gib, hybrid)
    summary = f"({device_gib:.1f} GiB cards, hybrid engine {'on' if hybrid else 'off'}): " + "; ".join(
        e.describe() for e in estimates)
    log.info("memory plan %s", summary)
    if run_dir is not None:
        from rl_pipeline.atomic import atomic_write_text

        atomic_write_text(Path(run_dir) / "memory_plan.json", json.dumps({
            "summary": summary, "device_gib": device_gib, "params": shape.params, "hybrid_engine": hybrid,
            "estimates": [{"role": e.role, "gib": e.gib, "parts": e.parts} for e in estimates]}, indent=2))
    return hybrid


def _max_length(recipe: Recipe) -> int:
    if recipe.rollout is not None and recipe.rollout.max_model_len:
        return recipe.rollout.max_model_len
    return recipe.data.max_length if recipe.data is not None else 2048
