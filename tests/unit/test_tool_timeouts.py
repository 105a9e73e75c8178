"""Issue 27, class 7: no tool call can freeze the driver.

The calculator runs on a driver thread, so it must refuse a huge result before computing it
(one big-int power holds the GIL: no timeout can fire while it runs). A user tool runs in a
worker process: one that spins, sleeps or holds the GIL past its limit is killed and answered
`error: timeout`, the calls beside it are answered, and the next call runs. The tests assert
results and that the step goes on, never wall time."""

from __future__ import annotations

import os

import pytest

from rl_pipeline import tools
from rl_pipeline.config import ToolsConfig
from rl_pipeline.tools.builtin import CalculatorError, calculator
from rl_pipeline.tools.calls import ToolCall, ToolRunner
from rl_pipeline.tools.processes import MAX_OUTPUT_CHARS
from rl_pipeline.workers.multiturn import MultiTurnRollout, Trajectory, _Live
from rl_pipeline.workers.rollout import Completion

USER_TOOLS = '''
import os
import time
from pathlib import Path


def spin(seconds: float, *, pidfile: str) -> str:
    """Busy-loop in Python for `seconds`."""
    Path(pidfile).write_text(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


def hold() -> str:
    """One bytecode that holds the GIL for minutes: a 140-million-bit power."""
    return str(((7 ** 5000) ** 10000).bit_length())


def double(x: int) -> str:
    return str(2 * x)


def pid() -> str:
    return str(os.getpid())


def die() -> str:
    os._exit(3)


def huge() -> str:
    return "x" * 10_000_000
'''
LIMIT_S = 0.5


@pytest.fixture(scope="module")
def tool_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("timeout_tools") / "user_tools.py"
    path.write_text(USER_TOOLS)
    return path


@pytest.fixture()
def runner(tool_file, tmp_path):
    names = ["spin", "hold", "double", "pid", "die", "huge"]
    loaded = tools.load([("calculator", {})] + [
        (f"{tool_file}:{name}", {"pidfile": str(tmp_path / "spin.pid")} if name == "spin" else {}) for name in names])
    runner = ToolRunner(loaded, timeout_s=LIMIT_S, max_concurrency=4)
    yield runner
    runner.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("expression, refusal", [
    ("(7**5000)**10000", "would have more than 4300 digits"),  # a minute of one GIL-holding bytecode
    ("(9**4000)*(9**4000)", "would have more than 4300 digits"),
    ("7**5100", "has more than 4300 digits"),  # within the old bit bound, but too long to print
    ("(10**400)**-1", "out of the float range"),
    ("(-8)**0.5", "not a real number"),
    ("2<<40000", "not allowed"),
    ("'ab'*10**9", "not allowed"),
])
def test_calculator_refuses_huge_results_before_computing_them(expression, refusal):
    with pytest.raises(CalculatorError, match=refusal):
        calculator(expression)
    assert calculator("(7**500)**2") == str(7 ** 1000) and calculator("10**4299") == "1" + "0" * 4299


def test_a_spinning_user_tool_is_killed_and_answered_timeout(runner, tmp_path):
    results = runner.run([ToolCall("spin", {"seconds": 20.0}), ToolCall("calculator", {"expression": "6*7"})])
    assert [r.status for r in results] == ["timeout", "ok"]
    assert results[0].output == "error: timeout: tool 'spin' ran past its 0.5 s limit and was stopped"
    pid = int((tmp_path / "spin.pid").read_text())
    assert pid != os.getpid() and gone(pid), "the spinning call must run in a process that is killed"
    assert [r.output for r in runner.run([ToolCall("double", {"x": 21})] * 3)] == ["42"] * 3  # the step goes on


def test_a_user_tool_holding_the_gil_cannot_freeze_the_driver(runner):
    results = runner.run([ToolCall("hold", {}), ToolCall("calculator", {"expression": "2**10"}),
                          ToolCall("double", {"x": 4})])
    assert [(r.status, r.output[:14]) for r in results] == [("timeout", "error: timeout"), ("ok", "1024"), ("ok", "8")]


def test_a_dying_worker_answers_an_error_and_is_replaced(runner):
    results = runner.run([ToolCall("die", {}), ToolCall("huge", {})])
    assert results[0].status == "error" and "exit code 3" in results[0].output
    assert results[1].status == "ok" and results[1].output == "x" * MAX_OUTPUT_CHARS
    assert runner.run([ToolCall("double", {"x": 1})])[0].output == "2"


def test_closing_the_runner_kills_its_workers(runner):
    pids = {int(r.output) for r in runner.run([ToolCall("pid", {})] * 4)}
    assert os.getpid() not in pids and not any(gone(p) for p in pids)
    runner.close()
    assert all(gone(p) for p in pids)


def test_a_tool_a_worker_cannot_import_is_refused_when_the_tools_load():
    @tools.register("rlp_test_nested_tool")
    def nested(x: int) -> str:
        return str(x)

    with pytest.raises(tools.ToolError, match=r"tools.functions\[0\] \('rlp_test_nested_tool'\): .* cannot be imported"):
        tools.load([("rlp_test_nested_tool", {})])


def test_a_timed_out_call_is_a_tool_turn_and_the_trajectory_goes_on(tool_file, tmp_path):
    from rl_pipeline.models.tiny import build_tokenizer

    cfg = ToolsConfig(functions=[{"name": f"{tool_file}:hold"}], timeout_s=LIMIT_S, max_turns=3)
    sampler = MultiTurnRollout(None, build_tokenizer(), cfg)  # no engine: the turn's text is given
    try:
        text = 'Let me see.<tool_call>{"name": "hold", "arguments": {}}</tool_call>'
        state = _Live([0], Trajectory([], [], "", "stop", False))
        sampler._advance([state], [Completion([1] * 8, [0.0] * 8, text, "stop", False)], last_turn=False)
    finally:
        sampler.shutdown()
    assert [c["status"] for c in state.traj.tool_calls] == ["timeout"]
    assert state.traj.messages[-1]["content"].startswith("error: timeout")
    assert not state.done and state.traj.loss_mask[-1] == 0  # the tool turn is appended; sampling goes on
