"""A step progress bar with ETA (rich), quiet when stderr is not a terminal except for a
periodic log line, so CI logs and pipes stay readable. It also tells `interrupt` the steps done,
for the line a Ctrl-C prints."""

from __future__ import annotations

import logging
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rl_pipeline import interrupt

log = logging.getLogger(__name__)


class StepProgress:
    def __init__(self, label: str, total: int, start: int = 0, log_every_s: float = 10.0) -> None:
        self.label, self.total, self.done = label, total, start
        self.log_every_s, self._last_log = log_every_s, time.monotonic()
        self._progress = None
        interrupt.at_step(label, start, total)
        if sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._progress.add_task(label, total=total, completed=start, info="")

    def __enter__(self) -> "StepProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, **info: float) -> None:
        self.done += 1
        interrupt.at_step(self.label, self.done, self.total)
        text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=text)
        elif time.monotonic() - self._last_log >= self.log_every_s or self.done == self.total:
            self._last_log = time.monotonic()
            log.info("%s %d/%d %s", self.label, self.done, self.total, text)
