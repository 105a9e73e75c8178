"""Metrics: one JSON object per logged step in metrics.jsonl, TensorBoard always, wandb on request;
sampled completions (`log_samples`: samples.jsonl, TensorBoard text, a wandb table); and the
phases' wall-clock spans (`log_spans`: timeline.json, rl_pipeline/timeline.py).

On resume the tracker first drops lines beyond the checkpoint's step, so metrics.jsonl,
samples.jsonl and timeline.json hold every step exactly once however often a run is interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from rl_pipeline.atomic import atomic_write_text
from rl_pipeline.config import InputError, TrackingConfig
from rl_pipeline.timeline import Timeline

log = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Tracker:
    def __init__(self, run_dir: Path, cfg: TrackingConfig, resume_after_step: int | None = None):
        wandb = _import_wandb() if cfg.wandb else None  # before anything is written
        self.path = Path(run_dir) / "metrics.jsonl"
        self.samples_path = Path(run_dir) / "samples.jsonl"
        for path in (self.path, self.samples_path):
            if resume_after_step is not None:
                _truncate_after(path, resume_after_step)
            elif path.exists():
                path.unlink()
        self._file = self.path.open("a")
        self._samples = None  # opened by the first log_samples
        self._timeline, self._resume_after_step = None, resume_after_step  # made by the first log_spans
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_after_step)
        self._wandb, self._wandb_module = None, wandb
        if wandb is not None:
            os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
            self._wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), name=Path(run_dir).name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                if self._tb is not None:
                    self._tb.add_scalar(key, value, step)
        if self._tb is not None:
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def log_samples(self, step: int, rows: list[dict], text: str, table: tuple[list[str], list[list]]) -> None:
        """Sampled completions of step `step`: `rows` (one JSON object each, stamped with the step here)
        to samples.jsonl, `text` (markdown) to TensorBoard, `table` (columns, data) to wandb
        (pipelines/samples.py builds them)."""
        if not rows:
            return
        if self._samples is None:
            self._samples = self.samples_path.open("a")
        self._samples.write("".join(json.dumps({**row, "step": step}) + "\n" for row in rows))
        self._samples.flush()
        if self._tb is not None:
            self._tb.add_text("samples", text, step)
            self._tb.flush()
        if self._wandb is not None:
            columns, data = table
            self._wandb.log({"samples": self._wandb_module.Table(columns=columns, data=data)}, step=step)

    def log_spans(self, step: int, spans: list[tuple]) -> None:
        """(phase, wall-clock start, seconds[, track]) of step `step` to timeline.json."""
        if self._timeline is None:
            self._timeline = Timeline(self.path.parent, self._resume_after_step)
        self._timeline.spans(step, spans)

    def close(self) -> None:
        self._file.close()
        if self._timeline is not None:
            self._timeline.close()
        if self._samples is not None:
            self._samples.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _truncate_after(path: Path, step: int) -> None:
    """Keep only lines with step <= `step` (written to a temp file, then renamed)."""
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _import_wandb():
    try:
        import wandb  # optional dependency (the `wandb` extra), imported only when asked for
    except ImportError:
        raise InputError("tracking.wandb: true needs the wandb package: "
                         "pip install 'rl_pipeline[wandb]' (or set tracking.wandb: false)") from None
    return wandb


def _plain(value):
    """JSON-safe scalar (tensors and numpy numbers become Python floats)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
