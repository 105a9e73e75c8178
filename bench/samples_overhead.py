"""What the sample log and the timeline cost a GRPO step on the CPU, measured in the run itself.

    .venv/bin/python bench/samples_overhead.py [--steps 12] [--sft-steps 300]

One `train_grpo` run of the tiny model (after --sft-steps of `rlp sft` on the synthetic task, so
groups are not flat) with TensorBoard on, samples every step (grpo.log_samples_every 1, 4 groups)
and the timeline. The tracker's `log_samples` and `log_spans` are timed where they run (wrapped,
then called as they are) together with building the rows (`group_rows`, `as_markdown`,
`table_rows`), and set against the steps' own wall time (`time/step` of metrics.jsonl). Target:
<= 2% of a step. A second run with grpo.log_samples_every 0 gives the step time without samples
beside it (noisy on a shared machine: the in-run share is the number to read).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def recipe(model: Path, task: Path, out: Path, steps: int, samples_every: int):
    from rl_pipeline.config import parse_recipe

    return parse_recipe({
        "name": "bench-samples", "output_dir": str(out), "model": {"path": str(model)},
        "data": {"train": {"path": str(task / "train.jsonl")}, "eval": {"path": str(task / "eval.jsonl")},
                 "max_length": 32},
        "trainer": {"lr": 1e-4, "micro_batch_size": 32, "warmup_steps": 0, "schedule": "constant"},
        "rollout": {"temperature": 1.0, "max_tokens": 8},
        "grpo": {"steps": steps, "prompts_per_step": 16, "group_size": 8, "prompt_template": "{prompt}",
                 "drop_flat_groups": False, "log_samples_every": samples_every, "log_samples_groups": 4},
        "rewards": {"functions": [{"name": "math", "kwargs": {"answer_after": None}}]},
        "tracking": {"tensorboard": True},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sft-steps", type=int, default=300)
    args = parser.parse_args()

    import ray

    import rl_pipeline.pipelines.grpo as grpo
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.pipelines.sft import train_sft
    from rl_pipeline.tracking import Tracker, read_metrics

    spent = {"seconds": 0.0}

    def timed(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent["seconds"] += time.perf_counter() - t0
        return wrapper

    for name in ("log_samples", "log_spans"):
        setattr(Tracker, name, timed(getattr(Tracker, name)))
    for name in ("group_rows", "as_markdown", "table_rows"):
        setattr(grpo, name, timed(getattr(grpo, name)))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-samples-") as tmp:
        work = Path(tmp)
        build_tiny_model(work / "model")
        write_task(work / "task", {"train": 4000, "eval": 64}, seed=0)
        base = train_sft(parse_recipe({
            "name": "base", "output_dir": str(work), "model": {"path": str(work / "model")},
            "data": {"train": {"path": str(work / "task" / "train.jsonl"), "format": "prompt_completion"},
                     "max_length": 32},
            "trainer": {"micro_batch_size": 128, "lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 100},
            "sft": {"max_steps": args.sft_steps}, "tracking": {"tensorboard": False}}),
            run_dir=work / "sft").final_model
        results = {}
        for label, every in (("samples + timeline", 1), ("timeline only", 0)):
            spent["seconds"] = 0.0
            run = grpo.train_grpo(recipe(base, work / "task", work, args.steps, every), run_dir=work / label)
            steps = [r["time/step"] for r in read_metrics(run.run_dir / "metrics.jsonl") if "time/step" in r]
            results[label] = (sum(steps), spent["seconds"], len(steps))
    ray.shutdown()
    print("\n| run | steps | sum of time/step (s) | mean step (s) | logging (s) | logging / steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (total, logging, count) in results.items():
        print(f"| {label} | {count} | {total:.2f} | {total / count:.3f} | {logging:.4f} | {logging / total:.3%} |")


if __name__ == "__main__":
    main()
