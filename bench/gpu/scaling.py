"""GPU benchmark 5 (issue 10): one GRPO recipe on 1, 2, 4 (8) GPUs of one host, both layouts.

    python bench/gpu/scaling.py [--configs c1,c2,s2,s2o,c4,s4,s4o] [--model 1.5b] [--steps 4] [--warmup 1]
                                [--prompts-per-gpu 32] [--group 8] [--max-tokens 256]

A configuration is a layout letter and a GPU count:
- `cN` colocated: N trainer ranks and N vLLM engines, rank i and engine i share GPU i
  (`cluster.colocate`, half a GPU each in Ray; engine memory 0.35 of the card), weights synced
  by CUDA IPC;
- `sN` separated (N even): N/2 trainer ranks on N/2 GPUs and N/2 engines on the other N/2,
  weights broadcast by NCCL from trainer rank 0;
- a trailing `o` (`s4o`) adds `grpo.overlap_generation` (with `tis_cap` 2): the engines sample
  step k+1 while the trainer ranks train step k, one step off-policy.
Weak scaling: the batch grows with the GPUs (`--prompts-per-gpu` x N prompts x G samples per
step), so each GPU's share of the work stays the same and ideal scaling keeps tokens/s/GPU flat.
Efficiency = tokens/s/GPU of the configuration / tokens/s/GPU of `c1` (the only 1-GPU layout).

Each configuration runs `train_grpo` (what `rlp grpo` runs) in its own subprocess, so Ray and
CUDA start clean; the parent prints one table. Tokens/s = trained tokens (prompt + completion of
every sample) per step second. GPU memory: the peak of `nvidia-smi` samples (every 0.5 s) per
GPU, and per role where the process of a Ray actor can be told by its title (ray::TrainerWorker,
ray::RolloutEngine); "GPU" columns are the whole device (both roles when colocated).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PHASES = ("generate", "reward", "train", "rollout_wait", "sync", "other")
ROLES = {"TrainerWorker": "trainer", "RolloutEngine": "rollout"}


def parse_config(name: str) -> tuple[str, int, bool]:
    """'s4o' -> ("separated", 4, overlap=True)."""
    overlap = name.endswith("o")
    layout, gpus = {"c": "colocated", "s": "separated"}[name[0]], int(name[1:].rstrip("o"))
    if layout == "separated" and (gpus < 2 or gpus % 2):
        raise SystemExit(f"{name}: the separated layout needs an even number of GPUs >= 2")
    return layout, gpus, overlap


def recipe_for(args, layout: str, gpus: int, overlap: bool, model_dir: Path, data: Path, work: Path) -> dict:
    """The GRPO recipe of one configuration (everything but the layout is the same)."""
    colocated = layout == "colocated"
    ranks = engines = gpus if colocated else gpus // 2
    return {
        "name": f"gpu-scaling-{layout}-{gpus}", "output_dir": str(work / "runs"), "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(data)}, "max_length": args.max_tokens + 64},
        "trainer": {"num_ranks": ranks, "zero_stage": 2, "device": "cuda", "precision": "bf16",
                    "gpus_per_rank": 0.5 if colocated else 1.0, "cpus_per_rank": 4,
                    "micro_batch_size": 32, "lr": 1e-6, "min_lr": 1e-6, "schedule": "constant"},
        "rollout": {"num_engines": engines, "temperature": 1.0, "max_tokens": args.max_tokens,
                    "gpus_per_engine": 0.5 if colocated else 1.0, "cpus_per_engine": 4,
                    "gpu_memory_utilization": 0.35 if colocated else 0.85, "max_model_len": args.max_tokens + 64,
                    "enforce_eager": not args.cuda_graphs},
        "grpo": {"steps": args.steps, "prompts_per_step": args.prompts_per_gpu * gpus, "group_size": args.group,
                 "kl_coef": 0.0, "seed": 0, "overlap_generation": overlap, "tis_cap": 2.0 if overlap else None},
        "rewards": {"functions": [{"name": f"{Path(__file__).resolve().parent / 'grpo_step.py'}:letter_share"}]},
        "cluster": {"colocate": colocated},
        "tracking": {"tensorboard": False},
    }


class GpuMemoryMonitor:
    """Peak `nvidia-smi` memory per GPU and per (GPU, role) while the run goes, sampled every 0.5 s."""

    def __init__(self) -> None:
        self.per_gpu: dict[str, float] = {}
        self.per_role: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _query(self, what: str, fields: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", f"--query-{what}={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]

    def _sample(self) -> None:
        for index, used in self._query("gpu", "index,memory.used"):
            self.per_gpu[index] = max(self.per_gpu.get(index, 0.0), float(used) / 1024)
        per_role: dict[str, float] = {}
        for pid, used in self._query("compute-apps", "pid,used_memory"):
            role = role_of(pid)
            if role and used.isdigit():  # one process per actor: the role's peak is its biggest process
                per_role[role] = max(per_role.get(role, 0.0), float(used) / 1024)
        for role, gib in per_role.items():
            self.per_role[role] = max(self.per_role.get(role, 0.0), gib)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # a failed sample (nvidia-smi busy) is skipped, not fatal
                pass
            self._stop.wait(0.5)


def role_of(pid: str) -> str | None:
    """The role of a Ray actor process from its title (setproctitle: 'ray::TrainerWorker...')."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None  # not in this PID namespace
    return next((role for cls, role in ROLES.items() if cls in title), None)


