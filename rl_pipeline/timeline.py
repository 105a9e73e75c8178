"""A run's timeline: every phase of every step as a wall-clock span, in the Chrome trace event
format (`timeline.json` in the run dir; open it in https://ui.perfetto.dev or chrome://tracing).

One track per role, as the driver sees it: the rollout engines (generate, evaluation), the reward
service, the reference and teacher models, the trainer ranks (train, hand-overs of a shared GPU),
the weight sync, and the driver itself (one span per step, waits). A background collection
(`grpo.overlap_generation`) puts its spans on the same tracks at the times they ran, so overlap,
idle gaps and hand-overs show at a glance. Spans come from `pipelines/step_timing.PhaseTimer`
(the phases behind the `time/*` metrics), from the actors' own clocks where they report one
(the hybrid engine's memory switches), and, with several engines, one track per engine: each
engine's share of a generate call from the call to its result's arrival (`RolloutGroup.take_spans`),
so an engine idling behind another's long completions shows.

The file is a JSON array written as the run goes (the format allows the closing bracket to be
missing, so a killed run's file still opens); a resumed run first drops the spans of steps after
its checkpoint, so each step appears once, as in metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from rl_pipeline.atomic import atomic_write_text

# Phase -> the role whose work it is (the track it is drawn on).
TRACKS = {
    "step": "driver", "rollout_wait": "driver", "other": "driver",
    "generate": "rollout engines", "eval": "rollout engines", "wake": "rollout engines", "sleep": "rollout engines",
    "reward": "reward service", "reference": "reference model", "teacher": "teacher model",
    "train": "trainer ranks", "onload": "trainer ranks", "offload": "trainer ranks",
    "sync": "weight sync",
}


def read_timeline(path: str | Path) -> list[dict]:
    """The events of a timeline.json, closed or not (a run still going or killed)."""
    text = Path(path).read_text().strip() if Path(path).exists() else ""
    if not text:
        return []
    text = text.removesuffix("]").rstrip().rstrip(",")
    return [e for e in json.loads(text + "]") if e]


class Timeline:
    """Appends spans to run_dir/timeline.json (see the module docstring)."""

    def __init__(self, run_dir: str | Path, resume_after_step: int | None = None) -> None:
        self.path = Path(run_dir) / "timeline.json"
        kept = []
        if resume_after_step is not None:
            kept = [e for e in read_timeline(self.path)
                    if e.get("ph") == "M" or e.get("args", {}).get("step", 0) <= resume_after_step]
        atomic_write_text(self.path, "[\n" + "".join(json.dumps(e) + ",\n" for e in kept))
        self._tracks = {e["args"]["name"]: e["tid"] for e in kept if e.get("name") == "thread_name"}
        self._file = self.path.open("a")
        if not kept:
            self._write([{"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "rlp run"}}])

    def spans(self, step: int, spans: list[tuple]) -> None:
        """(phase, wall-clock start in seconds since the epoch, seconds[, track]) of step `step`;
        without a track, the phase's role's (TRACKS)."""
        events = []
        for phase, start, seconds, *track in spans:
            name = track[0] if track else TRACKS.get(phase, phase)
            events.append({"name": phase, "ph": "X", "pid": 1, "tid": self._track(name, events),
                           "ts": round(start * 1e6), "dur": max(round(seconds * 1e6), 1), "args": {"step": step}})
        self._write(events)

    def _track(self, name: str, events: list[dict]) -> int:
        if name not in self._tracks:
            self._tracks[name] = len(self._tracks) + 1
            events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": self._tracks[name],
                           "args": {"name": name}})
        return self._tracks[name]

    def _write(self, events: list[dict]) -> None:
        if events:
            self._file.write("".join(json.dumps(e) + ",\n" for e in events))
            self._file.flush()

    def close(self) -> None:
        self._file.write("{}]\n")  # an empty event keeps the array valid after the last comma
        self._file.close()
