"""GPU benchmark 1: SFT tokens/s and MFU of `rlp sft` vs a bare DeepSpeed loop, same model and batches.

    python bench/gpu/trainer.py [--model 1.5b] [--vocab 151936] [--steps 20] [--warmup 5] [--micro-batch 8] [--seq 1024]

Both train the same random-weight Qwen2 model (bench/gpu/common.py) on the same batches
(BatchPlan over a jsonl of random-letter prompt/completion rows, `--seq` tokens each, loss on the
completion), one rank on one GPU, DeepSpeed ZeRO-2, bf16 (fp32 master weights), torch's fused
AdamW, the very DeepSpeed config `rlp sft` builds (workers.trainer.deepspeed_config); `rlp sft`
packs (data.packing; the rows are all --seq tokens, so packing adds no padding to remove and the
two systems see the same tokens). The vocabulary is Qwen2.5's 151,936 ids unless --vocab says
otherwise, and N counts the embedding/LM head (tied) as the 6N rule has it. The bare loop is
one process: deepspeed.initialize, then forward with HF labels / backward / step; `rlp sft` is
the Ray driver + TrainerWorker actor (tokens_per_s of metrics.jsonl: the step call as the driver
sees it, Ray round trip included). Each runs in its own subprocess, one after the other.
Rates are steady state (steps after --warmup). MFU = tokens/s x (6N + 6 x layers x hidden x seq)
/ the card's dense bf16 peak (989 TFLOP/s for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LR = 1e-5


def recipe(work: Path, args):
    from rl_pipeline.config import parse_recipe

    return parse_recipe({
        "name": "gpu-bench-sft", "output_dir": str(work / "runs"),
        "model": {"path": str(common.model_dir(work, args.model, args.vocab))},
        "data": {"train": {"path": str(work / "sft.jsonl"), "format": "prompt_completion"}, "max_length": args.seq,
                 "packing": True},
        "trainer": {"num_ranks": 1, "zero_stage": 2, "device": "cuda", "precision": "bf16", "gpus_per_rank": 1,
                    "cpus_per_rank": 1, "micro_batch_size": args.micro_batch, "grad_accum_steps": 1, "lr": LR,
                    "min_lr": LR, "schedule": "constant", "grad_clip": 1.0},
        "sft": {"max_steps": args.steps, "log_every": 1, "seed": 0},
        "tracking": {"tensorboard": False},
    })


def run_rlp(work: Path, args) -> dict:
    from rl_pipeline.pipelines.sft import train_sft

    t0 = time.perf_counter()
    run_dir = work / f"rlp-sft-{args.model}-{time.strftime('%H%M%S')}"
    train_sft(recipe(work, args), run_dir=run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    steady = rows[args.warmup:]
    tokens = sum(r["tokens_per_s"] * r["step_seconds"] for r in steady)
    return {"tokens_per_s": tokens / sum(r["step_seconds"] for r in steady), "steps": len(steady),
            "final_loss": rows[-1]["loss"], "total_s": time.perf_counter() - t0}


def run_bare(work: Path, args) -> dict:
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_pipeline.pipelines.sft import BatchPlan, prepare_sft_samples
    from rl_pipeline.workers.group import free_port
    from rl_pipeline.workers.trainer import deepspeed_config

    r = recipe(work, args)
    plan = BatchPlan(prepare_sft_samples(r), r.trainer, 1, args.steps, 0)
    pad = AutoTokenizer.from_pretrained(r.model.path).pad_token_id
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(r.model.path, dtype=torch.float32)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=deepspeed_config(r.trainer, "cuda", 1))
    engine.train()
    stamps, tokens = [], []
    for step in range(args.steps):
        samples = plan.shards(step)[0][0]
        width = max(len(s["input_ids"]) for s in samples)
        ids = torch.tensor([s["input_ids"] + [pad] * (width - len(s["input_ids"])) for s in samples], device="cuda")
        mask = torch.tensor([s["loss_mask"] + [0] * (width - len(s["loss_mask"])) for s in samples], device="cuda")
        loss = engine(input_ids=ids, labels=ids.masked_fill(mask == 0, -100)).loss
        engine.backward(loss)
        engine.step()
        loss_value = loss.item()  # a sync point per step, as rlp's loss.item()
        tokens.append(sum(len(s["input_ids"]) for s in samples))
        stamps.append(time.perf_counter())
    window = stamps[-1] - stamps[args.warmup - 1]
    return {"tokens_per_s": sum(tokens[args.warmup:]) / window, "steps": args.steps - args.warmup,
            "final_loss": loss_value, "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="1.5b", choices=sorted(common.MODELS))
    parser.add_argument("--vocab", type=int, default=common.QWEN_VOCAB, help="0: the 128-id character vocabulary")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--work", default="/tmp/rlp-gpu-bench")
    parser.add_argument("--system", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.gpu_env()
    work = Path(args.work)
    if args.system:
        result = {"rlp sft": run_rlp, "bare DeepSpeed": run_bare}[args.system](work, args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu/trainer.py needs a CUDA device")
    common.header(f"trainer: SFT tokens/s, {args.model} (vocab {args.vocab or 128}), micro batch {args.micro_batch} x "
                  f"{args.seq} tokens, "
                  f"{args.steps} steps (rate over steps {args.warmup + 1}-{args.steps}), ZeRO-2 bf16, 1 GPU")
    model_path, params = common.build_model(work, args.model, vocab_size=args.vocab or None)
    common.write_text_task(work / "sft.jsonl", rows=args.micro_batch * args.steps, length=args.seq)
    results = {}
    for system in ("bare DeepSpeed", "rlp sft"):
        cmd = [sys.executable, __file__, "--system", system] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "system"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
            print(f"{system}: FAILED (exit {out.returncode})\n  " + "\n  ".join(tail), flush=True)
            results[system] = None
            continue
        results[system] = json.loads(lines[-1][7:]) | {"wall_s": time.perf_counter() - t0}
    gpu, peak = common.peak_flops()
    flops = common.train_flops_per_token(model_path, params, args.seq)
    base = (results.get("bare DeepSpeed") or {}).get("tokens_per_s")
    print(f"\nmodel {params / 1e9:.3f}B params; {flops / 1e9:.2f} GFLOP/token (6N + attention); peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    print(f"| system | tokens/s | vs bare | MFU | final loss | process wall s |\n|---|---:|---:|---:|---:|---:|")
    for system, r in results.items():
        if r is None:
            print(f"| {system} | FAILED | | | | |")
            continue
        mfu = r["tokens_per_s"] * flops / peak if peak else float("nan")
        ratio = r["tokens_per_s"] / base if base else float("nan")
        print(f"| {system} | {r['tokens_per_s']:,.0f} | {ratio:.3f} | {100 * mfu:.1f}% | {r['final_loss']:.3f} "
              f"| {r['wall_s']:.0f} |")
    if base and results.get("rlp sft"):
        ratio = results["rlp sft"]["tokens_per_s"] / base
        print(f"target rlp/bare >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'} ({ratio:.3f})", flush=True)


if __name__ == "__main__":
    main()
