"""Curation of distillation samples (R1-style rejection sampling), pure and without Ray: each
sample's verdict and the kept ones per problem and kind (`keep_samples`), the preference pair of a
problem (`pick_pair`), and the reasoning stripped from a response (`strip_think`). The driver,
pipelines/distill.py, scores the samples and writes what these keep."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from rl_pipeline.config import DistillConfig

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.DOTALL)
REJECT_REASONS = ("truncated", "too_short", "too_long", "below_threshold", "duplicate", "not_selected")


def strip_think(text: str) -> str:
    """The response without its reasoning: every `<think>...</think>` block goes; so does the text
    before a `</think>` whose `<think>` was in the prompt (R1-style templates), and an unclosed
    `<think>` with everything after it. Surrounding whitespace goes when anything was removed."""
    if THINK_OPEN not in text and THINK_CLOSE not in text:
        return text
    text = _THINK_BLOCK.sub("", text)
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        text = text.split(THINK_OPEN, 1)[0]
    return text.strip()


@dataclass
class Sample:
    """One generated response of one problem and kind, as curation sees it."""

    index: int  # among the n samples of its problem and kind
    content: str  # the assistant turn as it would be written
    tokens: int  # of `content`
    truncated: bool
    reward: float
    verdict: str = ""  # set by curation: "kept" (pairs: "chosen" / "rejected"), else the reason it was dropped


def keep_samples(samples: list[Sample], cfg: DistillConfig) -> tuple[list[Sample], Counter]:
    """Rejection sampling for one problem and kind: drop truncated, too short/long, below the
    reward floor and duplicate responses (the better-scored copy stays), then keep by policy:
    all (threshold), the best one (best_of_n) or the best `max_per_problem` (top_k). Ties go to
    the lower sample index. Returns the kept samples in sample order and the rejections by reason."""
    reasons: Counter = Counter()
    survivors: list[Sample] = []
    seen: set[str] = set()
    for s in sorted(samples, key=lambda s: (-s.reward, s.index)):
        if cfg.drop_truncated and s.truncated:
            s.verdict = "truncated"
        elif s.tokens < cfg.min_response_tokens:
            s.verdict = "too_short"
        elif cfg.max_response_tokens is not None and s.tokens > cfg.max_response_tokens:
            s.verdict = "too_long"
        elif cfg.threshold is not None and not s.reward >= cfg.threshold:  # NaN fails too
            s.verdict = "below_threshold"
        elif cfg.dedupe and s.content.strip() in seen:
            s.verdict = "duplicate"
        else:
            s.verdict = "kept"
            seen.add(s.content.strip())
            survivors.append(s)
            continue
        reasons[s.verdict] += 1
    limit = {"threshold": None, "best_of_n": 1, "top_k": cfg.max_per_problem}[cfg.keep]
    if limit is not None and len(survivors) > limit:
        reasons["not_selected"] += len(survivors) - limit
        for s in survivors[limit:]:
            s.verdict = "not_selected"
        survivors = survivors[:limit]
    return sorted(survivors, key=lambda s: s.index), reasons


def pick_pair(samples: list[Sample], cfg: DistillConfig) -> tuple[list[Sample], Counter]:
    """Preference pair for one problem (distill.pairs): [best, worst] by total reward when they
    differ by at least pairs.min_reward_gap and in text, else []. Truncated samples are left out
    when distill.drop_truncated; ties go to the lower sample index (best) and the higher (worst).
    Rejections count the samples of a problem without a pair as below_threshold, the others of a
    problem with one as not_selected."""
    truncated = [s for s in samples if cfg.drop_truncated and s.truncated]
    reasons: Counter = Counter({"truncated": len(truncated)} if truncated else {})
    usable = [s for s in samples if s not in truncated and math.isfinite(s.reward)]
    for s in samples:
        s.verdict = "truncated" if s in truncated else "below_threshold"
    if usable:
        best = min(usable, key=lambda s: (-s.reward, s.index))
        worst = min(usable, key=lambda s: (s.reward, -s.index))
        if best.reward - worst.reward >= cfg.pairs.min_reward_gap and best.content.strip() != worst.content.strip():
            reasons["not_selected"] += len(usable) - 2
            for s in usable:
                s.verdict = "not_selected"
            best.verdict, worst.verdict = "chosen", "rejected"
            return [best, worst], reasons
    reasons["below_threshold"] += len(usable)
    return [], reasons
