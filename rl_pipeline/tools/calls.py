"""Tool calls: parse them out of a model turn, run many at once with a time limit each.

The call markup is Qwen2.5's (and the tiny model's): ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``, one or more per assistant turn. :class:`ToolRunner` runs the calls of one
turn of every trajectory on a thread pool, so their time overlaps. A call that raises, that
names an unknown tool or has arguments that do not fit the tool's schema, or that runs past
``timeout_s``, becomes an ``error: ...`` result the policy reads back; nothing raises out of
:meth:`ToolRunner.run`. A timed-out call cannot be stopped (it is a thread): it is abandoned and
the pool replaced, so a stuck tool never blocks later turns (the ``python`` tool's sandbox
kills its own program at its own wall limit).
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rl_pipeline.tools import Tool, check_arguments

log = logging.getLogger(__name__)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
# How often the runner looks again while some calls still wait for a free thread.
_QUEUE_POLL_S = 0.01


@dataclass
class ToolCall:
    """One call as the model wrote it; `error` says why it cannot run (unparseable JSON)."""

    name: str
    arguments: Any
    error: str | None = None


@dataclass
class ToolResult:
    """What came back: `output` is the text the policy reads; status ok | error | timeout | invalid."""

    name: str
    arguments: Any
    output: str
    status: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "output": self.output,
                "status": self.status, "seconds": self.seconds}


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{"name", "arguments"}</tool_call>`` in `text`, in order."""
    calls = []
    for body in _CALL.findall(text):
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(ToolCall("", None, f"the tool call is not valid JSON ({exc.msg} at {exc.pos})"))
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            calls.append(ToolCall("", None, 'a tool call is {"name": "...", "arguments": {...}}'))
            continue
        calls.append(ToolCall(payload["name"], payload.get("arguments", {})))
    return calls


class ToolRunner:
    """Runs tool calls on up to `max_concurrency` threads, each limited to `timeout_s` of run time
    (counted from when its thread starts it, not from when it was queued)."""

    def __init__(self, tools: dict[str, Tool], timeout_s: float, max_concurrency: int = 64) -> None:
        self.tools, self.timeout_s, self.max_concurrency = tools, timeout_s, max_concurrency
        self.schemas = {name: tool.schema for name, tool in tools.items()}
        self.executor = self._new_pool()

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="tool")

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """One result per call, in order; never raises for a tool's failure."""
        results: list[ToolResult | None] = [self._refusal(call) for call in calls]
        started: dict[int, float] = {}
        pending: dict[Future, int] = {
            self.executor.submit(self._timed, i, call, started): i for i, call in enumerate(calls) if results[i] is None
        }
        abandoned = False
        while pending:
            now = time.monotonic()
            running = [started[i] + self.timeout_s for i in pending.values() if i in started]
            queued = len(running) < len(pending)
            next_deadline = min(running, default=now + self.timeout_s)
            done, _ = wait(pending, timeout=max(0.0, min(next_deadline - now, _QUEUE_POLL_S if queued else 1e9)),
                           return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
            now = time.monotonic()
            for future, i in list(pending.items()):
                if i in started and now - started[i] >= self.timeout_s:
                    pending.pop(future)
                    abandoned = True
                    results[i] = ToolResult(calls[i].name, calls[i].arguments,
                                            f"error: tool {calls[i].name!r} timed out after {self.timeout_s:g} s",
                                            "timeout", now - started[i])
        if abandoned:  # its threads may never come back: later turns get fresh ones
            log.warning("tools: a call overran %.1f s; abandoning its thread", self.timeout_s)
            self.executor.shutdown(wait=False)
            self.executor = self._new_pool()
        return results  # type: ignore[return-value]

    def _refusal(self, call: ToolCall) -> ToolResult | None:
        """The result of a call that must not run (bad JSON, unknown tool, bad arguments), or None."""
        problem = call.error
        if problem is None and call.name not in self.tools:
            problem = f"unknown tool {call.name!r}; tools are: {', '.join(sorted(self.tools))}"
        if problem is None:
            problem = check_arguments(self.schemas[call.name], call.arguments)
        if problem is None:
            return None
        return ToolResult(call.name, call.arguments, f"error: {problem}", "invalid", 0.0)

    def _timed(self, index: int, call: ToolCall, started: dict[int, float]) -> ToolResult:
        started[index] = begin = time.monotonic()
        try:
            output, status = self.tools[call.name](call.arguments), "ok"
        except Exception as exc:  # noqa: BLE001 - a failing tool is an answer the policy reads
            output, status = f"error: {type(exc).__name__}: {exc}", "error"
        return ToolResult(call.name, call.arguments, output, status, time.monotonic() - begin)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
