"""Load a dataset with the `datasets` library and check it has the columns its format needs.

Sources: a jsonl/json/parquet/csv file, a folder of such files (e.g. a distillation output),
or a hub name. Formats: `messages` (chat turns), `prompt_completion`, and `prompt` (prompt-only
rows with ground-truth columns, for RL). Errors name the file, the recipe key and the columns
(and the line of a jsonl file that does not parse).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rl_pipeline.config import DatasetConfig, InputError

# Order matters for folders: data files before a stray .json (e.g. a distill stats.json).
_BUILDERS = {".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".json": "json"}
# In a folder, what a run logs beside its data is not data: `rlp distill` writes samples.jsonl (kept
# and rejected answers, for `rlp view`) next to data/, and keeps its state in the hidden .distill/.
RUN_LOGS = ("samples.jsonl", "metrics.jsonl")


class DataError(InputError):
    """A dataset that cannot be used; the message names the file, the key or the row."""


def _builder_and_files(path: str) -> tuple[str, list[str] | None]:
    """Pick the `datasets` builder for a file or folder; (hub name, None) for anything else."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        if p.suffix not in _BUILDERS:
            raise DataError(f"{path}: unsupported file type '{p.suffix}'; use one of {sorted(_BUILDERS)}")
        return _BUILDERS[p.suffix], [str(p)]
    if p.is_dir():
        for suffix, builder in _BUILDERS.items():
            files = sorted(str(f) for f in p.rglob(f"*{suffix}") if f.name not in RUN_LOGS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if files:
                return builder, files
        raise DataError(f"{path}: folder holds no {'/'.join(sorted(_BUILDERS))} files")
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        raise DataError(f"{path}: no such file or folder")
    return path, None


def _files_hold_no_rows(builder: str, files: list[str]) -> bool:
    """True when every file is empty; `datasets` then fails with StopIteration or 'no data'."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            return all(pq.read_metadata(f).num_rows == 0 for f in files)
        if builder == "csv":  # a header line only
            return all(sum(1 for line in open(f) if line.strip()) <= 1 for f in files)
        return all(Path(f).read_text().strip() in ("", "[]") for f in files)
    except Exception:
        return False


def _first_bad_json_line(files: list[str]) -> str | None:
    """'FILE line N: what is wrong' for the first line of a jsonl file that is not one JSON object
    (or the position in a .json file that does not parse); None when every file parses. Read only
    after `datasets` failed: its message gives a byte block or nothing, never the line."""
    for name in files:
        try:
            if not name.endswith(".jsonl"):
                json.loads(Path(name).read_text())
                continue
            with open(name, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip() and not isinstance(json.loads(line), dict):
                        return f"{name} line {number}: not a JSON object (one object per line expected)"
        except json.JSONDecodeError as exc:
            number = exc.lineno if not name.endswith(".jsonl") else number
            return f"{name} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
        except (OSError, UnicodeDecodeError) as exc:
            return f"{name}: cannot be read as UTF-8 text ({exc})"
    return None


def load_rows(spec: DatasetConfig, key: str = "data.train"):
    """Load the dataset a recipe entry names; raise DataError naming `key` when it is unusable."""
    import datasets

    builder, files = _builder_and_files(spec.path)
    try:
        if files is None:
            ds = datasets.load_dataset(builder, split=spec.split)
        else:
            ds = datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as exc:  # the datasets library raises many types; keep the cause visible
        if files is not None and _files_hold_no_rows(builder, files):
            raise DataError(f"{key}: dataset '{spec.path}' has no rows") from None
        bad_line = _first_bad_json_line(files) if builder == "json" and files else None
        if bad_line:
            raise DataError(f"{key}: {bad_line}") from None
        raise DataError(f"{key}: could not load '{spec.path}': {type(exc).__name__}: {exc}") from exc
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    if len(ds) == 0:
        raise DataError(f"{key}: dataset '{spec.path}' has no rows")
    return ds


def detect_format(spec: DatasetConfig, columns: list[str], key: str = "data.train") -> str:
    """Resolve `format: auto` from the columns present, and check the format's columns exist."""
    fmt = spec.format
    if fmt == "auto":
        if spec.messages_column in columns:
            fmt = "messages"
        elif spec.prompt_column in columns and spec.completion_column in columns:
            fmt = "prompt_completion"
        elif spec.prompt_column in columns:
            fmt = "prompt"
        else:
            raise DataError(
                f"{key}: cannot tell the format of '{spec.path}': no '{spec.messages_column}' "
                f"({key}.messages_column) or '{spec.prompt_column}' ({key}.prompt_column) column; "
                f"columns are: {', '.join(columns)}"
            )
    needed = {
        "messages": [("messages_column", spec.messages_column)],
        "prompt_completion": [("prompt_column", spec.prompt_column), ("completion_column", spec.completion_column)],
        "prompt": [("prompt_column", spec.prompt_column)],
    }[fmt]
    for field, column in needed:
        require_column(spec, columns, column, f"{key}.{field}", key)
    return fmt


def require_column(spec: DatasetConfig, columns: list[str], column: str, field: str, key: str) -> None:
    if column not in columns:
        raise DataError(
            f"{key}: column '{column}' ({field}) not found in {spec.path}; columns are: {', '.join(columns)}"
        )
