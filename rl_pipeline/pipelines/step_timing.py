"""Time and overlap inside a GRPO step: `PhaseTimer` (wall time per phase, `time/*` metrics)
and `RolloutAhead` (`grpo.overlap_generation`: the next step's rollouts on a background thread)."""

from __future__ import annotations

import contextlib
import time


class PhaseTimer:
    """Wall time per named phase of a step; what no phase covers is reported as `other`. Each
    phase is also kept as a span (phase, wall-clock start, seconds) for the run's timeline."""

    def __init__(self) -> None:
        self.start, self.seconds, self.overlapped = time.perf_counter(), {}, {}
        self.wall_start = time.time()
        self.spans: list[tuple] = []  # (phase, wall-clock start, seconds[, track])

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0, wall = time.perf_counter(), time.time()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0, at=wall)

    def add(self, phase: str, seconds: float, at: float | None = None) -> None:
        """Count `seconds` of this thread's step as `phase` (e.g. what an actor reports it spent);
        `at`, the wall-clock start where known, puts it on the timeline."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        if at is not None:
            self.spans.append((phase, at, seconds))

    def add_span(self, phase: str, at: float, seconds: float, track: str) -> None:
        """A span on a named track (one actor's share of a phase), for the timeline only: the
        phase's time is counted once, by the phase itself."""
        self.spans.append((phase, at, seconds, track))

    def add_overlapped(self, other: "PhaseTimer") -> None:
        """Phases another thread ran while this one worked: reported, not counted against `other`."""
        for phase, value in other.seconds.items():
            self.overlapped[phase] = self.overlapped.get(phase, 0.0) + value
        self.spans.extend(other.spans)

    def metrics(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        out = {f"time/{k}": v for k, v in (self.overlapped | self.seconds).items()}
        out["time/other"] = max(0.0, total - sum(self.seconds.values()))
        out["time/step"] = total
        return out


class RolloutAhead:
    """`grpo.overlap_generation`: collects step k+1's batch on a background thread while step k
    trains, so engines and trainer ranks on different GPUs work at the same time. The batch is
    one step off-policy (sampled before step k's update). Nothing is in flight at the end of a
    step: the driver waits for the batch before the weight sync, since engines must not
    generate while their weights are replaced."""

    def __init__(self, collect) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.collect = collect  # step -> (batch, metrics, PhaseTimer)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")
        self.future = None
        self.ready = None
        self.resume_position: int | None = None  # prompt-stream position before the batch in hand

    def start(self, step: int, position: int) -> None:
        self.resume_position = position
        self.future = self.executor.submit(self.collect, step)

    def wait(self) -> None:
        if self.future is not None:
            self.ready, self.future = self.future.result(), None

    def position_to_save(self, current: int) -> int:
        """The prompt-stream position a checkpoint records: before the batch collected ahead,
        which is not saved, so a resumed run draws those prompts again."""
        return current if self.resume_position is None else self.resume_position

    def take(self):
        ready, self.ready, self.resume_position = self.ready, None, None
        return ready

    def close(self, wait: bool = True) -> None:
        """`wait=False` (a Ctrl-C): leave a collection in progress to die with the actors."""
        self.executor.shutdown(wait=wait, cancel_futures=True)
