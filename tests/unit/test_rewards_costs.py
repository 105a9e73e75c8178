"""Issue 27, class 8: a completion cannot make a built-in reward cost super-linear work.

Each attack is written as a policy would send it (64 KB or 40,000 spaces); before the fix the
format pattern and the judge's score patterns backtracked quadratically, the math reward handed
all 64 KB to math-verify's quadratic extraction, and a power tower ran until the pool killed its
worker. Bounded work is asserted without timing anything: the attacks run under a CPU-time cap
(``cpu_cap``, 1000x what they now cost; the pre-fix cost was 10-40 s), the math reward's
calls of math-verify are recorded to show it parses a bounded slice, and the tower is judged
through a real reward pool whose worker must not be restarted.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading

import math_verify
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rewards
from rewards.model_based import parse_judge_score
from rewards.pool import FunctionSpec, SamplePool, Task

KB64 = 64 * 1024
CAP_CPU_S = 3.0  # seconds of this process's CPU an attack may use (it now takes milliseconds)


class OverCap(BaseException):
    """Raised (from the CPU timer) when an attack used more CPU than ``CAP_CPU_S``; a
    BaseException, so math-verify's ``except Exception`` cannot turn it into a score."""


@contextlib.contextmanager
def cpu_cap(seconds: float = CAP_CPU_S):
    """Interrupt the body once it has used ``seconds`` of CPU (ITIMER_VIRTUAL counts CPU, not wall
    time, so a loaded machine does not trip it); the regex engine checks signals while it works."""

    def over(*_):
        raise OverCap(f"used more than {seconds:g} s of CPU")

    previous = signal.signal(signal.SIGVTALRM, over)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


# ----------------------------------------------------------------------------------- format


