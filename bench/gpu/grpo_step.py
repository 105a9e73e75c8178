"""GPU benchmark 4: one `rlp grpo` step on one GPU, per phase, and tokens/s/GPU.

    python bench/gpu/grpo_step.py [--model 0.5b] [--steps 4] [--warmup 1] [--prompts 32] [--group 8] [--max-tokens 256]

train_grpo as users run it, colocated on one GPU (trainer rank and vLLM engine share the device,
half a GPU each in Ray, separate bundles: cluster.colocate=true asked the cluster check for 2 GPUs
on the H100, see BENCHMARKS.md; engine gpu_memory_utilization 0.3), weights synced
by CUDA IPC after every step, ZeRO-2 bf16, micro batch 32, no reference model (kl_coef 0),
prompts of 16 random letters in the chat template, temperature 1.0, reward = share of letters
a-m in the completion (`letter_share` below: cheap, never flat on a random model). Phases are
the driver's time/* metrics averaged over steps after --warmup; tokens/s/GPU = trained tokens
(prompt + completion of every sample) per step second, over 1 GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PHASES = ("generate", "reward", "train", "sync", "other")


def letter_share(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Share of the completion's characters that are letters a-m (0 for an empty completion)."""
    return [sum(c in "abcdefghijklm" for c in text) / max(len(text), 1) for text in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="0.5b", choices=sorted(common.MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--work", default="/tmp/rlp-gpu-bench")
    args = parser.parse_args()
    common.gpu_env()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu/grpo_step.py needs a CUDA device")
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.pipelines.grpo import train_grpo

    common.header(f"GRPO step: {args.model}, {args.prompts} prompts x G={args.group}, max {args.max_tokens} tokens, "
                  f"colocated on 1 GPU, {args.steps} steps (means over steps {args.warmup + 1}-{args.steps})")
    work = Path(args.work)
    model_dir, params = common.build_model(work, args.model)
    data = common.write_text_task(work / "grpo.jsonl", rows=args.prompts * args.steps * 2, length=40)
    recipe = parse_recipe({
        "name": "gpu-bench-grpo", "output_dir": str(work / "runs"), "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(data)}, "max_length": args.max_tokens + 64},
        "trainer": {"num_ranks": 1, "zero_stage": 2, "device": "cuda", "precision": "bf16", "gpus_per_rank": 0.5,
                    "micro_batch_size": 32, "lr": 1e-6, "min_lr": 1e-6, "schedule": "constant"},
        "rollout": {"num_engines": 1, "temperature": 1.0, "max_tokens": args.max_tokens, "gpus_per_engine": 0.5,
                    "gpu_memory_utilization": 0.3, "max_model_len": args.max_tokens + 64},
        "grpo": {"steps": args.steps, "prompts_per_step": args.prompts, "group_size": args.group, "kl_coef": 0.0,
                 "seed": 0},
        "rewards": {"functions": [{"name": f"{Path(__file__).resolve()}:letter_share"}]},
        "cluster": {"colocate": False},  # half a GPU each in separate bundles: the same device
        "tracking": {"tensorboard": False},
    })
    result = train_grpo(recipe, run_dir=work / "grpo-run")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r]
    steady = rows[args.warmup:]
    step = mean(r["time/step"] for r in steady)
    print(f"\n| phase | seconds | share |\n|---|---:|---:|")
    for phase in PHASES:
        s = mean(r.get(f"time/{phase}", 0.0) for r in steady)
        print(f"| {phase} | {s:.3f} | {100 * s / step:.1f}% |")
    print(f"| step | {step:.3f} | 100% |")
    trained = mean(r["throughput/tokens_per_s"] for r in steady)
    print(f"\ntokens/s/GPU (trained prompt+completion tokens / step time, 1 GPU): {trained:,.0f}")
    print(f"generated tokens/s during generate: {mean(r['throughput/generated_tokens_per_s'] for r in steady):,.0f}; "
          f"mean completion {mean(r['rollout/response_length_mean'] for r in steady):.0f} tokens; "
          f"sync {mean(r['sync/seconds'] for r in steady):.3f} s; logprob gap after sync mean "
          f"{mean(r['rollout/logprob_diff_mean'] for r in rows[1:]):.4f} max "
          f"{max(r['rollout/logprob_diff_max'] for r in rows[1:]):.4f}", flush=True)


if __name__ == "__main__":
    main()
