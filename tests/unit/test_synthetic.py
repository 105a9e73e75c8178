"""The synthetic arithmetic task: exact split sizes, disjoint splits, correct answers, seeded
reproducibility, and files that load like user data."""

from __future__ import annotations

import json
import re

import pytest

from rl_pipeline.config import DatasetConfig
from rl_pipeline.data.loading import detect_format, load_rows
from rl_pipeline.data.synthetic import make_problems, problem_space_size, write_task

PROBLEM = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def evaluate(prompt: str) -> int:
    a, op, b = PROBLEM.match(prompt).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_task_dir_splits_have_exact_sizes_and_are_disjoint(task_dir):
    splits = {name: read_jsonl(task_dir / f"{name}.jsonl") for name in ("train", "eval", "test")}
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 9000, "eval": 200, "test": 200}
    prompts = {name: {row["prompt"] for row in rows} for name, rows in splits.items()}
    assert all(len(prompts[name]) == len(splits[name]) for name in splits)  # no duplicates inside
    assert not prompts["train"] & prompts["eval"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["eval"] & prompts["test"]
    assert [row["id"] for row in splits["eval"][:3]] == ["eval-0", "eval-1", "eval-2"]
    assert not list(task_dir.glob("*.tmp"))


def test_task_dir_answers_are_correct(task_dir):
    for row in read_jsonl(task_dir / "train.jsonl"):
        assert PROBLEM.match(row["prompt"]), row
        assert row["ground_truth"] == row["completion"] == str(evaluate(row["prompt"]))


def test_task_files_load_as_user_data(task_dir):
    spec = DatasetConfig(path=str(task_dir / "test.jsonl"))
    ds = load_rows(spec, key="data.eval")
    assert len(ds) == 200
    assert detect_format(spec, ds.column_names) == "prompt_completion"
    assert detect_format(DatasetConfig(path=spec.path, format="prompt"), ds.column_names) == "prompt"


@pytest.mark.parametrize(("digits", "ops"), [(1, "+"), (2, "+-"), (3, "*"), (2, "+-*")])
def test_answers_and_padding(digits, ops):
    rows = make_problems(min(300, problem_space_size(digits, ops)), digits=digits, ops=ops, seed=3)
    for row in rows:
        a, op, b = PROBLEM.match(row["prompt"]).groups()
        assert len(a) == len(b) == digits  # zero-padded operands
        assert op in ops
        assert row["ground_truth"] == str(evaluate(row["prompt"]))
    assert {PROBLEM.match(r["prompt"]).group(2) for r in rows} == set(ops)


def test_whole_space_is_every_problem_once():
    # 1 digit, one op: 10 * 10 = 100 problems.
    rows = make_problems(problem_space_size(1, "+"), digits=1, ops="+")
    assert len(rows) == 100
    assert {r["prompt"] for r in rows} == {f"{a}+{b}=" for a in range(10) for b in range(10)}


def test_seeded_reproducibility(tmp_path):
    assert make_problems(50, seed=7) == make_problems(50, seed=7)
    assert make_problems(50, seed=7) != make_problems(50, seed=8)
    sizes = {"train": 40, "eval": 5, "test": 5}
    a = write_task(tmp_path / "a", sizes, seed=1)
    b = write_task(tmp_path / "b", sizes, seed=1)
    for name in sizes:
        assert a[name].read_bytes() == b[name].read_bytes()


def test_bad_arguments():
    with pytest.raises(ValueError, match="only 100 distinct ones exist at 1 digits"):
        make_problems(101, digits=1, ops="+")
    with pytest.raises(ValueError, match=r"unknown operations \['/'\]"):
        make_problems(10, ops="+/")
