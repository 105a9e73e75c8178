"""Benchmark SFT tokens/s: `rlp sft` (Ray actor + DeepSpeed) vs a plain DeepSpeed loop vs TRL.

All three train the tiny Qwen2 model (rl_pipeline.models.tiny) on the synthetic addition task,
prompt_completion format, max_length 32, one rank, micro batch 64 (no accumulation), fp32 on
the CPU, AdamW (torch implementation), grad clip 1.0, constant lr 1e-3. DeepSpeed runs ZeRO
stage 2 (the recipe default) for both `rlp sft` and the plain loop, which is one process with
gloo at world size 1 over the very batches `rlp sft` sees (BatchPlan), right-padded, no
attention mask. TRL's SFTTrainer (trl==1.16.0) gets the same jsonl as a prompt/completion
dataset with completion-only loss, use_cpu=True, no eval, no saving.

Tokens are counted the same way for all three: non-pad tokens of each step's batch. Rates are
steady state: the first --warmup steps (and all start-up) are excluded. For `rlp sft` the rate
comes from metrics.jsonl (`tokens_per_s` is measured around the driver's `sft_step` call, Ray
round trip included; the table uses sum(tokens) / sum(step_seconds)); the wall-clock rate seen
by the driver (logging and progress included) is printed beside it, and so is start-up (call of
train_sft until step 1 is in metrics.jsonl). Each system runs in its own subprocess, in a
rotated order each repeat, since the 2-core machine is shared; load averages are printed.
All three run with one thread by default (OMP_NUM_THREADS=1, and trainer.cpu_threads=1 for rlp):
on a loaded 2-core machine two OpenMP threads were 5-10x slower, swamping everything else.
`--threads 0` leaves each system its own default: torch's (all cores) for the plain loop and TRL,
and for `rlp sft` trainer.cpu_threads' (a rank training alone takes the machine's cores).

    .venv/bin/pip install trl==1.16.0   # once
    .venv/bin/python bench/sft_throughput.py [--steps 40] [--warmup 10] [--micro-batch 64] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SYSTEMS = ("rlp sft", "plain DeepSpeed", "TRL SFTTrainer")
LR, MAX_LENGTH, SEED = 1e-3, 32, 0


def make_recipe(work: Path, steps: int, micro_batch: int, threads: int = 0):
    from rl_pipeline.config import parse_recipe

    return parse_recipe({
        "name": "bench-sft", "output_dir": str(work / "runs"), "model": {"path": str(work / "model")},
        "data": {"train": {"path": str(work / "task" / "train.jsonl"), "format": "prompt_completion"},
                 "max_length": MAX_LENGTH},
        "trainer": {"num_ranks": 1, "zero_stage": 2, "device": "cpu", "precision": "fp32",
                    "micro_batch_size": micro_batch, "grad_accum_steps": 1, "lr": LR, "min_lr": LR,
                    "schedule": "constant", "betas": [0.9, 0.98], "grad_clip": 1.0,
                    "cpu_threads": threads or None},  # None: rlp's own choice (the cores of the machine)
        "sft": {"max_steps": steps, "log_every": 1, "seed": SEED},
    })


def run_rlp(work: Path, args, tag: str) -> dict:
    """train_sft in-process; a watcher notes when each step's line lands in metrics.jsonl."""
    from rl_pipeline.pipelines.sft import train_sft

    run_dir = work / f"rlp-{tag}"
    metrics, seen, stop = run_dir / "metrics.jsonl", {}, threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if metrics.exists():
                lines = metrics.read_text().count("\n")
                for step in range(len(seen) + 1, lines + 1):
                    seen[step] = time.perf_counter()
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    train_sft(make_recipe(work, args.steps, args.micro_batch, args.threads), run_dir=run_dir)
    stop.set()
    watcher.join()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steady = rows[args.warmup:]
    tokens = [r["tokens_per_s"] * r["step_seconds"] for r in rows]
    first, last = args.warmup, len(rows)  # wall window: from step `warmup` done to the last step done
    return {
        "steps": len(steady),
        "tokens_per_s": sum(tokens[args.warmup:]) / sum(r["step_seconds"] for r in steady),
        "wall_tokens_per_s": sum(tokens[args.warmup:]) / (seen[last] - seen[first]) if first in seen else None,
        "startup_s": seen[1] - t0, "first_step_s": rows[0]["step_seconds"],
        "final_loss": rows[-1]["loss"],
        # trainer.cpu_threads: --threads, or (0) rlp's default for a rank training alone: the machine's cores.
        "threads": args.threads or f"{len(os.sched_getaffinity(0))} (trainer.cpu_threads default)",
    }


