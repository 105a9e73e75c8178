"""The `code` reward: program extraction, test formats, fraction of tests passed."""

from __future__ import annotations

import json

import pytest

import rewards
from rewards.code import AssertSuite, IOCase, extract_program, parse_tests

ADD_IO = [{"input": "1 2\n", "output": "3"}, {"input": "2 2\n", "output": "4"}]


@pytest.fixture(scope="module")
def code():
    return rewards.get("code", timeout_s=5.0)


def test_stdin_stdout_fraction(code):
    right = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    constant = "```python\nprint(3)\n```"  # right on the first pair only
    crash = "```python\nraise SystemExit(1)\n```"
    assert code(["q"] * 3, [right, constant, crash], tests=[ADD_IO] * 3) == [1.0, 0.5, 0.0]


def test_output_compared_by_whitespace_tokens(code):
    program = "print(' 1   2 ')\nprint()\n"
    assert code(["q"], [program], tests=[[{"input": "", "output": "1 2\n"}]]) == [1.0]


def test_assert_tests_fraction_and_setup(code):
    program = "```python\ndef add(a, b):\n    return a + b if a < 5 else 0\n```"
    tests = ["import math", "assert add(1, 2) == 3", "assert add(2, 2) == math.floor(4.5)", "assert add(7, 1) == 8"]
    # 2 of the 3 asserts pass (add(7, 1) returns 0); the import is setup, not a test
    assert code(["q"], [program], tests=[tests]) == [pytest.approx(2 / 3)]


def test_early_exit_does_not_pass_asserts(code):
    """`sys.exit(0)` at the top would pass a harness that only checks the exit code."""
    program = "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b"
    assert code(["q"], [program], tests=["assert add(1, 2) == 3"]) == [0.0]


def test_main_block_does_not_run_during_asserts(code):
    program = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    input()"
    assert code(["q"], [program], tests=[["assert add(1, 2) == 3"]]) == [1.0]


def test_a_hanging_assert_fails_alone(code):
    program = "def f(x):\n    while x:\n        pass\n    return 1"
    fn = rewards.get("code", timeout_s=5.0, per_test_s=0.5)
    assert fn(["q"], [program], tests=[["assert f(0) == 1", "assert f(1) == 1"]]) == [0.5]


def test_json_tests_and_rows_without_tests(code):
    tests = [json.dumps({"inputs": ["5\n"], "outputs": ["25\n"]}), None]
    program = "n = int(input())\nprint(n * n)"
    assert code(["q", "q"], [program, program], tests=tests) == [1.0, None]


def test_missing_column_names_it(code):
    with pytest.raises(ValueError, match="needs a 'tests' column"):
        code(["q"], ["print(1)"], ground_truth=["1"])


def test_extract_program_prefers_the_last_python_block():
    text = "<think>```python\nprint(0)\n```</think>\n```text\nnot code\n```\n```python\nprint(1)\n```\n"
    assert extract_program(text) == "print(1)\n"
    assert extract_program("<think>plan</think>print(2)") == "print(2)"
    assert extract_program("```\nprint(3)\n```") == "print(3)\n"


def test_parse_tests_forms():
    assert parse_tests({"input": "1", "output": "2"}) == [IOCase("1", "2")]
    assert parse_tests({"inputs": ["1", "2"], "outputs": ["3", "4"]}) == [IOCase("1", "3"), IOCase("2", "4")]
    suite = parse_tests("from math import sqrt\nassert sqrt(4) == 2\nassert 1")
    assert suite == AssertSuite(setup="from math import sqrt", tests=("assert sqrt(4) == 2", "assert 1"))
    assert parse_tests([]) is None
    with pytest.raises(ValueError, match="cannot read tests"):
        parse_tests(42)
