"""Dataset loading: every format loads from jsonl, json, parquet and csv files written with the
`datasets` library; `format: auto` picks the format from the columns; missing columns, empty
files and bad paths fail with messages naming the file, the recipe key and the columns."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from rl_pipeline.config import DatasetConfig
from rl_pipeline.data.loading import DataError, detect_format, load_rows

ROWS = {
    "messages": [
        {
            "messages": [
                {"role": "user", "content": f"What is {i}+{i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ]
        }
        for i in range(5)
    ],
    "prompt_completion": [{"prompt": f"{i:02d}+{i:02d}=", "completion": f"x{2 * i}"} for i in range(5)],
    "prompt": [{"prompt": f"{i:02d}+{i:02d}=", "ground_truth": f"x{2 * i}"} for i in range(5)],
}
# Values start with "x": the csv builder infers column types, so "52" would come back as 52.

EXTENSIONS = ["jsonl", "json", "parquet", "csv"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows with `datasets`, the way users produce their files."""
    ds = datasets.Dataset.from_list(rows)
    suffix = path.suffix
    if suffix == ".jsonl":
        ds.to_json(str(path), lines=True)
    elif suffix == ".json":
        ds.to_json(str(path), lines=False)  # one JSON array of records
    elif suffix == ".parquet":
        ds.to_parquet(str(path))
    elif suffix == ".csv":
        ds.to_csv(str(path), index=False)
    else:
        raise ValueError(suffix)
    return path


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize("fmt", list(ROWS))
def test_each_format_loads_from_each_file_type(tmp_path, ext, fmt):
    if fmt == "messages" and ext == "csv":
        pytest.skip("csv cannot hold a list of turns")
    path = write_rows(tmp_path / f"train.{ext}", ROWS[fmt])
    spec = DatasetConfig(path=str(path))
    ds = load_rows(spec)
    assert len(ds) == 5
    assert [dict(row) for row in ds] == ROWS[fmt]
    assert detect_format(spec, ds.column_names) == fmt  # format: auto
    # Naming the format explicitly gives the same answer.
    assert detect_format(DatasetConfig(path=str(path), format=fmt), ds.column_names) == fmt


def test_custom_column_names(tmp_path):
    rows = [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"}]
    path = write_rows(tmp_path / "qa.jsonl", rows)
    spec = DatasetConfig(path=str(path), prompt_column="question", completion_column="answer")
    ds = load_rows(spec)
    assert detect_format(spec, ds.column_names) == "prompt_completion"
    prompt_only = DatasetConfig(path=str(path), prompt_column="question", ground_truth_column="answer")
    assert detect_format(prompt_only, ds.column_names) == "prompt"  # no 'completion' column


def test_auto_prefers_messages_over_prompt(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "completion": "yo"}]
    path = write_rows(tmp_path / "both.jsonl", rows)
    spec = DatasetConfig(path=str(path))
    assert detect_format(spec, load_rows(spec).column_names) == "messages"


def test_missing_column_names_column_key_file_and_columns(tmp_path):
    rows = [{"question": "1+1=", "solution": "2"}]
    path = write_rows(tmp_path / "train.jsonl", rows)
    spec = DatasetConfig(path=str(path), format="prompt_completion", prompt_column="question")
    ds = load_rows(spec)
    with pytest.raises(DataError) as info:
        detect_format(spec, ds.column_names, key="data.train")
    message = str(info.value)
    assert "'completion'" in message
    assert "data.train.completion_column" in message
    assert str(path) in message
    assert "columns are: question, solution" in message


def test_auto_detection_failure_lists_columns(tmp_path):
    path = write_rows(tmp_path / "eval.jsonl", [{"question": "q", "solution": "s"}])
    spec = DatasetConfig(path=str(path))
    with pytest.raises(DataError) as info:
        detect_format(spec, load_rows(spec, key="data.eval").column_names, key="data.eval")
    message = str(info.value)
    assert message.startswith("data.eval:")
    assert "data.eval.messages_column" in message and "data.eval.prompt_column" in message
    assert str(path) in message and "columns are: question, solution" in message


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_empty_dataset_is_reported(tmp_path, ext):
    path = tmp_path / f"empty.{ext}"
    if ext == "parquet":
        features = datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string")})
        datasets.Dataset.from_dict({"prompt": [], "completion": []}, features=features).to_parquet(str(path))
    elif ext == "csv":
        path.write_text("prompt,completion\n")  # a header and nothing else
    else:
        path.write_text("")
    with pytest.raises(DataError, match=rf"data.train: dataset '.*empty.{ext}' has no rows"):
        load_rows(DatasetConfig(path=str(path)), key="data.train")


def test_limit_takes_first_rows(tmp_path):
    path = write_rows(tmp_path / "train.jsonl", ROWS["prompt_completion"])
    ds = load_rows(DatasetConfig(path=str(path), limit=2))
    assert [row["prompt"] for row in ds] == ["00+00=", "01+01="]


def test_folder_of_files_loads_all(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_rows(folder / "a.jsonl", ROWS["prompt"][:2])
    write_rows(folder / "b.jsonl", ROWS["prompt"][2:])
    (folder / ".hidden.jsonl").write_text('{"prompt": "junk"}\n')
    ds = load_rows(DatasetConfig(path=str(folder)))
    assert [dict(row) for row in ds] == ROWS["prompt"]


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_rows(DatasetConfig(path=str(tmp_path / "missing.jsonl")))
    txt = tmp_path / "train.txt"
    txt.write_text("hello\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_rows(DatasetConfig(path=str(txt)))
    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir()
    with pytest.raises(DataError, match="folder holds no"):
        load_rows(DatasetConfig(path=str(empty_folder)))


def test_unparseable_file_names_key_and_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"^data\.train: .*broken\.jsonl line 2: not valid JSON"):
        load_rows(DatasetConfig(path=str(path)))
