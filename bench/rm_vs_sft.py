"""Benchmark reward-model training tokens/s (`rlp rm`) against `rlp sft`, same model and lengths.

Both train the tiny Qwen2 model (rl_pipeline.models.tiny) through their real drivers (Ray actor +
DeepSpeed ZeRO-2, fp32 CPU, one rank, AdamW, grad clip 1.0, constant lr) on the same sequences:
the synthetic addition task rendered as a user/assistant chat ("<|user|>07+45=<|end|><|assistant|>
52<|end|>"), max_length 32. `rlp rm` trains on (prompt, right answer, wrong answer) pairs from
`rlp make-task --pairs`; `rlp sft` on the same prompts and right answers with data.train.chat.
A step of `rlp rm` with micro batch B pairs forwards 2B sequences, so `rlp sft` gets micro batch
2B sequences: the same tokens per step.

Tokens are the non-pad tokens of a step (both drivers log `tokens_per_s` and `step_seconds`
per step in metrics.jsonl, measured around the driver's call to the trainer ranks). Rates are
steady state: sum(tokens) / sum(step_seconds) over the steps after --warmup. Each measurement runs
in its own subprocess, the order rotated each repeat (the 2-core machine is shared); load averages
are printed. OMP_NUM_THREADS=1, what Ray gives a 0.5-CPU rank. Target: rm/sft >= 0.9.

    python bench/rm_vs_sft.py [--steps 40] [--warmup 10] [--pairs-per-step 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEMS = ("rlp rm", "rlp sft")
LR, MAX_LENGTH, SEED = 1e-4, 32, 0


def make_recipe(work: Path, system: str, steps: int, pairs: int):
    from rl_pipeline.config import parse_recipe

    trainer = {"num_ranks": 1, "zero_stage": 2, "device": "cpu", "precision": "fp32", "grad_accum_steps": 1,
               "lr": LR, "min_lr": LR, "schedule": "constant", "betas": [0.9, 0.98], "grad_clip": 1.0}
    common = {"output_dir": str(work / "runs"), "model": {"path": str(work / "model")},
              "tracking": {"tensorboard": False}}
    if system == "rlp rm":
        return parse_recipe({**common, "name": "bench-rm", "trainer": {**trainer, "micro_batch_size": pairs},
                             "data": {"train": {"path": str(work / "task" / "train_pairs.jsonl")},
                                      "max_length": MAX_LENGTH},
                             "rm": {"max_steps": steps, "log_every": 1, "seed": SEED}})
    return parse_recipe({**common, "name": "bench-sft", "trainer": {**trainer, "micro_batch_size": 2 * pairs},
                         "data": {"train": {"path": str(work / "task" / "train.jsonl"), "format": "prompt_completion",
                                            "chat": True}, "max_length": MAX_LENGTH},
                         "sft": {"max_steps": steps, "log_every": 1, "seed": SEED}})


def child(args) -> None:
    """One system, one measurement, in this (fresh) process; the result goes to --result."""
    from rl_pipeline.pipelines.rm import train_rm
    from rl_pipeline.pipelines.sft import train_sft

    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    run_dir = work / f"run-{args.tag}"
    train = train_rm if args.system == "rlp rm" else train_sft
    train(make_recipe(work, args.system, args.steps, args.pairs_per_step), run_dir=run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = rows[args.warmup:]
    tokens = sum(r["tokens_per_s"] * r["step_seconds"] for r in steady)
    Path(args.result).write_text(json.dumps({
        "steps": len(steady), "tokens_per_step": tokens / len(steady),
        "tokens_per_s": tokens / sum(r["step_seconds"] for r in steady),
    }))


def measure(system: str, work: Path, args, tag: str) -> dict:
    result, log = work / f"result-{tag}.json", work / f"log-{tag}.txt"
    cmd = [sys.executable, __file__, "--system", system, "--work", str(work), "--tag", tag, "--result", str(result),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--pairs-per-step", str(args.pairs_per_step)]
    load = os.getloadavg()[0]
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if code != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {code}: {tail[0][:120]}", "load": load}
    return {**json.loads(result.read_text()), "load": load}


def print_table(repeat: int, results: dict[str, dict]) -> None:
    print(f"\nrepeat {repeat}  (load average 1/5/15 min at the end: "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()) + ")")
    print(f"{'system':<10}{'steps measured':>15}{'tokens/step':>13}{'tokens/s':>11}{'load@start':>12}")
    for name in SYSTEMS:
        r = results[name]
        if "error" in r:
            print(f"{name:<10}  FAILED: {r['error']}")
            continue
        print(f"{name:<10}{r['steps']:>15}{r['tokens_per_step']:>13.0f}{r['tokens_per_s']:>11.0f}{r['load']:>12.2f}")
    if not any("error" in r for r in results.values()):
        ratio = results["rlp rm"]["tokens_per_s"] / results["rlp sft"]["tokens_per_s"]
        print(f"rlp rm / rlp sft tokens/s: {ratio:.3f} (target >= 0.9)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per system (default 40)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the rate (default 10)")
    parser.add_argument("--pairs-per-step", type=int, default=32,
                        help="rlp rm micro batch in pairs; rlp sft gets twice as many sequences (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="measure both systems this many times (default 2)")
    for hidden in ("--system", "--work", "--tag", "--result"):  # internal: one measurement in a subprocess
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error(f"--warmup must be between 1 and --steps - 1 (got {args.warmup} with --steps {args.steps})")
    if args.system:
        return child(args)

    from rl_pipeline.data.synthetic import write_preference_pairs, write_task
    from rl_pipeline.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model")
        paths = write_task(work / "task", {"train": max(4096, args.steps * args.pairs_per_step)}, seed=SEED)
        write_preference_pairs(paths["train"], work / "task" / "train_pairs.jsonl", seed=SEED)
        print(f"RM vs SFT throughput: tiny Qwen2, {args.pairs_per_step} pairs (rm) / {2 * args.pairs_per_step} "
              f"sequences (sft) per step, chat-rendered addition, max_length {MAX_LENGTH}, 1 rank, ZeRO-2, fp32 CPU, "
              f"{args.steps} steps, rate over steps {args.warmup + 1}-{args.steps}; {os.cpu_count()} CPUs; "
              "OMP_NUM_THREADS=1", flush=True)
        for repeat in range(1, args.repeats + 1):
            order = SYSTEMS if repeat % 2 else SYSTEMS[::-1]
            results = {name: measure(name, work, args, f"{repeat}-{i}") for i, name in enumerate(order)}
            print_table(repeat, results)


if __name__ == "__main__":
    main()
