"""Preference pairs for reward-model training: rows -> (chosen ids, rejected ids, margin), checked.

Two row shapes (column names from the recipe):
- strings: `prompt` + `chosen` + `rejected`; each side is rendered exactly as the `reward_model`
  reward (rewards/model_based.py) renders a (prompt, completion) pair when it scores with the
  same `input_format` (rm.input_format): the tokenizer's chat template over a user turn and an
  assistant turn (chat), or sentence-pair encoding (pair); auto = chat when the tokenizer has a
  template. So a trained model is scored at RL time on the inputs it learned from.
- conversations (TRL's convention): `chosen` and `rejected` are lists of {role, content}; a
  `prompt` list of messages, when the row has one, goes before both.

Bad rows are errors naming the file, the recipe key and the row before any actor starts:
a missing column, a side that is not text or messages, identical sides (nothing to learn, and
a sign the columns are wrong), and sides longer than data.max_length (truncating would cut off
the last token, where the score is read).
"""

from __future__ import annotations

from dataclasses import dataclass

from rl_pipeline.config import DatasetConfig, RMConfig
from rl_pipeline.data.loading import DataError, load_rows, require_column


@dataclass
class PreferencePair:
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0


def encode_scored_text(tokenizer, prompt: str, completion: str, input_format: str = "auto") -> list[int]:
    """Token ids of (prompt, completion) as the `reward_model` reward with the same
    `input_format` feeds them to the model."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if input_format == "chat" or (input_format == "auto" and has_template):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, completion)["input_ids"]


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _encode_side(tokenizer, row: dict, side: str, spec: DatasetConfig, input_format: str, where: str) -> list[int]:
    value = row[side]
    prompt = row.get(spec.prompt_column)
    if _is_messages(value):
        head = prompt if _is_messages(prompt) else []
        text = tokenizer.apply_chat_template([*head, *value], tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if isinstance(value, str):
        if not isinstance(prompt, str):
            raise DataError(f"{where}: '{side}' is text, so column '{spec.prompt_column}' (prompt_column) must be "
                            f"text too; got {type(prompt).__name__}")
        return encode_scored_text(tokenizer, prompt, value, input_format)
    raise DataError(f"{where}: '{side}' must be text or a list of {{role, content}} messages; "
                    f"got {type(value).__name__}")


def load_pairs(tokenizer, spec: DatasetConfig, rm: RMConfig, max_length: int, key: str) -> list[PreferencePair]:
    """Load and tokenize every pair of one dataset; raise DataError naming `key`, file and row."""
    rows = load_rows(spec, key)
    columns = rows.column_names
    require_column(spec, columns, rm.chosen_column, "rm.chosen_column", key)
    require_column(spec, columns, rm.rejected_column, "rm.rejected_column", key)
    if rm.margin_column is not None:
        require_column(spec, columns, rm.margin_column, "rm.margin_column", key)
    if not _is_messages(rows[0][rm.chosen_column]):
        require_column(spec, columns, spec.prompt_column, f"{key}.prompt_column", key)
    pairs, too_long = [], []
    for index, row in enumerate(rows):
        where = f"{key}: {spec.path} row {index}"
        chosen = _encode_side(tokenizer, row, rm.chosen_column, spec, rm.input_format, where)
        rejected = _encode_side(tokenizer, row, rm.rejected_column, spec, rm.input_format, where)
        if chosen == rejected:
            raise DataError(f"{where}: '{rm.chosen_column}' and '{rm.rejected_column}' are identical; "
                            "a pair must differ")
        if max(len(chosen), len(rejected)) > max_length:
            too_long.append((index, max(len(chosen), len(rejected))))
            continue
        margin = 0.0
        if rm.margin_column is not None:
            value = row[rm.margin_column]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DataError(f"{where}: '{rm.margin_column}' (rm.margin_column) must be a number; got {value!r}")
            margin = float(value)
        pairs.append(PreferencePair(chosen, rejected, margin))
    if too_long:
        shown = ", ".join(f"row {i} ({n} tokens)" for i, n in too_long[:5])
        raise DataError(f"{key}: {len(too_long)} of {len(rows)} pairs in {spec.path} are longer than "
                        f"data.max_length={max_length} tokens ({shown}); raise data.max_length or remove them "
                        "(a truncated side would lose the last token, where the reward is read)")
    return pairs
