"""Final-answer verification for math problems: the ``math`` reward (1.0 right, 0.0 wrong).

Answers are compared with the math-verify library, which parses LaTeX and plain expressions
into sympy and checks equivalence: boxed answers, fractions (``\\frac12`` = ``0.5``),
percentages (``50\\%`` = ``0.5``), thousands separators (``1,000``), sets, intervals,
equations (``x=3`` vs ``3``), symbolic forms. GSM8K-style answers are supported on both
sides: a ground truth like ``"...reasoning... #### 42"`` and a completion ending in
``#### 42`` use the text after the last ``####``.

For R1-style completions only the text after the reasoning block (after ``</think>``) is
graded, so a number mentioned while thinking does not count as the answer. A row whose ground
truth is ``None`` scores ``None`` (not applicable).

Cost under a hostile policy: math-verify's extraction patterns cost quadratic time in the
length of what they scan (a 64 KB run of numbers took 16 s), so at most ``MAX_ANSWER_CHARS``
that can hold the answer are parsed: the whole graded text when it is that short (every honest
answer section we know), else its tail, after the text that follows the last ``\\boxed`` (or
the last "answer") when that lies further back; a GSM8K answer at most ``MAX_GSM8K_CHARS``.
Parsing and comparison run under math-verify's own timeouts (``timeout_s``, whole seconds):
they use ``signal.alarm``, which works on a process's main thread only, as in the reward pool's
workers, where an overrun (a power tower that sympy would evaluate for minutes) scores 0 and
the worker lives on. On any other thread, or under a pending alarm of the caller's, they are
off and the caller's deadline applies (the pool's per-sample timeout, which kills the worker).
Short malformed LaTeX can still cost math-verify up to ``timeout_s`` per parse or comparison,
whatever the completion's length.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from functools import lru_cache
from typing import Any

from rewards import register

logger = logging.getLogger(__name__)

GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")
# Longest text handed to math-verify: its patterns cost up to ~c * n^2 on hostile text, and each
# LaTeX span they find costs a parse attempt (bench/rewards.py --workloads adversarial measures it).
MAX_ANSWER_CHARS = 1000
# Longest GSM8K answer parsed (the text after "####": a number, maybe with a unit).
MAX_GSM8K_CHARS = 64
# Kept before an anchor, so "final answer is" or the "$" that opens a boxed answer stay in view.
ANCHOR_MARGIN = 32
# Greedy to the end, then back to the last "answer": one pass, linear.
LAST_ANSWER_WORD = re.compile(r".*(answer)", re.I | re.S)


@register("math")
def math_reward(
    prompts: list[str],
    completions: list[str],
    ground_truth: list[Any] | None = None,
    *,
    answer_after: str | None = "</think>",
    float_rounding: int = 6,
    timeout_s: int = 1,
    **_: Any,
) -> list[float | None]:
    """1.0 where the completion's final answer equals ``ground_truth``, else 0.0."""
    if ground_truth is None:
        raise ValueError("reward 'math' needs a 'ground_truth' column (the reference answer)")
    if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or timeout_s < 1:
        raise ValueError(f"reward 'math': timeout_s must be a whole number of seconds >= 1, got {timeout_s!r}")
    return [
        None if gold is None else verify_answer(str(gold), completion, answer_after, float_rounding, timeout_s)
        for completion, gold in zip(completions, ground_truth)
    ]


def verify_answer(
    gold: str, completion: str, answer_after: str | None = "</think>", float_rounding: int = 6,
    timeout_s: int = 1,
) -> float:
    """Score one completion against one reference answer (1.0 / 0.0); a timeout scores 0.0."""
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        logger.warning("math reward: cannot parse the ground truth %r; scoring 0", gold)
        return 0.0
    timeout = _alarm_timeout(timeout_s)
    answer = parse_prediction(completion, answer_after, timeout)
    if not answer:
        return 0.0
    ok = verify(list(gold_parsed), answer, float_rounding=float_rounding, timeout_seconds=timeout)
    return 1.0 if ok else 0.0


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple:
    """Parse a reference answer: GSM8K ``####`` tail, LaTeX, or a plain expression (trusted data:
    not windowed, no timeout)."""
    from math_verify import parse

    text = _gsm8k_tail(gold) or gold.strip()
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return tuple(parse(text, parsing_timeout=None))
    return tuple(parse(f"${text}$", parsing_timeout=None) or parse(text, parsing_timeout=None))


def parse_prediction(completion: str, answer_after: str | None = "</think>", timeout: int | None = None) -> list:
    """Parse a completion's final answer (boxed first, then the last expression) from a window of
    at most ``MAX_ANSWER_CHARS`` (module doc), with math-verify's parsing timeout ``timeout``."""
    from math_verify import parse

    text = completion
    if answer_after and answer_after in text:
        text = text.rsplit(answer_after, 1)[1]
    tail = _gsm8k_tail(text)
    if tail is not None:
        tail = tail[:MAX_GSM8K_CHARS]
        return parse(f"${tail}$", parsing_timeout=timeout) or parse(tail, parsing_timeout=timeout)
    return parse(answer_window(text), parsing_timeout=timeout)


def answer_window(text: str) -> str:
    """The part of ``text`` that can hold its answer, at most ``MAX_ANSWER_CHARS`` (+1) long: all of
    a short text; else the tail, preceded, when the last ``\\boxed`` (else the last "answer") is
    further back, by the text from there (math-verify ranks those above the last number)."""
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    half = MAX_ANSWER_CHARS // 2
    anchor = text.rfind("\\boxed")
    if anchor < 0:
        match = LAST_ANSWER_WORD.match(text)
        anchor = match.start(1) if match else -1
    if anchor < 0 or anchor >= len(text) - half:
        return text[-MAX_ANSWER_CHARS:]
    start = max(0, anchor - ANCHOR_MARGIN)
    return text[start:start + half] + "\n" + text[-half:]


def _alarm_timeout(timeout_s: int) -> int | None:
    """math-verify's timeouts are ``signal.alarm``: usable on the main thread only (module doc),
    and not under a pending alarm of the caller's (pytest-timeout's), which they would cancel."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return None if signal.getitimer(signal.ITIMER_REAL)[0] > 0 else timeout_s


def _gsm8k_tail(text: str) -> str | None:
    matches = GSM8K_ANSWER.findall(text)
    return matches[-1].strip() if matches else None


def _quiet_math_verify() -> None:
    """math-verify warns once when its timeouts are off; off a main thread they are off on purpose."""
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True


def _warmup() -> None:
    """Import math-verify and sympy's parsers now, not inside the first sample's timeout."""
    verify_answer("\\frac{1}{2}", "\\boxed{0.5}")


math_reward.warmup = _warmup  # type: ignore[attr-defined]