def run_plain(work: Path, args, tag: str) -> dict:
    """deepspeed.initialize on the same model, one process, gloo world size 1, same batches."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_pipeline.pipelines.sft import BatchPlan, prepare_sft_samples
    from rl_pipeline.workers.group import free_port

    recipe = make_recipe(work, args.steps, args.micro_batch)
    plan = BatchPlan(prepare_sft_samples(recipe), recipe.trainer, 1, args.steps, SEED)
    pad = AutoTokenizer.from_pretrained(recipe.model.path).pad_token_id
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(recipe.model.path, dtype=torch.float32)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
        "train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}, "steps_per_print": 10**9,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "betas": [0.9, 0.98], "torch_adam": True}},
    })
    engine.train()
    stamps, tokens, loss = [], [], float("nan")
    for step in range(args.steps):
        samples = plan.shards(step)[0][0]
        width = max(len(s["input_ids"]) for s in samples)  # right-pad; no attention mask
        ids = torch.tensor([s["input_ids"] + [pad] * (width - len(s["input_ids"])) for s in samples])
        mask = torch.tensor([s["loss_mask"] + [0] * (width - len(s["loss_mask"])) for s in samples])
        loss_t = engine(input_ids=ids, labels=ids.masked_fill(mask == 0, -100)).loss
        engine.backward(loss_t)
        engine.step()
        loss = loss_t.item()
        tokens.append(int(ids.ne(pad).sum()))
        stamps.append(time.perf_counter())
    return _rate(stamps, tokens, args.warmup, loss, torch.get_num_threads())


def run_trl(work: Path, args, tag: str) -> dict:
    """TRL's SFTTrainer on the same jsonl (prompt/completion, completion-only loss)."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    stamps, tokens, losses = [], [], []

    class Stamp(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    class CountingTrainer(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kw):
            tokens.append(int(inputs["input_ids"].ne(self.processing_class.pad_token_id).sum()))
            out = super().training_step(model, inputs, *rest, **kw)
            losses.append(float(out))
            return out

    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    data = load_dataset("json", data_files=str(work / "task" / "train.jsonl"), split="train")
    data = data.select_columns(["prompt", "completion"])
    torch.manual_seed(SEED)
    config = SFTConfig(
        output_dir=str(work / f"trl-{tag}"), use_cpu=True, bf16=False, max_length=MAX_LENGTH,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1, max_steps=args.steps,
        learning_rate=LR, lr_scheduler_type="constant", optim="adamw_torch", adam_beta2=0.98, max_grad_norm=1.0,
        completion_only_loss=True, packing=False, padding_free=False, eval_strategy="no", save_strategy="no",
        report_to="none", logging_steps=10**6, disable_tqdm=True, seed=SEED, dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    CountingTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                    callbacks=[Stamp()]).train()
    return _rate(stamps, tokens, args.warmup, losses[-1], torch.get_num_threads())


def _rate(stamps: list[float], tokens: list[int], warmup: int, loss: float, threads: int) -> dict:
    """Tokens of steps warmup+1..N over the time from the end of step `warmup` to the end of N."""
    window = stamps[-1] - stamps[warmup - 1]
    return {"steps": len(stamps) - warmup, "tokens_per_s": sum(tokens[warmup:]) / window,
            "final_loss": loss, "threads": threads}


RUNNERS = {"rlp sft": run_rlp, "plain DeepSpeed": run_plain, "TRL SFTTrainer": run_trl}


def child(args) -> None:
    """One system, one measurement, in this (fresh) process; the result goes to --result."""
    logging.basicConfig(level=logging.WARNING)
    result = RUNNERS[args.system](Path(args.work), args, args.tag)
    Path(args.result).write_text(json.dumps(result))


def measure(system: str, work: Path, args, tag: str) -> dict:
    result, log = work / f"result-{tag}.json", work / f"log-{tag}.txt"
    cmd = [sys.executable, __file__, "--system", system, "--work", str(work), "--tag", tag, "--result", str(result),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch),
           "--threads", str(args.threads)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    load = os.getloadavg()[0]
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {code}: {tail[0][:120]}", "load": load}
    return {**json.loads(result.read_text()), "load": load}


def print_table(repeat: int, results: dict[str, dict]) -> None:
    base = results["plain DeepSpeed"].get("tokens_per_s")
    print(f"\nrepeat {repeat}  (load average 1/5/15 min at the end: "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()) + ")", flush=True)
    print(f"{'system':<18}{'steps measured':>15}{'tokens/s':>11}{'vs plain DS':>13}{'load@start':>12}"
          f"{'final loss':>12}  note")
    for name in SYSTEMS:
        r = results[name]
        if "error" in r:
            print(f"{name:<18}{'-':>15}{'-':>11}{'-':>13}{r['load']:>12.2f}{'-':>12}  FAILED: {r['error']}")
            continue
        ratio = f"{r['tokens_per_s'] / base:.3f}" if base else "-"
        note = f"torch threads {r['threads']}" if r["threads"] else ""
        print(f"{name:<18}{r['steps']:>15}{r['tokens_per_s']:>11.0f}{ratio:>13}{r['load']:>12.2f}"
              f"{r['final_loss']:>12.4f}  {note}")
    rlp = results["rlp sft"]
    if "error" not in rlp:
        wall = rlp["wall_tokens_per_s"]
        print(f"rlp sft start-up (train_sft call -> step 1 logged): {rlp['startup_s']:.1f} s "
              f"(step 1 itself {rlp['first_step_s']:.2f} s); driver wall-clock rate incl. logging: "
              + (f"{wall:.0f} tokens/s ({wall / base:.3f} of plain DS)" if wall and base else "n/a"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per system (default 40)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the rate (default 10)")
    parser.add_argument("--micro-batch", type=int, default=64, help="sequences per step (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="measure every system this many times (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for all systems (default 1, what Ray gives a rank; 0: each its own)")
    for hidden in ("--system", "--work", "--tag", "--result"):  # internal: one measurement in a subprocess
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error(f"--warmup must be between 1 and --steps - 1 (got {args.warmup} with --steps {args.steps})")
    if args.system:
        return child(args)

    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model")
        write_task(work / "task", {"train": max(4096, args.steps * args.micro_batch)}, seed=SEED)
        print(f"SFT throughput: tiny Qwen2, micro batch {args.micro_batch}, max_length {MAX_LENGTH}, 1 rank, "
              f"ZeRO-2 (DeepSpeed systems), fp32 CPU, {args.steps} steps, rate over steps {args.warmup + 1}-"
              f"{args.steps}; tokens = non-pad tokens per step; {os.cpu_count()} CPUs; OMP_NUM_THREADS="
              f"{args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
        for repeat in range(1, args.repeats + 1):
            k = (repeat - 1) % len(SYSTEMS)  # rotate the order so that no system always goes first
            order = SYSTEMS[k:] + SYSTEMS[:k]
            results = {name: measure(name, work, args, f"{repeat}-{i}") for i, name in enumerate(order)}
            print_table(repeat, results)


if __name__ == "__main__":
    main()
