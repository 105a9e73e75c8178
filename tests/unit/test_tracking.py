"""rl_pipeline.tracking: a resumed run's metrics.jsonl keeps each step once; asking for wandb
without the package is a one-line recipe error, not an ImportError traceback."""

from __future__ import annotations

import json

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


def _rows() -> list[dict]:
    return [{"kind": "train", "group": 0, "prompt": "12+34=",
             "completions": [{"text": "46", "reward": 1.0, "advantage": 0.87, "length": 3, "finish_reason": "stop"},
                             {"text": "4|7\n", "reward": 0.0, "advantage": -0.87, "length": 4,
                              "finish_reason": "length"}]}]


def test_samples_go_to_samples_jsonl_and_tensorboard_and_a_resume_keeps_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rl_pipeline.pipelines.samples import as_markdown, table_rows

    tracker = Tracker(tmp_path, TrackingConfig(tensorboard=True))
    for step in (1, 2, 3):
        tracker.log(step, {"reward/total/mean": 0.5})
        tracker.log_samples(step, _rows(), as_markdown(_rows()), table_rows(step, _rows()))
    tracker.close()
    resumed = Tracker(tmp_path, TrackingConfig(tensorboard=True), resume_after_step=2)
    resumed.log_samples(3, _rows(), as_markdown(_rows()), table_rows(3, _rows()))
    resumed.close()
    rows = read_metrics(tmp_path / "samples.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["completions"][1]["text"] == "4|7\n"
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    assert sorted(texts) == [1, 2, 3]
    assert "| 1.000 | +0.870 | 3 | stop | `46` |" in texts[1] and "`4\\|7\\n`" in texts[1]
    columns, data = table_rows(1, _rows())
    assert columns[:5] == ["step", "kind", "group", "prompt", "completion"] and len(data) == 2
    assert data[1][4] == "4|7\n"
    held_out = [{"step": 1, "kind": "eval", "prompt": "1+1=", "completions": [
        {"text": "2", "reward": None, "length": 2, "finish_reason": "stop", "components": {"math": None}}]}]
    assert "**held-out** prompt: `1+1=`" in as_markdown(held_out) and "| - |  | 2 | stop | `2` |" in as_markdown(held_out)


def test_timeline_is_chrome_trace_events_one_track_per_role_and_a_resume_keeps_each_step_once(tmp_path):
    from rl_pipeline.timeline import read_timeline

    tracker = Tracker(tmp_path, TrackingConfig(tensorboard=False))
    for step in (1, 2, 3):
        t = 1000.0 + 10 * step
        tracker.log_spans(step, [("step", t, 5.0), ("generate", t, 2.0), ("reward", t + 2, 1.0),
                                 ("train", t + 3, 2.0), ("generate", t, 1.5, "rollout engine 1")])
    # A killed run's file has no closing bracket and still reads.
    assert [e["args"]["step"] for e in read_timeline(tmp_path / "timeline.json") if e["ph"] == "X"][-1] == 3
    tracker.close()
    resumed = Tracker(tmp_path, TrackingConfig(tensorboard=False), resume_after_step=2)
    resumed.log_spans(3, [("step", 2000.0, 4.0), ("train", 2001.0, 3.0)])
    resumed.close()
    events = json.loads((tmp_path / "timeline.json").read_text())  # closed: plain JSON
    spans = [e for e in events if e.get("ph") == "X"]
    assert [(e["args"]["step"], e["name"]) for e in spans][-2:] == [(3, "step"), (3, "train")]
    assert sum(e["args"]["step"] == 3 for e in spans) == 2, "step 3's first spans were dropped on resume"
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert sorted(tracks.values()) == ["driver", "reward service", "rollout engine 1", "rollout engines",
                                       "trainer ranks"]
    assert len(tracks) == len(set(tracks)), "one track per role, also across the resume"
    train = next(e for e in spans if e["name"] == "train")
    assert (train["ts"], train["dur"], tracks[train["tid"]]) == (1013_000_000, 2_000_000, "trainer ranks")
