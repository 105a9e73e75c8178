"""On-policy distillation vs off-policy SFT on the teacher's samples: held-out accuracy per
wall-clock second for the same student, the same teacher and the same budget (CPU, tiny world).

    .venv/bin/python bench/onpolicy_distill.py [--opd-steps 60] [--opd-lr 1e-4 3e-4 1e-3] [--eval-every 10]
        [--problems 1000] [--sft-steps 200]

Set-up (not timed): a tiny model, the synthetic task (chat prompts, as `rlp distill` writes chat
data), a student trained with `rlp sft`'s pipeline until 30% greedy accuracy on eval.jsonl, and a
teacher trained on from the student until 85%.
- on-policy: `rlp grpo` with `teacher:` (reward_weight 0: the math reward only grades the
  evaluation), --opd-steps steps of 32 prompts x 4 samples, one arm per --opd-lr; held-out greedy
  accuracy on test.jsonl (200 problems) every --eval-every steps. The budget is the sum of the
  first arm's step times.
- off-policy: `rlp distill` (the teacher answers --problems training problems once, original kind,
  the math reward keeps correct answers), then `rlp sft` of the student on that dataset, greedy
  accuracy on test.jsonl every --eval-every steps. Its clock is distill's generation time plus the
  SFT step times; its accuracy at the budget is the last evaluation inside it.
Evaluation and actor start-up are excluded from both clocks (printed separately). One run, one
machine: a shared 2-core machine is noisy, so read a few points of accuracy into each number.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

# Run as a script, this folder comes first on sys.path, and bench/rewards.py would shadow the
# `rewards` package (here and in the Ray workers, which inherit the driver's script folder).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MATH = {"functions": [{"name": "math", "kwargs": {"answer_after": None}}]}


def sft_recipe(work: Path, model: str, name: str, train: dict, stop_at: float, max_steps: int, eval_every: int,
               lr: tuple[float, float, str], eval_split: str = "eval") -> dict:
    return {
        "name": name, "output_dir": str(work / name), "model": {"path": model},
        "data": {"train": train, "max_length": 48,
                 "eval": {"path": str(work / "task" / f"{eval_split}.jsonl"), "format": "prompt_completion",
                          "chat": True}},
        "trainer": {"micro_batch_size": 128, "lr": lr[0], "min_lr": lr[1], "schedule": lr[2], "warmup_steps": 20,
                    "betas": [0.9, 0.98]},
        "sft": {"max_steps": max_steps, "eval_every": eval_every, "stop_at_accuracy": stop_at, "log_every": 10},
        "tracking": {"tensorboard": False},
    }


def build_world(work: Path) -> tuple[str, str]:
    """The student (30% on eval.jsonl) and the teacher (85%), both trained with the real SFT pipeline."""
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.pipelines.sft import train_sft

    model = str(build_tiny_model(work / "tiny-model"))
    write_task(work / "task", {"train": 9000, "eval": 200, "test": 200}, digits=2, ops="+", seed=0)
    train = {"path": str(work / "task" / "train.jsonl"), "format": "prompt_completion", "chat": True}
    student = train_sft(parse_recipe(sft_recipe(work, model, "student", train, 0.30, 1000, 10,
                                                (1e-3, 1e-3, "constant")))).final_model
    teacher = train_sft(parse_recipe(sft_recipe(work, str(student), "teacher", train, 0.85, 1000, 25,
                                                (1e-3, 1e-4, "constant")))).final_model
    return str(student), str(teacher)


def run_on_policy(work: Path, student: str, teacher: str, args, lr: float) -> dict:
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.pipelines.grpo import train_grpo
    from rl_pipeline.tracking import read_metrics

    recipe = parse_recipe({
        "name": f"opd-lr{lr:g}", "output_dir": str(work / "opd"), "model": {"path": student},
        "data": {"train": {"path": str(work / "task" / "train.jsonl")},
                 "eval": {"path": str(work / "task" / "test.jsonl")}, "max_length": 48},
        "trainer": {"micro_batch_size": 128, "lr": lr, "min_lr": 0.0, "warmup_steps": 5, "schedule": "linear",
                    "betas": [0.9, 0.99]},
        "rollout": {"temperature": 1.0, "max_tokens": 8},
        "grpo": {"steps": args.opd_steps, "prompts_per_step": 32, "group_size": 4, "loss_aggregation": "token-mean",
                 "eval_every": args.eval_every, "eval_samples": 1},
        "teacher": {"model": {"path": teacher}, "coef": 1.0, "reward_weight": 0.0},
        "rewards": MATH, "tracking": {"tensorboard": False},
    })
    begin = time.perf_counter()
    result = train_grpo(recipe)
    wall = time.perf_counter() - begin
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    clock, curve, phases = 0.0, [], []
    for row in rows:
        clock += row.get("time/step", 0.0)
        if "eval/accuracy" in row:
            curve.append((row["step"], clock, row["eval/accuracy"]))
        if "time/step" in row and row["step"] > 2:  # steps 1-2 warm up
            phases.append(row)
    split = {k: mean(r.get(f"time/{k}", 0.0) for r in phases)
             for k in ("generate", "reward", "teacher", "train", "sync", "other", "step")}
    evals = sum(r.get("time/eval", 0.0) for r in rows)
    return {"curve": curve, "budget": clock, "split": split, "startup": wall - clock - evals, "eval_s": evals,
            "kl": [r["distill/reverse_kl"] for r in rows if "distill/reverse_kl" in r]}


def run_off_policy(work: Path, student: str, teacher: str, args) -> dict:
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.pipelines.distill import DistillActors, run_distill
    from rl_pipeline.pipelines.sft import train_sft
    from rl_pipeline.tracking import read_metrics

    recipe = parse_recipe({
        "name": "offpolicy-data", "output_dir": str(work / "offpolicy"), "model": {"path": student},
        "data": {"train": {"path": str(work / "task" / "train.jsonl"), "limit": args.problems}, "max_length": 48},
        "rollout": {"temperature": 1.0, "max_tokens": 8},
        "distill": {"expert": teacher, "system_prompt": "unused", "kinds": ["original"], "samples_per_prompt": 1,
                    "threshold": 1.0, "id_column": "id", "shard_size": 256, "strip_think_in_original": False},
        "rewards": MATH, "tracking": {"tensorboard": False},
    })
    begin = time.perf_counter()
    actors = DistillActors.start(recipe)
    started = time.perf_counter()
    try:
        data = run_distill(recipe, output=work / "offpolicy" / "data", actors=actors)
    finally:
        actors.shutdown()
    generate_s = time.perf_counter() - started  # input checks, generation, rewards, writing the shards
    startup = started - begin
    train = {"path": str(data.output), "format": "messages"}
    sft = parse_recipe(sft_recipe(work, student, "offpolicy-sft", train, 1.0, args.sft_steps, args.eval_every,
                                  (1e-3, 1e-3, "constant"), eval_split="test"))
    begin = time.perf_counter()
    result = train_sft(sft)
    wall = time.perf_counter() - begin
    # SFT logs every 10th step and each evaluation; its step time is near constant, so the clock at
    # step k is generation + k * (mean logged step time).
    curve = [(0, generate_s, None)]
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    per_step = mean(r["step_seconds"] for r in rows if "step_seconds" in r)
    for row in rows:
        if "val_accuracy" in row:
            curve.append((row["step"], generate_s + row["step"] * per_step, row["val_accuracy"]))
    return {"curve": curve, "generate_s": generate_s, "kept": data.rows, "per_step": per_step,
            "startup": startup + wall - result.steps * per_step, "steps": result.steps}


def accuracy_at(curve: list[tuple], budget: float) -> tuple[float, float]:
    """(accuracy, clock) of the last evaluation at or before `budget` seconds."""
    inside = [(acc, t) for _, t, acc in curve if acc is not None and t <= budget + 1e-9]
    return inside[-1] if inside else (float("nan"), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opd-steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--problems", type=int, default=1000, help="training problems the teacher answers")
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--opd-lr", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                        help="one on-policy arm per peak lr (linear decay to 0); the budget is the first arm's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import ray

    work = Path(tempfile.mkdtemp(prefix="rlp-bench-opd-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    student, teacher = build_world(work)
    print(f"set-up (student + teacher SFT): {time.perf_counter() - t0:.0f} s", flush=True)
    arms = {f"on-policy distillation, lr {lr:g}": run_on_policy(work, student, teacher, args, lr) for lr in args.opd_lr}
    off = run_off_policy(work, student, teacher, args)
    ray.shutdown()

    on = next(iter(arms.values()))
    base = on["curve"][0][2]
    budget = on["budget"]
    sigma = math.sqrt(base * (1 - base) / 200)
    print(f"\nstudent held-out greedy accuracy (test.jsonl, 200): {base:.3f} (1 sigma {sigma:.3f}); "
          f"budget = on-policy's {args.opd_steps} steps = {budget:.1f} s")
    print("\n| method | clock at budget s | held-out greedy at budget | gain | gain per 100 s | last point (clock s, acc) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, res in (*arms.items(), ("off-policy: distill + SFT (teacher samples filtered by the math reward)", off)):
        acc, t = accuracy_at(res["curve"], budget)
        last = [(round(t_, 1), a) for _, t_, a in res["curve"] if a is not None][-1]
        print(f"| {name} | {t:.1f} | {acc:.3f} | {acc - base:+.3f} | {(acc - base) / budget * 100:+.3f} | {last} |")
    print("\ncurves (step, clock s, held-out greedy accuracy):")
    for name, res in arms.items():
        print(f"  {name}: " + ", ".join(f"({s}, {t:.0f}, {a:.3f})" for s, t, a in res["curve"]))
    print("  off-policy: " + ", ".join(f"({s}, {t:.0f}, {a if a is None else round(a, 3)})" for s, t, a in off["curve"]))
    print(f"\noff-policy: teacher generation {off['generate_s']:.1f} s for {args.problems} problems, {off['kept']} "
          f"correct samples kept; SFT {off['per_step']:.3f} s/step x {off['steps']} steps")
    print(f"start-up excluded: on-policy {on['startup']:.0f} s, off-policy {off['startup']:.0f} s; "
          f"evaluation excluded: on-policy {on['eval_s']:.0f} s")
    print("\non-policy distillation step time (mean of steps 3-N, s):")
    print("| arm | generate | reward | teacher | train | sync | other | step | reverse KL per token, first / last step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, res in arms.items():
        s = res["split"]
        print(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in ("generate", "reward", "teacher", "train", "sync",
                                                                  "other", "step"))
              + f" | {res['kl'][0]:.3f} / {res['kl'][-1]:.3f} |")


if __name__ == "__main__":
    main()