def run_one(args, name: str) -> dict:
    """Child: run one configuration and print its summary as one JSON line."""
    common.gpu_env()
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.pipelines.grpo import train_grpo

    layout, gpus, overlap = parse_config(name)
    work = Path(args.work)
    model_dir, params = common.build_model(work, args.model)
    rows = args.prompts_per_gpu * gpus * (args.steps + 1)
    data = common.write_text_task(work / f"grpo-{rows}.jsonl", rows=rows, length=40)
    recipe = parse_recipe(recipe_for(args, layout, gpus, overlap, model_dir, data, work))
    run_dir = work / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a bench run never resumes an older one
    started = time.perf_counter()
    with GpuMemoryMonitor() as memory:
        result = train_grpo(recipe, run_dir=run_dir)
    total = time.perf_counter() - started
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in metrics if "time/step" in r][args.warmup:]
    step = mean(r["time/step"] for r in steady)
    summary = {
        "config": name, "layout": layout + (" + overlap" if overlap else ""), "gpus": gpus, "params": params,
        "wall_s": total, "step_s": step,
        "tokens_per_s": mean(r["throughput/tokens_per_s"] for r in steady),
        "generated_tokens_per_s": mean(r["throughput/generated_tokens_per_s"] for r in steady),
        "response_mean": mean(r["rollout/response_length_mean"] for r in steady),
        "gap_mean": mean(r["rollout/logprob_diff_mean"] for r in metrics[1:] if "rollout/logprob_diff_mean" in r),
        "phases": {p: mean(r.get(f"time/{p}", 0.0) for r in steady) for p in PHASES},
        "gpu_peak_gib": memory.per_gpu, "role_peak_gib": memory.per_role,
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    return summary


def print_table(results: list[dict]) -> None:
    base = next((r for r in results if r["config"] == "c1"), None)
    base_per_gpu = base["tokens_per_s"] / base["gpus"] if base else None
    print("\n| config | layout | GPUs | samples/step | step s | tokens/s | tokens/s/GPU | efficiency vs c1 | "
          + " | ".join(f"{p} s" for p in PHASES) + " | trainer GiB | rollout GiB | GPU peak GiB |")
    print("|---" * (11 + len(PHASES)) + "|")
    for r in results:
        per_gpu = r["tokens_per_s"] / r["gpus"]
        eff = f"{per_gpu / base_per_gpu:.2f}" if base_per_gpu else "-"
        roles = r["role_peak_gib"]
        print(f"| {r['config']} | {r['layout']} | {r['gpus']} | {r['samples']} | {r['step_s']:.2f} | "
              f"{r['tokens_per_s']:,.0f} | {per_gpu:,.0f} | {eff} | "
              + " | ".join(f"{r['phases'][p]:.2f}" for p in PHASES)
              + f" | {roles.get('trainer', float('nan')):.1f} | {roles.get('rollout', float('nan')):.1f} | "
              f"{max(r['gpu_peak_gib'].values(), default=float('nan')):.1f} |")
    print("\nper configuration: generated tokens/s, mean completion length, post-sync logprob gap, wall s")
    for r in results:
        print(f"{r['config']}: {r['generated_tokens_per_s']:,.0f} gen tok/s, {r['response_mean']:.0f} tokens, "
              f"gap {r['gap_mean']:.4f}, {r['wall_s']:.0f} s wall, GPU peaks {r['gpu_peak_gib']}")


def run_child(args, name: str) -> tuple[int | None, str, str]:
    """One configuration in its own process session; on timeout the whole session is killed and
    any Ray left behind stopped, so the next configuration starts on free GPUs."""
    import signal

    child = [sys.executable, __file__, "--one", name, "--model", args.model, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--prompts-per-gpu", str(args.prompts_per_gpu), "--group", str(args.group),
             "--max-tokens", str(args.max_tokens), "--work", args.work] + (["--cuda-graphs"] if args.cuda_graphs else [])
    proc = subprocess.Popen(child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)
        return None, stdout, f"timed out after {args.timeout} s\n{stderr}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="c1,c2,s2,s2o,c4,s4,s4o")
    parser.add_argument("--model", default="1.5b", choices=sorted(common.MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts-per-gpu", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--cuda-graphs", action="store_true", help="engines with CUDA graphs (slower start)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    parser.add_argument("--work", default="/tmp/rlp-gpu-bench")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: run this configuration only
    args = parser.parse_args()
    if args.one:
        run_one(args, args.one)
        return
    names = args.configs.split(",")
    for name in names:
        parse_config(name)
    common.header(f"GRPO scaling: {args.model}, {args.prompts_per_gpu} prompts x G={args.group} per GPU, max "
                  f"{args.max_tokens} tokens, {'CUDA graphs' if args.cuda_graphs else 'eager'}, {args.steps} steps "
                  f"(means over steps {args.warmup + 1}-{args.steps})")
    started = time.perf_counter()
    common.build_model(Path(args.work), args.model)  # once, outside every configuration's timeout
    print(f"model ready in {time.perf_counter() - started:.0f} s", flush=True)
    results = []
    for name in names:
        print(f"=== {name} ({time.strftime('%T')})", flush=True)
        rc, stdout, stderr = run_child(args, name)
        line = next((l for l in stdout.splitlines() if l.startswith("SUMMARY ")), None)
        if line is None:
            print(f"{name}: failed (rc {rc})\n{stderr[-4000:]}", flush=True)
            continue
        summary = json.loads(line[len("SUMMARY "):])
        summary["samples"] = args.prompts_per_gpu * summary["gpus"] * args.group
        results.append(summary)
        print(line, flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
