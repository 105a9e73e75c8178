"""Prompts for generation (GRPO, evaluation, distillation): formatting, tokenization, length
checks and a resumable, seeded prompt stream.

A prompt is rendered with the tokenizer's chat template as a user turn (plus the dataset's
system prompt if the recipe sets one), or with `grpo.prompt_template` ("{prompt}" filled in)
as raw text. The distillation system prompt is never added here: RL runs without it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from rl_pipeline.config import DatasetConfig
from rl_pipeline.data.loading import DataError, load_rows, require_column

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    """One problem: the rendered prompt's ids and text, and the row's other columns."""

    row: int
    token_ids: list[int]
    text: str
    columns: dict


def render_prompt(tokenizer, question: str, system_prompt: str | None, template: str | None) -> str:
    if template is not None:
        return template.format(prompt=question)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_prompts(spec: DatasetConfig, tokenizer, key: str, max_prompt_tokens: int,
                 template: str | None = None, need_ground_truth: bool = True) -> list[Prompt]:
    """Rows -> Prompts; rows whose prompt is longer than `max_prompt_tokens` are dropped and
    counted (their row numbers logged). Raises DataError naming the key when nothing is left."""
    rows = load_rows(spec, key)
    require_column(spec, rows.column_names, spec.prompt_column, f"{key}.prompt_column", key)
    if need_ground_truth:
        require_column(spec, rows.column_names, spec.ground_truth_column, f"{key}.ground_truth_column", key)
    prompts, too_long = [], []
    for index, row in enumerate(rows):
        question = row[spec.prompt_column]
        if not isinstance(question, str):
            raise DataError(f"{key}: row {index}: '{spec.prompt_column}' is not a string ({type(question).__name__})")
        text = render_prompt(tokenizer, question, spec.system_prompt, template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            too_long.append(index)
            continue
        columns = {k: v for k, v in row.items() if k != spec.prompt_column}
        if spec.ground_truth_column in columns and spec.ground_truth_column != "ground_truth":
            columns["ground_truth"] = columns[spec.ground_truth_column]
        prompts.append(Prompt(index, ids, question, columns))
    if too_long:
        log.warning("%s: dropped %d prompts longer than %d tokens (rows %s%s)", key, len(too_long),
                    max_prompt_tokens, too_long[:10], "..." if len(too_long) > 10 else "")
    if not prompts:
        raise DataError(f"{key}: every prompt is longer than {max_prompt_tokens} tokens "
                        "(data.max_length - rollout.max_tokens); raise data.max_length")
    return prompts


class PromptStream:
    """Prompts in seeded per-epoch order; `position` (prompts consumed) is all resume needs."""

    def __init__(self, prompts: list[Prompt], seed: int, position: int = 0) -> None:
        self.prompts, self.seed, self.position = prompts, seed, position
        self._epoch, self._order = -1, []

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.prompts))
        if epoch != self._epoch:
            self._order = list(range(len(self.prompts)))
            random.Random(self.seed * 7919 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order[offset]

    def next(self, count: int) -> list[Prompt]:
        batch = [self.prompts[self._index(self.position + i)] for i in range(count)]
        self.position += count
        return batch


def columns_for(prompts: list[Prompt], repeat: int) -> dict[str, list]:
    """Column lists for reward functions, each prompt's values repeated for its `repeat` samples."""
    keys = prompts[0].columns.keys() if prompts else []
    return {k: [p.columns.get(k) for p in prompts for _ in range(repeat)] for k in keys}
