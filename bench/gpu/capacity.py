"""GPU benchmark 7: how large a model GRPO trains on one H200, with and without the hybrid engine.

    python bench/gpu/capacity.py [--configs 1.5b:static,1.5b:hybrid,7b:large] [--steps 3]
                                 [--prompts 32] [--group 8] [--max-tokens 1024]

Each configuration is `python3 -m rl_pipeline.cli grpo RECIPE` as a user runs it, with only the
bench's model (Qwen2 block shapes of bench/gpu/common.py, random bf16 weights, Qwen2.5's 151,936-id
vocabulary), prompts, reward (vs_trl.id_share) and batch as overrides. No stop string: a random
model samples EOS almost never, so every completion runs to --max-tokens, the worst case for
memory. Modes:
- static: recipes/gpu/grpo_1gpu.yaml with `cluster.hybrid_engine=false` (engine 0.35 of the card,
  both resident: the split before the hybrid engine);
- hybrid: grpo_1gpu.yaml with the hybrid engine and the engine at 0.8 of the card while it generates;
- hybrid-ckpt: hybrid plus `trainer.gradient_checkpointing=true`;
- large: recipes/gpu/grpo_1gpu_large.yaml as shipped (hybrid engine, engine 0.8, gradient
  checkpointing, master weights + Adam moments + optimiser step in CPU memory);
- 2gpu: recipes/gpu/grpo_2gpu.yaml (trainer and engine on their own GPUs, overlapped generation);
- lora: grpo_1gpu.yaml (static split, as `static`) with `trainer.lora.rank=16` on every projection
  and LoRA's lr: the same run as `static` but training adapters;
- lora-large: recipes/gpu/grpo_1gpu_lora.yaml as shipped (rank 16, gradient checkpointing, engine
  0.45 of the card, hybrid engine only if the memory plan asks for it).

Printed per configuration: steps completed (or the error's last lines), s/step and trained tokens/s
per GPU (mean of steps after the first), the switches (wake + sleep + offload + onload seconds)
and their share of the step, the engine's and trainer's memory at each turn (metrics.jsonl), peak
GPU memory per process (nvidia-smi) and the memory plan's estimates (rl_pipeline/memory_plan.py)
with their ratio to the measured peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from scaling import GpuMemoryMonitor  # noqa: E402
from vs_trl import write_prompts  # noqa: E402

ONE_GPU, TWO_GPUS, LARGE = "recipes/gpu/grpo_1gpu.yaml", "recipes/gpu/grpo_2gpu.yaml", "recipes/gpu/grpo_1gpu_large.yaml"
LORA = "recipes/gpu/grpo_1gpu_lora.yaml"
# mode -> (recipe, overrides)
MODES = {
    "static": (ONE_GPU, {"cluster.hybrid_engine": "false"}),
    "hybrid": (ONE_GPU, {"cluster.hybrid_engine": "true", "rollout.gpu_memory_utilization": 0.8}),
    "hybrid-ckpt": (ONE_GPU, {"cluster.hybrid_engine": "true", "rollout.gpu_memory_utilization": 0.8,
                              "trainer.gradient_checkpointing": "true"}),
    "large": (LARGE, {}),
    "2gpu": (TWO_GPUS, {}),
    "lora": (ONE_GPU, {"cluster.hybrid_engine": "false", "trainer.lora.rank": 16, "trainer.lr": 1e-5,
                       "trainer.min_lr": 1e-5}),
    "lora-large": (LORA, {}),
}


def command(args, model_dir: Path, data: Path, run_dir: Path, mode: str) -> list[str]:
    overrides = {
        "model.path": str(model_dir), "data.train.path": str(data), "data.max_length": args.max_tokens + 64,
        "rollout.max_tokens": args.max_tokens, "rollout.max_model_len": args.max_tokens + 64,
        "grpo.steps": args.steps, "grpo.prompts_per_step": args.prompts, "grpo.group_size": args.group,
        "grpo.drop_flat_groups": "false", "grpo.save_every": "null", "grpo.prompt_template": json.dumps("{prompt}"),
        "rewards.functions": json.dumps([{"name": f"{Path(__file__).resolve().parent / 'vs_trl.py'}:id_share"}]),
        "tracking.tensorboard": "false", **MODES[mode][1],
    }
    recipe = MODES[mode][0]
    return [sys.executable, "-m", "rl_pipeline.cli", "grpo", recipe, *(f"{k}={v}" for k, v in overrides.items()),
            "--run-dir", str(run_dir)]


def run_config(args, model: str, mode: str, data: Path) -> dict:
    work = Path(args.work)
    model_dir, params = common.build_model(work, model, common.QWEN_VOCAB)
    gpus = 2 if mode == "2gpu" else 1
    tag = f"{model}-{mode}"
    log, run_dir = work / f"log-{tag}.txt", work / f"run-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with GpuMemoryMonitor() as memory, log.open("w") as out:
        code = subprocess.call(command(args, model_dir, data, run_dir, mode), cwd=common.REPO, stdout=out,
                               stderr=subprocess.STDOUT, env=env, timeout=args.timeout)
    print(f"  {tag}: exit {code} in {time.perf_counter() - started:.0f} s (log {log})", flush=True)
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    rows = [r for r in rows if "time/step" in r]
    text = log.read_text()
    plan_file = run_dir / "memory_plan.json"
    plan = json.loads(plan_file.read_text())["summary"] if plan_file.exists() else ""
    result = {"model": model, "params": params, "mode": mode, "gpus": gpus, "steps": len(rows), "code": code,
              "roles": dict(memory.per_role), "plan": plan.strip()}
    if code != 0 or not rows:
        tail = [ln for ln in text.splitlines() if ln.strip()][-4:]
        result["error"] = " | ".join(tail)[-400:]
    steady = rows[1:] or rows
    if steady:
        switch = [sum(r.get(f"time/{p}", 0.0) for p in ("wake", "sleep", "offload", "onload")) for r in steady]
        result.update({
            "step_s": mean(r["time/step"] for r in steady),
            "tokens_per_s_gpu": mean(r["throughput/tokens_per_s"] for r in steady) / gpus,
            "switch_s": mean(switch), "completion": mean(r["rollout/response_length_mean"] for r in steady),
            "sync_mb": mean(r["sync/bytes"] for r in steady) / 1e6, "sync_s": mean(r["sync/seconds"] for r in steady),
            "gap_mean": max(r["rollout/logprob_diff_mean"] for r in steady),
            "phases": {k.removeprefix("time/"): mean(r.get(k, 0.0) for r in steady)
                       for k in sorted({k for r in steady for k in r if k.startswith("time/")})},
            "memory": {k.removeprefix("memory/"): max(r.get(k, 0.0) for r in steady)
                       for k in sorted({k for r in steady for k in r if k.startswith("memory/")})},
        })
    return result


def report(results: list[dict], card_gib: float) -> None:
    print(f"\n## GRPO capacity on {card_gib:.0f} GiB cards (vocab {common.QWEN_VOCAB}, random weights, "
          "every completion to max tokens)")
    print("| model | mode | GPUs | steps | s/step | tokens/s/GPU | switches s (share) | sync MB / s | engine GiB gen/train | "
          "trainer GiB gen/train peak | nvidia-smi peak GiB per role |")
    print("|---|---|---:|---:|---:|---:|---|---|---|---|---|")
    for r in results:
        roles = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["roles"].items()))
        if "step_s" not in r:
            print(f"| {r['model']} ({r['params'] / 1e9:.2f}B) | {r['mode']} | {r['gpus']} | {r['steps']} | FAILED: "
                  f"{r.get('error', '')} | | | | | | {roles} |")
            continue
        m = r["memory"]
        print(f"| {r['model']} ({r['params'] / 1e9:.2f}B) | {r['mode']} | {r['gpus']} | {r['steps']} | {r['step_s']:.1f} "
              f"| {r['tokens_per_s_gpu']:,.0f} | {r['switch_s']:.2f} ({r['switch_s'] / r['step_s']:.1%}) "
              f"| {r['sync_mb']:,.1f} / {r['sync_s']:.2f} "
              f"| {m.get('engine_gib/generate', float('nan')):.1f} / {m.get('engine_gib/train', float('nan')):.1f} "
              f"| {m.get('trainer_gib/generate', float('nan')):.1f} / {m.get('trainer_peak_gib/train', float('nan')):.1f} "
              f"| {roles} |")
    print("\nphases (s, steady steps):")
    for r in results:
        if "phases" in r:
            print(f"  {r['model']} {r['mode']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
                  + f"; mean completion {r['completion']:.0f}; sampler/trainer gap mean (max over steps) "
                  f"{r['gap_mean']:.4f}")
    print("\nmemory plan estimates (GiB) against the measured peaks:")
    for r in results:
        print(f"  {r['model']} {r['mode']}: {r['plan'] or 'no estimate logged'}")
        # The train phase's peak (torch's reserved memory, reset when the trainer gets the card):
        # nvidia-smi's per-process peak also holds the start-up transient of float32 weights.
        trainer_peak = r.get("memory", {}).get("trainer_peak_gib/train")
        if trainer_peak and "trainer rank ~" in r["plan"]:
            estimate = float(r["plan"].split("trainer rank ~", 1)[1].split(" GiB", 1)[0])
            print(f"    trainer estimate / measured peak: {estimate:.1f} / {trainer_peak:.1f} = "
                  f"{estimate / trainer_peak:.2f} (target within 0.75-1.25)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1.5b:static,1.5b:hybrid,3b:static,7b:large",
                        help="model:mode pairs, comma-separated (modes: " + ", ".join(MODES) + ")")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--work", default="/tmp/rlp-capacity")
    args = parser.parse_args()
    common.gpu_env()
    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = write_prompts(work / "prompts.jsonl", rows=args.prompts * (args.steps + 1))
    results = []
    for pair in args.configs.split(","):
        model, mode = pair.split(":")
        try:
            results.append(run_config(args, model, mode, data))
        except subprocess.TimeoutExpired:
            subprocess.call([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results.append({"model": model, "params": 0, "mode": mode, "gpus": 1, "steps": 0, "roles": {}, "plan": "",
                            "error": f"over --timeout {args.timeout} s"})
    report(results, torch.cuda.get_device_properties(0).total_memory / 2**30)


if __name__ == "__main__":
    main()
