"""The pipeline's final report: held-out evaluation of each named model, report.md with a
table (accuracy greedy and pass@k, mean response length, wall time per stage) and curves.png
(reward, held-out accuracy and KL over the GRPO steps), and view.html (rlp view: every stage's
curves, samples and recipe) which report.md links."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from rl_pipeline.atomic import atomic_output, atomic_write_text
from rl_pipeline.tracking import read_metrics
from rl_pipeline.view import write_page

log = logging.getLogger(__name__)


def evaluate_models(plan) -> dict[str, dict[str, float]]:
    """eval/* metrics per model; each result is cached in report/, so a rerun skips it."""
    from rl_pipeline.pipelines.evaluate import run_eval

    out_dir = plan.run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    results = {}
    for label, model_path in plan.report.get("models", {}).items():
        cache = out_dir / f"eval_{label}.json"
        if not cache.exists():
            log.info("evaluating %s (%s)", label, model_path)
            atomic_write_text(cache, json.dumps(run_eval(plan.report["recipe"], model_path)))
        results[label] = json.loads(cache.read_text())
    return results


def report_table(results: dict[str, dict[str, float]], seconds: dict[str, float], k: int) -> str:
    lines = [
        f"| model | greedy accuracy | pass@{k} | mean response length (tokens) |",
        "|---|---|---|---|",
    ]
    for label, m in results.items():
        lines.append(f"| {label} | {m['eval/accuracy']:.3f} | {m.get(f'eval/pass@{k}', float('nan')):.3f} "
                     f"| {m['eval/response_length']:.1f} |")
    lines += ["", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {name} | {s:.0f} |" for name, s in seconds.items()]
    return "\n".join(lines)


def plot_curves(metrics_path: Path, out_png: Path) -> bool:
    """reward, held-out accuracy and KL against the GRPO step; False when there is nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return False
    panels = [("reward/total/mean", "train reward (mean)"), ("eval/accuracy", "held-out greedy accuracy"),
              ("policy/kl_ref", "KL to reference (k3)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # the temp name does not end in .png
    plt.close(fig)
    return True


def write_report(plan, seconds: dict[str, float]) -> Path:
    """report.md (and curves.png) for a pipeline `plan`; `seconds` is the wall time per stage."""
    results = evaluate_models(plan)
    k = plan.report["recipe"].grpo.eval_samples if plan.report.get("recipe") else 1
    table = report_table(results, seconds, k)
    curves_stage = plan.report.get("curves")
    has_curves = bool(curves_stage) and plot_curves(plan.run_dir / curves_stage / "metrics.jsonl",
                                                     plan.run_dir / "curves.png")
    text = "\n".join([
        f"# {plan.run_dir.name}: post-training report", "",
        "Held-out evaluation (the test split, never trained on); greedy decoding for accuracy,",
        f"{k} samples at the rollout temperature for pass@{k}.", "", table, "",
        "![GRPO curves](curves.png)" if has_curves else "", "",
        "Every stage's curves, the completions GRPO sampled step by step and the recipes: "
        "[view.html](view.html) (one file, opens offline; `rlp view " + str(plan.run_dir) + " --serve` "
        "keeps it current while a run goes).", "",
        "TensorBoard: `tensorboard --logdir " + str(plan.run_dir) + "`", "",
    ])
    atomic_write_text(plan.run_dir / "report.md", text)
    page = write_page(plan.run_dir)  # after report.md: the page shows it
    print(table)
    print(f"page: {page}")
    return plan.run_dir / "report.md"
