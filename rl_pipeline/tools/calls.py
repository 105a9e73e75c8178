"""Tool calls: parse them out of a model turn, run many at once with a time limit each.

The call markup is Qwen2.5's (and the tiny model's): ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``, one or more per assistant turn. The parser never raises: a body that is
not a call (bad JSON, nesting past MAX_DEPTH, an int past Python's digit limit, NaN, an unpaired
surrogate) is a call with an error, answered ``error: ...`` and counted invalid.
:class:`ToolRunner` runs the calls of one turn of every trajectory on a thread pool, so their
time overlaps. A call that raises, that names an unknown tool or has arguments that do not fit
the tool's schema, or that runs past ``timeout_s``, becomes an ``error: ...`` result the policy
reads back; nothing raises out of :meth:`ToolRunner.run`. A user tool's call runs in a worker
process (:mod:`rl_pipeline.tools.processes`) that is killed when it overruns; an inline tool
(the built-ins, cheap by construction; the ``python`` tool's sandbox kills its own program at
its own wall limit) runs on the thread itself, and a thread that overruns is abandoned and the
pool replaced, so it never blocks later turns.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rl_pipeline.tools import Tool, check_arguments
from rl_pipeline.tools.processes import ToolProcesses

log = logging.getLogger(__name__)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_DEPTH = 32  # nesting of a call's JSON; real arguments nest a few levels
# How often the runner looks again while some calls still wait for a free thread or a worker.
_QUEUE_POLL_S = 0.01
# A worker-process call answers its own timeout (kill included); the runner waits this much
# longer before it gives up on the thread itself.
_KILL_GRACE_S = 1.0


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
    """Every ``<tool_call>{"name", "arguments"}</tool_call>`` in `text`, in order. Never raises:
    a body that is not a call becomes a ToolCall with `error` set (the policy reads it back)."""
    calls, start = [], text.find(CALL_OPEN)
    # str.find, not a lazy regex: that rescans the rest of the text once per unclosed opener.
    while start != -1:
        end = text.find(CALL_CLOSE, start + len(CALL_OPEN))
        if end == -1:
            break
        calls.append(_parse_call(text[start + len(CALL_OPEN):end]))
        start = text.find(CALL_OPEN, end + len(CALL_CLOSE))
    return calls


def _parse_call(body: str) -> ToolCall:
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        return ToolCall("", None, f"the tool call is not valid JSON ({exc.msg} at {exc.pos})")
    except RecursionError:
        return ToolCall("", None, f"the tool call nests deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # an int past Python's int-from-str digit limit, or NaN/Infinity
        return ToolCall("", None, str(exc) if isinstance(exc, _BadNumber) else
                        f"a number in the tool call has more than {sys.get_int_max_str_digits()} digits")
    except Exception as exc:  # noqa: BLE001 - whatever else the decoder raises is the policy's error too
        return ToolCall("", None, f"the tool call could not be read ({type(exc).__name__})")
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return ToolCall("", None, 'a tool call is {"name": "...", "arguments": {...}}')
    problem = _unsafe_value(payload)
    if problem:
        return ToolCall("", None, problem)
    return ToolCall(payload["name"], payload.get("arguments", {}))


class _BadNumber(ValueError):
    """NaN or Infinity, which JSON does not have (and which no tool needs)."""


def _refuse_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a JSON number")


def _unsafe_value(payload: Any) -> str | None:
    """Why a parsed call must not travel on (None when it may): nesting past MAX_DEPTH (the
    trajectory is pickled to the reward workers: ~500 levels fail), an unpaired surrogate (the
    tokenizer refuses the str when the result is rendered), an out-of-range float. Iterative."""
    stack = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the tool call nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and not _encodable(value):
            return "the tool call holds an unpaired surrogate (a \\ud800-\\udfff escape alone)"
        elif isinstance(value, float) and not math.isfinite(value):
            return "a number in the tool call is out of range"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` as the tokenizer takes it: unpaired surrogates (a tool may return any str) become '?'."""
    return text if _encodable(text) else text.encode("utf-8", "replace").decode("utf-8")


class ToolRunner:
    """Runs tool calls on up to `max_concurrency` threads (a user tool's call in a worker process
    its thread waits on), each limited to `timeout_s` of run time, counted from when it starts
    (its thread free and its worker ready), not from when it was queued."""

    def __init__(self, tools: dict[str, Tool], timeout_s: float, max_concurrency: int = 64) -> None:
        self.tools, self.timeout_s, self.max_concurrency = tools, timeout_s, max_concurrency
        self.schemas = {name: tool.schema for name, tool in tools.items()}
        isolated = {name: (tool.locator, tool.kwargs) for name, tool in tools.items() if not tool.inline}
        self.processes = ToolProcesses(isolated) if isolated else None
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
            running = [started[i] + self._limit(calls[i]) for i in pending.values() if i in started]
            queued = len(running) < len(pending)
            next_deadline = min(running, default=now + self.timeout_s)
            done, _ = wait(pending, timeout=max(0.0, min(next_deadline - now, _QUEUE_POLL_S if queued else 1e9)),
                           return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
            now = time.monotonic()
            for future, i in list(pending.items()):
                if i in started and now - started[i] >= self._limit(calls[i]):
                    pending.pop(future)
                    abandoned = True
                    results[i] = ToolResult(calls[i].name, calls[i].arguments,
                                            f"error: timeout: tool {calls[i].name!r} ran past its {self.timeout_s:g} s "
                                            "limit", "timeout", now - started[i])
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

    def _limit(self, call: ToolCall) -> float:
        """How long the runner waits for a started call before it abandons the thread."""
        return self.timeout_s + (0.0 if self.tools[call.name].inline else _KILL_GRACE_S)

    def _timed(self, index: int, call: ToolCall, started: dict[int, float]) -> ToolResult:
        def start() -> None:
            started[index] = time.monotonic()

        tool = self.tools[call.name]
        try:
            if tool.inline:
                start()
                output, status = tool(call.arguments), "ok"
            else:
                output, status = self.processes.call(call.name, call.arguments, self.timeout_s, start)
        except Exception as exc:  # noqa: BLE001 - a failing tool is an answer the policy reads
            output, status = f"error: {type(exc).__name__}: {exc}", "error"
        begin = started.get(index, time.monotonic())
        return ToolResult(call.name, call.arguments, printable(output), status, time.monotonic() - begin)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            self.processes.close()
