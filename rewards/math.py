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

Timeouts: math-verify's own timeouts use ``signal.alarm``, which raises off the main thread and
is disabled here; the reward service enforces per-sample timeouts in worker processes instead.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from rewards import register

logger = logging.getLogger(__name__)

GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")


@register("math")
def math_reward(
    prompts: list[str],
    completions: list[str],
    ground_truth: list[Any] | None = None,
    *,
    answer_after: str | None = "</think>",
    float_rounding: int = 6,
    **_: Any,
) -> list[float | None]:
    """1.0 where the completion's final answer equals ``ground_truth``, else 0.0."""
    if ground_truth is None:
        raise ValueError("reward 'math' needs a 'ground_truth' column (the reference answer)")
    return [
        None if gold is None else verify_answer(str(gold), completion, answer_after, float_rounding)
        for completion, gold in zip(completions, ground_truth)
    ]


def verify_answer(
    gold: str, completion: str, answer_after: str | None = "</think>", float_rounding: int = 6
) -> float:
    """Score one completion against one reference answer (1.0 / 0.0)."""
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        logger.warning("math reward: cannot parse the ground truth %r; scoring 0", gold)
        return 0.0
    answer = parse_prediction(completion, answer_after)
    if not answer:
        return 0.0
    ok = verify(list(gold_parsed), answer, float_rounding=float_rounding, timeout_seconds=None)
    return 1.0 if ok else 0.0


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple:
    """Parse a reference answer: GSM8K ``####`` tail, LaTeX, or a plain expression."""
    from math_verify import parse

    text = _gsm8k_tail(gold) or gold.strip()
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return tuple(parse(text, parsing_timeout=None))
    return tuple(parse(f"${text}$", parsing_timeout=None) or parse(text, parsing_timeout=None))


def parse_prediction(completion: str, answer_after: str | None = "</think>") -> list:
    """Parse a completion's final answer (boxed first, then the last expression)."""
    from math_verify import parse

    text = completion
    if answer_after and answer_after in text:
        text = text.rsplit(answer_after, 1)[1]
    tail = _gsm8k_tail(text)
    if tail is not None:
        return parse(f"${tail}$", parsing_timeout=None) or parse(tail, parsing_timeout=None)
    return parse(text, parsing_timeout=None)


def _gsm8k_tail(text: str) -> str | None:
    matches = GSM8K_ANSWER.findall(text)
    return matches[-1].strip() if matches else None


def _quiet_math_verify() -> None:
    """math-verify warns once that its timeouts are off; they are off on purpose (module doc)."""
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True


def _warmup() -> None:
    """Import math-verify and sympy's parsers now, not inside the first sample's timeout."""
    verify_answer("\\frac{1}{2}", "\\boxed{0.5}")


math_reward.warmup = _warmup  # type: ignore[attr-defined]
