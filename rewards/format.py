"""Structure and length rewards: ``format`` (R1 reasoning/answer tags) and ``length_penalty``.

``format`` scores 1.0 when a completion is exactly one reasoning block followed by a non-empty
answer: ``<think>...</think>`` then the answer, or, with ``answer_tag="answer"``,
``<think>...</think>`` then ``<answer>...</answer>`` and nothing after it. Tag names are
configurable; ``require_start=False`` accepts completions whose prompt already opened the
reasoning tag (chat templates that end with ``<think>``). Anything else scores 0.0.

``length_penalty`` penalises over-long completions. With ``mode="soft"`` (DAPO's overlong
reward shaping) a completion of length L gets 0 up to ``max_length - cache_length``, then
falls linearly to -1 at ``max_length``, and -1 beyond; with ``mode="hard"`` it is 0 up to
``max_length`` and -1 beyond. A truncated completion (column ``truncated`` true, i.e. the
sampler hit its token limit, or column ``finish_reason`` is "length") scores ``truncated_score``
(default -1). Length is the column ``completion_length`` when present, else characters. The
GRPO driver passes ``completion_length`` (tokens), ``finish_reason`` and ``truncated`` of every
completion from the rollout, so under GRPO ``max_length`` is a token budget.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from rewards import register


@register("format")
def format_reward(
    prompts: list[str],
    completions: list[str],
    *,
    think_tag: str = "think",
    answer_tag: str | None = None,
    require_start: bool = True,
    **_: Any,
) -> list[float]:
    """1.0 for ``<think>reasoning</think>answer`` (or with ``<answer>`` tags), else 0.0."""
    pattern = _pattern(think_tag, answer_tag, require_start)
    return [1.0 if pattern.fullmatch(c.strip()) else 0.0 for c in completions]


@lru_cache(maxsize=64)
def _pattern(think_tag: str, answer_tag: str | None, require_start: bool) -> re.Pattern[str]:
    open_t, close_t = re.escape(f"<{think_tag}>"), re.escape(f"</{think_tag}>")
    start = open_t if require_start else f"(?:{open_t})?"
    think = rf"{start}{_text(open_t, close_t)}{close_t}"
    if answer_tag is None:
        return re.compile(rf"{think}\s*{_text(open_t, close_t)}", re.S)
    a_open, a_close = re.escape(f"<{answer_tag}>"), re.escape(f"</{answer_tag}>")
    return re.compile(rf"{think}\s*{a_open}{_text(a_open, a_close, open_t, close_t)}{a_close}", re.S)


def _text(*tags: str) -> str:
    """Regex: text with at least one non-space character and none of ``tags``. Unambiguous
    (spaces, the first non-space, the rest), so a long non-matching completion costs linear time."""
    guard = "(?!" + "|".join(tags) + ")"
    return rf"\s*{guard}\S(?:{guard}.)*"


@register("length_penalty")
def length_penalty(
    prompts: list[str],
    completions: list[str],
    *,
    max_length: int,
    cache_length: int = 0,
    mode: str = "soft",
    truncated_score: float | None = -1.0,
    completion_length: list[int] | None = None,
    truncated: list[bool] | None = None,
    finish_reason: list[str] | None = None,
    **_: Any,
) -> list[float]:
    """0 for short enough completions, down to -1 for over-long ones (see the module doc)."""
    if mode not in ("soft", "hard"):
        raise ValueError(f"length_penalty: mode must be 'soft' or 'hard', got {mode!r}")
    if not 0 <= cache_length < max_length:
        raise ValueError(f"length_penalty: need 0 <= cache_length < max_length, got {cache_length}, {max_length}")
    lengths = completion_length if completion_length is not None else [len(c) for c in completions]
    if truncated is not None:
        flags = truncated
    elif finish_reason is not None:
        flags = [reason == "length" for reason in finish_reason]
    else:
        flags = [False] * len(completions)
    scores = []
    for length, was_truncated in zip(lengths, flags):
        if was_truncated and truncated_score is not None:
            scores.append(float(truncated_score))
        else:
            scores.append(_overlong(int(length), max_length, cache_length if mode == "soft" else 0))
    return scores


def _overlong(length: int, max_length: int, cache_length: int) -> float:
    limit = max_length - cache_length
    if length <= limit:
        return 0.0
    if length > max_length:
        return -1.0
    return (limit - length) / cache_length
