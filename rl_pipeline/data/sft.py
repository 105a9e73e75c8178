"""SFT tokenization: rows -> token ids with a loss mask on completion/assistant tokens only,
over-length handling (drop and count, or truncate when the recipe asks), and packing.

Chat rows are rendered with the tokenizer's chat template; the mask of each assistant turn is
found by rendering the conversation up to that turn, which requires the template to be
prefix-stable (true for common templates); a row where it is not is reported, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rl_pipeline.config import DatasetConfig
from rl_pipeline.data.loading import DataError


@dataclass
class TokenizedSample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target (completion / assistant)


@dataclass
class TokenizeReport:
    """What happened to the rows: kept, truncated, dropped for length (with the first row ids)."""

    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    example_rows: dict[str, list[int]] = field(default_factory=dict)

    def note(self, reason: str, row: int) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        rows = self.example_rows.setdefault(reason, [])
        if len(rows) < 5:
            rows.append(row)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return _encode(tokenizer, text)


def tokenize_messages(tokenizer, messages: list[dict], row: int) -> TokenizedSample:
    """Chat template over all turns; mask = the tokens each assistant turn adds."""
    ids = _render(tokenizer, messages, generation_prompt=False)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], generation_prompt=True))
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if ids[: len(upto)] != upto or start > len(upto):
            raise DataError(
                f"row {row}: the chat template is not prefix-stable at turn {i}, so the assistant "
                "loss mask cannot be located; use the prompt/completion format instead"
            )
        mask[start : len(upto)] = [1] * (len(upto) - start)
    return TokenizedSample(ids, mask)


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str) -> TokenizedSample:
    """Plain text: prompt tokens (not trained) + completion tokens + EOS (trained)."""
    prompt_ids = _encode(tokenizer, prompt)
    completion_ids = _encode(tokenizer, completion) + [tokenizer.eos_token_id]
    return TokenizedSample(prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids))


def gets_system_prompt(spec: DatasetConfig, index: int) -> bool:
    """Whether row `index` gets `spec.system_prompt`: every row, or a fixed pseudo-random
    `system_prompt_fraction` of them (the same rows on every run, rank and epoch)."""
    if not spec.system_prompt:
        return False
    if spec.system_prompt_fraction >= 1.0:
        return True
    # Knuth's multiplicative hash spreads consecutive indices over [0, 1).
    return ((index * 2654435761) % 2**32) / 2**32 < spec.system_prompt_fraction


def tokenize_row(tokenizer, row: dict, fmt: str, spec: DatasetConfig, index: int) -> TokenizedSample:
    system_prompt = spec.system_prompt if gets_system_prompt(spec, index) else None
    if fmt == "messages":
        messages = row[spec.messages_column]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise DataError(f"{spec.path} row {index}: '{spec.messages_column}' is not a list of {{role, content}}")
        if system_prompt and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        return tokenize_messages(tokenizer, messages, index)
    if fmt == "prompt_completion":
        prompt, completion = row[spec.prompt_column], row[spec.completion_column]
        if isinstance(prompt, list):  # conversational prompt/completion, as TRL accepts
            return tokenize_messages(tokenizer, prompt + completion, index)
        if spec.chat:
            system = [{"role": "system", "content": system_prompt}] if system_prompt else []
            turns = [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(completion)}]
            return tokenize_messages(tokenizer, system + turns, index)
        return tokenize_prompt_completion(tokenizer, str(prompt), str(completion))
    raise DataError(f"{spec.path}: format '{fmt}' has no completion to train on; SFT needs messages or prompt+completion")


def tokenize_dataset(tokenizer, rows, fmt: str, spec: DatasetConfig, max_length: int, truncate: bool):
    """Tokenize every row; over-length rows are dropped and counted unless `truncate`."""
    samples: list[TokenizedSample] = []
    report = TokenizeReport()
    for index, row in enumerate(rows):
        sample = tokenize_row(tokenizer, row, fmt, spec, index)
        if len(sample.input_ids) > max_length:
            if not truncate:
                report.note("dropped_too_long", index)
                continue
            sample = TokenizedSample(sample.input_ids[:max_length], sample.loss_mask[:max_length])
            report.note("truncated", index)
        if sum(sample.loss_mask[1:]) == 0:  # the first token is never a target
            report.note("dropped_no_target", index)
            continue
        samples.append(sample)
        report.kept += 1
    if not samples:
        raise DataError(
            f"{spec.path}: no usable rows out of {len(rows)} (too long: {report.dropped_too_long}, "
            f"nothing to train on: {report.dropped_no_target}); raise data.max_length or set data.truncate=true"
        )
    return samples, report


def generation_target(sample: TokenizedSample) -> tuple[list[int], list[int]] | None:
    """(prompt ids, target ids) for greedy exact-match checks: the last contiguous run of targets
    (completion + EOS, or the last assistant turn) and every token before it. In a multi-turn row
    (a tool call, the tool's result, the answer) that is the final answer given the true
    conversation before it: what the task is judged on, where the first turn is only the call.
    None when the sample has no target after a non-empty prompt."""
    mask = sample.loss_mask
    end = next((i + 1 for i in range(len(mask) - 1, 0, -1) if mask[i]), None)
    if end is None:
        return None
    start = end - 1
    while start > 1 and mask[start - 1]:
        start -= 1
    return sample.input_ids[:start], sample.input_ids[start:end]


@dataclass
class PackedSequence:
    """Several samples in one row; position ids restart at 0 at each sample boundary."""

    input_ids: list[int]
    loss_mask: list[int]
    position_ids: list[int]


def pack_samples(samples: list[TokenizedSample], max_length: int) -> list[PackedSequence]:
    """First-fit-decreasing packing into rows of at most `max_length` tokens; keeps every token.

    Each sample's first token is never a target (nothing precedes it inside its segment), and
    position ids restart per sample so attention implementations that read them (transformers'
    packed-sequence detection) keep samples from attending to each other.
    """
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    bins: list[PackedSequence] = []
    for i in order:
        sample = samples[i]
        n = len(sample.input_ids)
        target = next((b for b in bins if len(b.input_ids) + n <= max_length), None)
        if target is None:
            target = PackedSequence([], [], [])
            bins.append(target)
        target.input_ids.extend(sample.input_ids)
        target.loss_mask.extend([0] + sample.loss_mask[1:])
        target.position_ids.extend(range(n))
    return bins
