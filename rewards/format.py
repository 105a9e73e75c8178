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
    shape = _Shape(f"<{think_tag}>", f"</{think_tag}>", answer_tag, require_start)
    return [1.0 if shape.matches(c.strip()) else 0.0 for c in completions]


class _Shape:
    """The accepted shape, checked with a few ``str.find`` scans: linear time on any input (a
    backtracking pattern for it cost 15 s on 40,000 spaces). Same language as the regex
    ``OPEN TEXT CLOSE TEXT`` or ``OPEN TEXT CLOSE \\s* A_OPEN TEXT A_CLOSE`` (``OPEN`` optional
    without ``require_start``), where TEXT has a non-space character and no tag starts in it
    after its leading spaces (the answer's TEXT: no tag of either pair)."""

    def __init__(self, open_t: str, close_t: str, answer_tag: str | None, require_start: bool) -> None:
        self.open_t, self.close_t, self.require_start = open_t, close_t, require_start
        self.answer = (f"<{answer_tag}>", f"</{answer_tag}>") if answer_tag is not None else None

    def matches(self, s: str) -> bool:
        if s.startswith(self.open_t):
            body = len(self.open_t)
        elif self.require_start:
            return False
        else:
            body = 0
        close = s.find(self.close_t, body)  # the block ends at the first closing tag
        if close < 0 or not _is_text(s, body, close, (self.open_t, self.close_t)):
            return False
        rest = close + len(self.close_t)
        if self.answer is None:
            return _is_text(s, rest, len(s), (self.open_t, self.close_t))
        a_open, a_close = self.answer
        inner = len(s) - len(s[rest:].lstrip()) + len(a_open)
        end = len(s) - len(a_close)
        return (s.startswith(a_open, inner - len(a_open)) and s.endswith(a_close) and inner <= end
                and _is_text(s, inner, end, (a_open, a_close, self.open_t, self.close_t)))


def _is_text(s: str, start: int, end: int, tags: tuple[str, ...]) -> bool:
    """``s[start:end]`` has a non-space character and no tag starts in it (a tag may run past
    ``end``, as the pattern's lookahead saw it; tags start with "<", never in leading spaces)."""
    if not s[start:end].strip():
        return False
    return all(not 0 <= s.find(tag, start) < end for tag in tags)


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
