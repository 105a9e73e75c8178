"""GRPO with a trained reward model as its only reward, on the tiny world (CPU): does it learn?

The whole chain through the real drivers, with the shipped recipes (paths moved to a work folder):
a tiny model and the synthetic task (`rlp tiny-model`, `rlp make-task`), the GRPO base
(recipes/sft_tiny_base.yaml: SFT stopped at 30% validation greedy accuracy), the judge base (the
same SFT run on to 95%), preference pairs of the GRPO base's own answers ranked by the math reward
(recipes/rm_pairs_tiny.yaml, `rlp distill` with distill.pairs, for the training and the test
problems), the reward model from the judge base (recipes/rm_tiny.yaml: Bradley-Terry with reward
centering), then GRPO (recipes/grpo_rm_tiny.yaml) whose only reward is that RM's verdict (score > 0)
with a KL penalty to the base; the math reward has weight 0 and only measures held-out greedy
accuracy on the 200 test problems. One GRPO run per --seeds; --control adds GRPO on the math
reward itself (what the RM stands in for), --raw the RM's raw score without the KL term (the
setting that collapses).

Prints held-out greedy accuracy by GRPO step and the gain in binomial standard deviations of the
held-out set (sqrt(p(1-p)/200) at the starting accuracy); "beyond noise" is >= 3.

    python bench/grpo_with_rm.py [--work DIR] [--grpo-steps 100] [--seeds 0 1] [--control] [--raw]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/rewards.py would shadow the
# `rewards` package that the reward service and `rlp distill` import.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
REPO = Path(__file__).resolve().parents[1]


def recipe(name: str, work: Path, overrides: list[str]):
    from rl_pipeline.config import load_recipe

    text = (REPO / "recipes" / name).read_text().replace("runs/", f"{work}/")
    path = work / name
    path.write_text(text)
    return load_recipe(path, [f"output_dir={work}", "tracking.tensorboard=false", *overrides])


def held_out_curve(run_dir: Path) -> list[tuple[int, float]]:
    from rl_pipeline.tracking import read_metrics

    return [(r["step"], r["eval/accuracy"]) for r in read_metrics(run_dir / "metrics.jsonl") if "eval/accuracy" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a temp folder); finished parts are reused")
    parser.add_argument("--grpo-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="GRPO seeds, one run each")
    parser.add_argument("--control", action="store_true", help="also run GRPO on the math reward itself")
    parser.add_argument("--raw", action="store_true", help="also run GRPO on the RM's raw score, no KL term")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-rm-") as tmp:
        run(args, args.work or Path(tmp))


def run(args, work: Path) -> None:
    from rl_pipeline.pipelines.grpo import train_grpo

    seconds: dict[str, float] = {}
    rm = build_reward_model(work, seconds)
    def rm_only(threshold: str) -> str:  # the RM is the reward; the math reward (weight 0) only measures
        return (f"rewards.functions=[{{name: reward_model, weight: 1.0, kwargs: {{model: {rm}, input_format: pair, "
                f"batch_size: 256{threshold}}}}}, {{name: math, weight: 0.0, kwargs: {{answer_after: null}}}}]")

    runs = {f"RM verdict + KL, seed {seed}": [f"grpo.seed={seed}", rm_only(", threshold: 0.0")] for seed in args.seeds}
    if args.raw:
        runs["RM raw score, no KL, seed 0"] = ["grpo.kl_coef=0.0", rm_only("")]
    if args.control:
        math_only = "rewards.functions=[{name: math, weight: 1.0, kwargs: {answer_after: null}}]"
        runs["math reward (control), seed 0"] = [math_only]
    curves = {}
    for name, overrides in runs.items():
        t = time.perf_counter()
        result = train_grpo(recipe("grpo_rm_tiny.yaml", work, [f"grpo.steps={args.grpo_steps}", *overrides]),
                            run_dir=work / f"grpo-{len(curves)}-{time.strftime('%H%M%S')}")
        seconds[f"grpo, {name}"] = time.perf_counter() - t
        curves[name] = held_out_curve(result.run_dir)
        print(name, curves[name], flush=True)
    print_table(curves, seconds)


def timed(seconds: dict[str, float], name: str, fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds[name] = time.perf_counter() - t
    return out


def build_reward_model(work: Path, seconds: dict[str, float]) -> Path:
    """Everything before GRPO, each part skipped when a finished one is in `work`; returns the RM."""
    from rl_pipeline.data.synthetic import write_task
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.pipelines.distill import run_distill
    from rl_pipeline.pipelines.rm import train_rm
    from rl_pipeline.pipelines.sft import train_sft

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tiny-model").exists():
        build_tiny_model(work / "tiny-model")
    if not (work / "task" / "test.jsonl").exists():
        write_task(work / "task", {"train": 9000, "eval": 200, "test": 200})
    if not (work / "sft-base" / "final_model").exists():
        timed(seconds, "sft base", train_sft, recipe("sft_tiny_base.yaml", work, []), run_dir=work / "sft-base")
    if not (work / "sft-judge" / "final_model").exists():
        judge = [f"model.path={work}/sft-base/final_model", "sft.stop_at_accuracy=0.95", "sft.max_steps=1500",
                 "trainer.warmup_steps=20"]
        timed(seconds, "sft judge", train_sft, recipe("sft_tiny_base.yaml", work, judge), run_dir=work / "sft-judge")
    for split, extra in (("train", []), ("test", [f"data.train.path={work}/task/test.jsonl", "data.train.limit=null",
                                                  f"distill.output={work}/rm-pairs/test"])):
        if not (work / "rm-pairs" / split / "data").exists():
            timed(seconds, f"pairs ({split})", run_distill, recipe("rm_pairs_tiny.yaml", work, extra))
    result = timed(seconds, "rm", train_rm, recipe("rm_tiny.yaml", work, ["rm.save_every=null"]),
                   run_dir=work / f"rm-{time.strftime('%H%M%S')}")
    print(f"RM: held-out pairwise accuracy {result.final_eval['eval/rm/accuracy']:.3f}, margin "
          f"{result.final_eval['eval/rm/margin']:.2f} after {result.steps} steps ({seconds['rm']:.0f} s)", flush=True)
    return result.final_model


def print_table(curves: dict[str, list[tuple[int, float]]], seconds: dict[str, float]) -> None:
    print("\n| GRPO reward | held-out greedy accuracy by step | gain | binomial sd (n=200) | gain / sd |")
    print("|---|---|---|---|---|")
    for name, curve in curves.items():
        before, after = curve[0][1], curve[-1][1]
        sd = math.sqrt(before * (1 - before) / 200)
        steps = " ".join(f"{step}:{acc:.3f}" for step, acc in curve)
        print(f"| {name} | {steps} | {after - before:+.3f} | {sd:.3f} | {(after - before) / sd:.1f} |")
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)


if __name__ == "__main__":
    main()
