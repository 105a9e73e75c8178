"""rl_pipeline.tracking: a resumed run's metrics.jsonl keeps each step once; asking for wandb
without the package is a one-line recipe error, not an ImportError traceback."""

from __future__ import annotations

import pytest

from rl_pipeline.config import InputError, TrackingConfig
from rl_pipeline.tracking import Tracker, read_metrics


def test_resume_drops_the_steps_after_the_checkpoint(tmp_path):
    tracker = Tracker(tmp_path, TrackingConfig(tensorboard=False))
    for step in range(1, 6):
        tracker.log(step, {"reward/total/mean": step / 10})
    tracker.close()
    resumed = Tracker(tmp_path, TrackingConfig(tensorboard=False), resume_after_step=3)
    resumed.log(4, {"reward/total/mean": 0.9})
    resumed.close()
    assert [(r["step"], r["reward/total/mean"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_wandb_without_the_package_names_the_key_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # the fault: wandb not installed
    with pytest.raises(InputError, match=r"tracking\.wandb: .*rl_pipeline\[wandb\]"):
        Tracker(tmp_path, TrackingConfig(tensorboard=False, wandb=True))
