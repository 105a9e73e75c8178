"""`rlp sft` on the CPU with one torch thread per rank (what Ray gives an actor) vs the default of
`trainer.cpu_threads` (a rank training alone takes the machine's cores), side by side in one run.

    .venv/bin/python bench/sft_threads.py [--steps 60] [--warmup 10] [--micro-batch 64] [--repeats 2]

Each measurement is one `bench/sft_throughput.py --system "rlp sft"` subprocess (tiny Qwen2, the
synthetic task, one rank, ZeRO-2, fp32), the two settings alternating which goes first. Prints the
steady-state tokens/s of each and the ratio default / one thread, with the load average (a busy
machine makes extra OpenMP threads wait for each other: run it with nothing else going).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _throughput_module():
    spec = importlib.util.spec_from_file_location("sft_throughput", HERE / "sft_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bench = _throughput_module()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import build_tiny_model

    settings = {"1 thread": 1, "default": 0}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="bench-sft-threads-") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model")
        write_task(work / "task", {"train": max(4096, args.steps * args.micro_batch)}, seed=bench.SEED)
        print(f"rlp sft, tiny Qwen2, micro batch {args.micro_batch}, {args.steps} steps (rate over steps "
              f"{args.warmup + 1}-{args.steps}), {len(os.sched_getaffinity(0))} CPUs", flush=True)
        for repeat in range(args.repeats):
            order = list(settings) if repeat % 2 == 0 else list(reversed(settings))
            for name in order:
                run_args = argparse.Namespace(**vars(args), threads=settings[name])
                result = bench.measure("rlp sft", work, run_args, f"{name.replace(' ', '')}-{repeat}")
                if "error" in result:
                    sys.exit(f"{name}: {result['error']}")
                rates[name].append(result["tokens_per_s"])
                print(f"repeat {repeat + 1} {name:<9} {result['tokens_per_s']:8.0f} tokens/s  threads "
                      f"{result['threads']}  load at start {result['load']:.2f}", flush=True)
    mean = {name: sum(r) / len(r) for name, r in rates.items()}
    print(f"\n| setting | tokens/s (mean of {args.repeats}) |\n|---|---:|")
    for name, value in mean.items():
        print(f"| {name} | {value:.0f} |")
    print(f"default / 1 thread: {mean['default'] / mean['1 thread']:.2f}x")


if __name__ == "__main__":
    main()
