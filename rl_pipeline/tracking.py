"""Metrics: one JSON object per logged step in metrics.jsonl, TensorBoard always, wandb on request.

On resume the tracker first drops lines beyond the checkpoint's step, so metrics.jsonl holds
every step exactly once however often a run is interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from rl_pipeline.atomic import atomic_write_text
from rl_pipeline.config import InputError, TrackingConfig

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
        if resume_after_step is not None:
            self._truncate_after(resume_after_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_after_step)
        self._wandb = None
        if wandb is not None:
            os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
            self._wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), name=Path(run_dir).name)

    def _truncate_after(self, step: int) -> None:
        """Keep only lines with step <= `step` (written to a temp file, then renamed)."""
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

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

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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