def test_format_spaces_between_tags_cost_linear_work():
    fmt, fmt_answer = rewards.get("format"), rewards.get("format", answer_tag="answer")
    spaces = " " * 40_000
    with cpu_cap():
        assert fmt(["q"] * 3, [f"<think>a</think>{spaces}<think>", f"<think>a</think>{spaces}4",
                               "<think>" + " " * KB64 + "</think>x"]) == [0.0, 1.0, 0.0]
        answers = [f"<think>a</think>{spaces}<answer>", f"<think>a</think>{spaces}<answer>4</answer>"]
        assert fmt_answer(["q"] * 2, answers) == [0.0, 1.0]
        for unit in ("</think> ", "<", "a</", "<think>"):
            fmt(["q"], ["<think>a</think>" + unit * (KB64 // len(unit))])


def _reference_pattern(think_tag: str, answer_tag: str | None, require_start: bool) -> re.Pattern[str]:
    """The format reward's pattern before issue 27 (the accepted language; quadratic on spaces)."""

    def text(*tags: str) -> str:
        guard = "(?!" + "|".join(tags) + ")"
        return rf"\s*{guard}\S(?:{guard}.)*"

    open_t, close_t = re.escape(f"<{think_tag}>"), re.escape(f"</{think_tag}>")
    start = open_t if require_start else f"(?:{open_t})?"
    think = rf"{start}{text(open_t, close_t)}{close_t}"
    if answer_tag is None:
        return re.compile(rf"{think}\s*{text(open_t, close_t)}", re.S)
    a_open, a_close = re.escape(f"<{answer_tag}>"), re.escape(f"</{answer_tag}>")
    return re.compile(rf"{think}\s*{a_open}{text(a_open, a_close, open_t, close_t)}{a_close}", re.S)


PIECES = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<", "</", ">", "think", "a", "4",
                          " ", "\n", "\u2003", "<thi", "nk>"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(PIECES, max_size=12), answer=st.booleans(), require_start=st.booleans())
def test_format_accepts_exactly_what_the_old_pattern_accepted(pieces, answer, require_start):
    completion = "".join(pieces)
    kwargs = {"answer_tag": "answer" if answer else None, "require_start": require_start}
    expected = 1.0 if _reference_pattern("think", **kwargs).fullmatch(completion.strip()) else 0.0
    assert rewards.get("format", **kwargs)(["q"], [completion]) == [expected]


# ------------------------------------------------------------------------------------- math


@pytest.fixture
def parsed_lengths(monkeypatch):
    """Records the length of every text the math reward hands to math-verify's ``parse`` (the
    real parse runs; the reward imports it from the module at call time)."""
    lengths: list[int] = []
    real_parse = math_verify.parse

    def recording_parse(pred, *args, **kwargs):
        lengths.append(len(pred))
        return real_parse(pred, *args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", recording_parse)
    return lengths


def test_math_parses_a_bounded_slice_of_a_64kb_run_of_numbers(parsed_lengths):
    math = rewards.get("math")
    math.target.warmup()
    parsed_lengths.clear()
    completions = ["1 " * (KB64 // 2), "#### " + "1 " * (KB64 // 2), "\\boxed{" + "1 " * (KB64 // 2),
                   "2 " * (KB64 // 2) + "\\boxed{42}", "\\boxed{42} " + "7 " * (KB64 // 2)]
    with cpu_cap():
        scores = math(["q"] * 5, completions, ground_truth=["1", "7", "42", "42", "42"])
    assert scores == [1.0, 0.0, 0.0, 1.0, 1.0]  # the last number; a boxed answer wins wherever it is
    assert parsed_lengths and max(parsed_lengths) <= 2048, max(parsed_lengths)


LONG_HONEST = [  # (ground truth, completion longer than the window, expected)
    ("42", "Let me think. " + "We add 3 and 4 to get 7. " * 200 + "So the answer is $\\boxed{42}$.", 1.0),
    ("42", "Let me think. " + "We add 3 and 4 to get 7. " * 200 + "So the answer is $\\boxed{41}$.", 0.0),
    ("42", "The answer is $\\boxed{42}$. Check: " + "6 times 7 is 42, and 40 + 2 = 42. " * 100, 1.0),
    ("42", "Final answer: 42. Check: " + "we multiply 3 by 5 to get 15; " * 100 + "done.", 1.0),
    ("7", "Step " + "1, then 2, then 3; " * 200 + "so we get 7", 1.0),
    ("72", "Natalia sold 48/2 = 24 clips. " * 100 + "48 + 24 = 72\n#### 72", 1.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), LONG_HONEST)
def test_math_long_honest_completions_score_as_before(gold, completion, expected):
    assert len(completion) > 2000
    assert rewards.get("math")(["q"], [completion], ground_truth=[gold]) == [expected]


def test_math_from_a_thread_works_without_alarms():
    # signal.alarm raises off the main thread; there the reward runs without math-verify's timeouts.
    results: list = []
    worker = threading.Thread(target=lambda: results.append(
        rewards.get("math")(["q"] * 2, ["\\boxed{\\frac{1}{2}}", "\\boxed{3}"], ground_truth=["0.5", "2"])))
    worker.start()
    worker.join()
    assert results == [[1.0, 0.0]]


def test_math_keeps_a_pending_alarm_of_the_caller():
    # math-verify's timeouts end with alarm(0): under a caller's alarm (pytest-timeout's) they stay off.
    previous = signal.setitimer(signal.ITIMER_REAL, 600)
    try:
        assert rewards.get("math")(["q"], ["\\boxed{2}"], ground_truth=["2"]) == [1.0]
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous)


def test_math_rejects_a_fractional_timeout():
    with pytest.raises(ValueError, match="reward 'math': timeout_s must be a whole number"):
        rewards.get("math", timeout_s=0.5)(["q"], ["1"], ground_truth=["1"])


def test_power_tower_scores_zero_in_its_worker_without_a_restart():
    # Before: sympy evaluates 9^(9^9) for minutes, the pool kills the worker at the deadline.
    tasks = [Task(0, "q", "\\boxed{9^{9^{9}}}", {"ground_truth": "42"}),
             Task(0, "q", "\\boxed{42}", {"ground_truth": "42"})]
    with SamplePool([FunctionSpec("math", {"timeout_s": 1})], num_workers=1) as pool:
        outcomes = pool.run(tasks, timeout_s=20.0)
        assert [(o.status, o.score) for o in outcomes] == [("ok", 0.0), ("ok", 1.0)]
        assert pool.restarts == 0


# ------------------------------------------------------------------------------------ judge


def test_judge_score_parsing_costs_linear_work():
    with cpu_cap():
        assert parse_judge_score("1" * KB64) == float("1" * KB64)
        assert parse_judge_score("score" + " " * KB64 + "x") is None
        assert parse_judge_score("Score: 7 " + "1 " * (KB64 // 2)) == 7.0


REFERENCE_SCORE_PATTERNS = (  # the judge's patterns before issue 27
    re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.I),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*\d+(?:\.\d+)?"),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["1", "23", ".", "-", "/", " ", "score", ":", "=", "x", "10"]), max_size=14))
def test_judge_score_patterns_find_what_they_found_before(pieces):
    from rewards.model_based import SCORE_PATTERNS

    reply = "".join(pieces)
    for new, old in zip(SCORE_PATTERNS, REFERENCE_SCORE_PATTERNS):
        assert new.findall(reply) == old.findall(reply)
