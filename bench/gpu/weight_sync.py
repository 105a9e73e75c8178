"""GPU benchmark 3: weight sync seconds and GB/s, colocated (CUDA IPC + sleep/wake) or separated (NCCL).

    python bench/gpu/weight_sync.py [--layout colocated|separated] [--model 0.5b] [--syncs 5]

colocated: one GPU; trainer rank 0 (DeepSpeed ZeRO-2, bf16, half the GPU in Ray) and one vLLM
engine (the other half, gpu_memory_utilization 0.3, sleep mode on) in different processes.
Each round is what a colocated GRPO step does around training: engine.sleep(1) -> one SFT step
(so the weights really change) -> wake_up(weights) -> WeightSync.push (CUDA IPC through vLLM's
"ipc" engine) -> wake_up(kv_cache) -> sample 32 prompts x 32 tokens and score them with the
trainer: the bf16 sampler/trainer logprob gap. separated: two GPUs, trainer on one, engine on
the other, NCCL broadcast through vLLM's "nccl" engine (the first push builds the group and is
reported apart), no sleep. The stale gap (after a step, before any sync) shows what the gap
looks like when a sync is missing. GB = bytes of the bf16 weights sent (tied head once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def start(model: str, layout: str):
    from rl_pipeline.config import ModelConfig, RolloutConfig, TrainerConfig
    from rl_pipeline.workers.rollout import RolloutGroup
    from rl_pipeline.workers.trainer import TrainerGroup, TrainerSpec

    share = 0.5 if layout == "colocated" else 1.0
    engines = RolloutGroup.start(model, RolloutConfig(
        gpus_per_engine=share, gpu_memory_utilization=0.3 if share < 1 else 0.85, max_model_len=512,
        max_tokens=32), seed=0)  # the engine first: vLLM sizes its share of the GPU at start-up
    trainer = TrainerGroup.start(TrainerSpec(ModelConfig(path=model), TrainerConfig(
        device="cuda", precision="bf16", gpus_per_rank=share, cpus_per_rank=0.5, micro_batch_size=32, lr=1e-4,
        min_lr=1e-4, schedule="constant"), total_steps=1000))
    return trainer, engines


def sft_step(trainer, prompts) -> float:
    """One optimiser step on the prompts repeated (loss on the repeat): the weights move."""
    samples = [{"input_ids": p + p, "loss_mask": [0] * len(p) + [1] * len(p)} for p in prompts]
    return trainer.sft_step([[samples]], sum(len(p) for p in prompts))["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", default="colocated", choices=("colocated", "separated"))
    parser.add_argument("--model", default="0.5b", choices=sorted(common.MODELS))
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--work", default="/tmp/rlp-gpu-bench")
    args = parser.parse_args()
    common.gpu_env()
    import ray
    import torch

    if torch.cuda.device_count() < (2 if args.layout == "separated" else 1):
        sys.exit(f"bench/gpu/weight_sync.py --layout {args.layout} needs {2 if args.layout == 'separated' else 1} GPU(s)")
    from rl_pipeline.weight_sync import WeightSync, logprob_gap

    common.header(f"weight sync, {args.layout}, {args.model}, {args.syncs} timed syncs")
    model_dir, _ = common.build_model(Path(args.work), args.model)
    ray.init(include_dashboard=False, log_to_driver=True)
    trainer, engines = start(str(model_dir), args.layout)
    prompts = common.random_prompts(32, 32, seed=1)
    engine = engines.engines[0]
    sync = WeightSync("cuda")
    sft_step(trainer, prompts)
    stale = logprob_gap(trainer, engines, prompts, seed=7)
    first = sync.push(trainer, engines)  # NCCL: builds the group; IPC: opens the handles
    rows = []
    for i in range(args.syncs):
        row = {}
        if args.layout == "colocated":
            row["sleep_s"] = ray.get(engine.sleep.remote(1))
        row["loss"] = sft_step(trainer, prompts)
        if args.layout == "colocated":
            row["wake_weights_s"] = ray.get(engine.wake_up.remote(["weights"]))
        stats = sync.push(trainer, engines)
        if args.layout == "colocated":
            row["wake_kv_s"] = ray.get(engine.wake_up.remote(["kv_cache"]))
        row.update(seconds=stats["sync/seconds"], bytes=stats["sync/bytes"],
                   **logprob_gap(trainer, engines, prompts, seed=100 + i))
        rows.append(row)
    gb = rows[0]["bytes"] / 1e9
    sec = statistics.median(r["seconds"] for r in rows)
    print(f"\nbackend {sync.backend.name}; {gb:.3f} GB of bf16 weights per sync; first push {first['sync/seconds']:.3f} s"
          f" (includes {'the NCCL rendezvous' if args.layout == 'separated' else 'opening the IPC handles'})")
    print("| sync | seconds | GB/s | s per GB | gap mean | gap max |" + (" sleep s | wake weights s | wake kv s |"
          if args.layout == "colocated" else "") + "\n|---|---:|---:|---:|---:|---:|" +
          ("---:|---:|---:|" if args.layout == "colocated" else ""))
    print(f"| stale (no sync after a step) | - | - | - | {stale['gap_mean']:.4f} | {stale['gap_max']:.4f} |" +
          (" - | - | - |" if args.layout == "colocated" else ""))
    for i, r in enumerate(rows, 1):
        extra = f" {r['sleep_s']:.3f} | {r['wake_weights_s']:.3f} | {r['wake_kv_s']:.3f} |" \
            if args.layout == "colocated" else ""
        print(f"| {i} | {r['seconds']:.4f} | {gb / r['seconds']:.1f} | {r['seconds'] / gb:.4f} | {r['gap_mean']:.4f} "
              f"| {r['gap_max']:.4f} |{extra}")
    print(f"median {sec:.4f} s = {sec / gb:.4f} s/GB ({gb / sec:.1f} GB/s); target <= 0.1 s per GB: "
          f"{'met' if sec / gb <= 0.1 else 'MISSED'}; gap after sync: mean <= "
          f"{max(r['gap_mean'] for r in rows):.4f}, max <= {max(r['gap_max'] for r in rows):.4f} "
          f"(stale: {stale['gap_mean']:.4f})", flush=True)
    try:  # the CPU path (torch.save bytes through Ray's object store, reload_weights) on the same actors
        from rl_pipeline.weight_sync import ObjectStoreBackend

        t = time.perf_counter()
        ObjectStoreBackend().push(trainer, engines)
        cpu_s = time.perf_counter() - t
        gap = logprob_gap(trainer, engines, prompts, seed=999)
        print(f"for comparison, the CPU path (object store) on these GPUs: {cpu_s:.2f} s ({cpu_s / gb:.2f} s/GB), "
              f"gap mean {gap['gap_mean']:.4f}", flush=True)
    except Exception as exc:  # report, do not hide the table above
        print(f"for comparison, the CPU path (object store) failed here: {type(exc).__name__}: {str(exc)[:200]}")
    engines.shutdown()
    trainer.shutdown()


if __name__ == "__main__":
    main()
