"""GRPO with a trained reward model as its only reward, on the tiny world (CPU): does it learn?

The whole chain through the real drivers, with the shipped recipes (paths moved to a work folder):
a tiny model and the synthetic task with pairs (`rlp tiny-model`, `rlp make-task --pairs`), the
GRPO base (recipes/sft_tiny_base.yaml: SFT stopped at 30% validation greedy accuracy), the reward
model from that base (recipes/rm_tiny.yaml: Bradley-Terry on right-vs-mistake pairs), then GRPO
(recipes/grpo_rm_tiny.yaml) whose only reward is that RM; the math reward has weight 0 and only
measures held-out greedy accuracy on the 200 test problems. With --control, the same GRPO with the
math reward as the reward (what the RM stands in for) runs after it, for comparison.

Prints held-out greedy accuracy by GRPO step and the gain in binomial standard deviations of the
held-out set (sqrt(p(1-p)/200) at the starting accuracy); "beyond noise" is >= 3.

    python bench/grpo_with_rm.py [--work DIR] [--grpo-steps 100] [--rm-steps 300] [--control] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path

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
    parser.add_argument("--rm-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="GRPO seed")
    parser.add_argument("--control", action="store_true", help="also run GRPO on the math reward itself")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-rm-") as tmp:
        run(args, args.work or Path(tmp))


def run(args, work: Path) -> None:
    from rl_pipeline.data.synthetic import write_preference_pairs, write_task
    from rl_pipeline.models.tiny import build_tiny_model
    from rl_pipeline.pipelines.grpo import train_grpo
    from rl_pipeline.pipelines.rm import train_rm
    from rl_pipeline.pipelines.sft import train_sft

    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    if not (work / "tiny-model").exists():
        build_tiny_model(work / "tiny-model")
    if not (work / "task" / "test_pairs.jsonl").exists():
        paths = write_task(work / "task", {"train": 9000, "eval": 200, "test": 200})
        for split, path in paths.items():
            write_preference_pairs(path, path.with_name(f"{split}_pairs.jsonl"))
    if not (work / "sft-base" / "final_model").exists():
        t = time.perf_counter()
        train_sft(recipe("sft_tiny_base.yaml", work, []), run_dir=work / "sft-base")
        seconds["sft base"] = time.perf_counter() - t
    t = time.perf_counter()
    rm = train_rm(recipe("rm_tiny.yaml", work, [f"rm.max_steps={args.rm_steps}", "rm.save_every=null"]),
                  run_dir=work / f"rm-{time.strftime('%H%M%S')}")
    seconds["rm"] = time.perf_counter() - t
    print(f"RM: held-out pairwise accuracy {rm.final_eval['eval/rm/accuracy']:.3f}, margin "
          f"{rm.final_eval['eval/rm/margin']:.2f} after {args.rm_steps} steps ({seconds['rm']:.0f} s)", flush=True)
    rm_model = f"{{name: reward_model, weight: 1.0, kwargs: {{model: {rm.final_model}, input_format: pair, batch_size: 256}}}}"
    runs = {"reward model only": [f"rewards.functions=[{rm_model}, "
                                  "{name: math, weight: 0.0, kwargs: {answer_after: null}}]"]}
    if args.control:
        runs["math reward (control)"] = ["rewards.functions=[{name: math, weight: 1.0, kwargs: {answer_after: null}}]"]
    curves = {}
    for name, overrides in runs.items():
        t = time.perf_counter()
        result = train_grpo(recipe("grpo_rm_tiny.yaml", work, [f"grpo.steps={args.grpo_steps}",
                                                               f"grpo.seed={args.seed}", *overrides]),
                            run_dir=work / f"grpo-{len(curves)}-{time.strftime('%H%M%S')}")
        seconds[f"grpo, {name}"] = time.perf_counter() - t
        curves[name] = held_out_curve(result.run_dir)
    print_table(curves, seconds)


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
