"""What `rlp view` shows, read from a run directory and cut to a page-sized budget.

A run directory is a stage's (`rlp grpo`/`sft`/`rm`: metrics.jsonl, samples.jsonl, recipe.yaml
beside each other; `rlp distill`'s output folder: samples.jsonl of kept and rejected answers) or
a pipeline's (`rlp pipeline`/`rlp demo`: one such folder per stage, plus report.md); every
folder holding a metrics.jsonl or a samples.jsonl becomes one stage of the page.

The page must stay a few MB for a 1,000-step run, so (`fit_samples`): every step's curves are
kept (values to 5 significant digits), per-token detail (token texts, gaps) only for up to
`DETAIL_STEPS` evenly spaced steps, and when the samples still exceed the budget, the trained
groups of evenly spaced steps (the first and last always; every held-out answer stays); the page
says how many steps it left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rl_pipeline.tracking import read_metrics

SAMPLES_BUDGET_BYTES = 2_500_000  # of sample rows in one page (curves and Chart.js come on top: ~0.5 MB)
DETAIL_STEPS = 40  # steps whose completions keep their per-token fields
TEXT_LIMIT = 4000  # characters of one prompt or completion
TOKEN_FIELDS = ("tokens", "token_gap", "token_advantage")


def run_data(run_dir: str | Path) -> dict:
    """Everything the page shows of `run_dir`: {"run", "stages": [...], "report"}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    folders = sorted({p.parent for p in log_files(run_dir)}, key=lambda p: (p != run_dir, p.stat().st_mtime))
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl or samples.jsonl here or in a folder below "
                                "(not a run directory)")
    budget = SAMPLES_BUDGET_BYTES // len(folders)
    report = run_dir / "report.md"
    return {"run": run_dir.resolve().name, "stages": [stage_data(f, run_dir, budget) for f in folders],
            "report": report.read_text() if report.exists() else None}


def log_files(run_dir: Path) -> list[Path]:
    """The metrics.jsonl and samples.jsonl of `run_dir` and of the folders right below it."""
    return [p for name in ("metrics.jsonl", "samples.jsonl") for p in (*run_dir.glob(name), *run_dir.glob(f"*/{name}"))]


def stage_data(folder: Path, run_dir: Path, budget: int) -> dict:
    """One stage: its curves, its samples (cut to `budget` bytes) and its recipe."""
    rows = read_metrics(folder / "metrics.jsonl")
    samples, left_out = fit_samples(read_metrics(folder / "samples.jsonl"), budget)
    recipe = folder / "recipe.yaml"
    return {"name": "run" if folder == run_dir else folder.name, "curves": curves(rows), "samples": samples,
            "samples_left_out": left_out, "recipe": recipe.read_text() if recipe.exists() else None}


def curves(rows: list[dict]) -> dict:
    """{"steps": [...], "series": {metric: [value or None per step]}} of every numeric metric."""
    steps = [r["step"] for r in rows]
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and _is_number(v)})
    return {"steps": steps, "series": {k: [_short(r.get(k)) for r in rows] for k in keys}}


def fit_samples(rows: list[dict], budget: int) -> tuple[list[dict], int]:
    """The sample rows a page keeps within `budget` bytes, and how many steps it left out. The
    held-out rows (one short greedy answer per prompt and evaluation) are always kept, so one
    prompt can be followed through every evaluation; the training groups are what is thinned."""
    rows = [_clipped(r) for r in rows]
    steps = sorted({r["step"] for r in rows if r.get("kind") != "eval"})
    detail = set(_evenly(steps, DETAIL_STEPS))
    rows = [r if r["step"] in detail else _without_tokens(r) for r in rows]
    size = sum(len(json.dumps(r)) for r in rows)
    if size <= budget:
        return rows, 0
    kept = set(_evenly(steps, max(2, int(len(steps) * budget / size))))
    return [r for r in rows if r["step"] in kept or r.get("kind") == "eval"], len(steps) - len(kept)


def _evenly(items: list, count: int) -> list:
    """`count` evenly spaced items of `items`, the first and the last among them."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def _clipped(row: dict) -> dict:
    row = {**row, "prompt": _clip(row.get("prompt"))}
    row["completions"] = [{**c, "text": _clip(c.get("text"))} for c in row.get("completions", [])]
    return row


def _without_tokens(row: dict) -> dict:
    completions = [{k: v for k, v in c.items() if k not in TOKEN_FIELDS} for c in row["completions"]]
    return {**row, "completions": completions}


def _clip(text):
    if not isinstance(text, str) or len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT] + f" [... {len(text) - TEXT_LIMIT} more characters]"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value):
    """A metric value to 5 significant digits (None for a missing or non-finite one)."""
    if not _is_number(value):
        return None
    return float(f"{value:.5g}") if isinstance(value, float) else value
