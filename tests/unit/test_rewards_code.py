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


def test_assert_splits_into_program_probes_and_a_verdict_without_them():
    from rewards.code_split import Probe, split_suite

    suite = split_suite("import math\nK = 2\ns = Solution(K)", (
        "assert add(1, 2) == 3",
        "assert abs(root(2.0) - 1.414) < 1e-3",  # the constants stay outside: only root(2.0) is probed
        "assert Solution().two_sum([2, 7], 9)[0] == 0",  # the list comes back; [0] is the verdict's
        "assert len(items(K)) == math.floor(2.5)",  # K reaches the program as a value, _a1
        "assert greet('x').startswith('He')",  # a returned str's method: the verdict's
        "assert s.run(3) == K",
        "assert pow(2, 3) == 8",  # the program's pow if it defines one, else the builtin
    ))
    assert [(t.probes, t.verdict) for t in suite.tests] == [
        ((Probe("add(1, 2)"),), "_v0 == 3"),
        ((Probe("root(2.0)"),), "abs(_v0 - 1.414) < 0.001"),
        ((Probe("Solution().two_sum([2, 7], 9)"),), "_v0[0] == 0"),
        ((Probe("items(_a1)"),), "len(_v0) == math.floor(2.5)"),
        ((Probe("greet('x')"),), "_v0.startswith('He')"),
        ((Probe("s.run(3)"),), "_v0 == K"),
        ((Probe("pow(2, 3)", builtin="pow", fallback="pow(2, 3)"),), "_v0 == 8"),
    ]
    assert suite.trusted_setup == "import math\nK = 2" and suite.math_is_module  # never in the program's process
    assert suite.program_setup == "import math\ns = Solution(_a0)"
    assert suite.inputs == ("K", "K")


def test_usual_assert_forms_pass_for_a_right_program_and_fail_for_a_wrong_one(code):
    tests = ["import math", "assert add(2, 3) == 5", "assert not is_even(3)", "assert is_even(4)",
             "assert sorted(evens(5)) == [0, 2, 4]", "assert list(gen(3)) == [0, 1, 2]",
             "assert Box(3).double().value == 6", "assert math.isclose(half(1), 0.5)",
             "assert pairs() == {'a': (1, 2)}", "assert add('a', 'b').upper() == 'AB'"]
    right = ("def add(a, b):\n    return a + b\ndef is_even(n):\n    return n % 2 == 0\n"
             "def evens(n):\n    return {i for i in range(n) if i % 2 == 0}\ndef gen(n):\n    yield from range(n)\n"
             "class Box:\n    def __init__(self, v):\n        self.value = v\n    def double(self):\n"
             "        return Box(2 * self.value)\ndef half(x):\n    return x / 2\ndef pairs():\n    return {'a': (1, 2)}")
    wrong = right.replace("a + b", "b + a if isinstance(a, str) else a - b").replace("x / 2", "x / 3")
    # 9 asserts (the import is setup); wrong: add(2, 3) == -1, half(1) == 1/3 and
    # add('a', 'b') == 'ba' fail: 6 of 9 pass
    assert code(["q", "q"], [right, wrong], tests=[tests, tests]) == [1.0, pytest.approx(6 / 9)]


def test_a_comprehension_over_program_calls_is_rejected_naming_the_test(code):
    with pytest.raises(ValueError, match=r"f\(i\) == i \* i for i in range\(3\).*one assert per case"):
        code(["q"], ["def f(x):\n    return x * x"], tests=[["assert all(f(i) == i * i for i in range(3))"]])


def test_values_cross_as_exact_plain_types_only():
    from rewards._code_values import decode, encode

    plain = [None, True, -3, 10**40, 0.1, 1 + 2j, "s", b"\x00\xff", [1, (2, 3)], {4, 5}, frozenset({6}),
             {"k": [1.5]}, range(0, 10, 2)]
    assert [decode(encode(v)) for v in plain] == plain
    assert [type(decode(encode(v))) for v in plain] == [type(v) for v in plain]
    for rigged in (type("I", (int,), {})(1), type("S", (str,), {})("x"), type("L", (list,), {})(), object()):
        with pytest.raises(TypeError):
            encode(rigged)
    for junk in ([], ["int", 3], ["float", "nan?"], ["list", "abc"], ["dict", [[["int", "1"]]]], ["eval", "1"],
                 ["range", 0, 10**12, 1], ["set", [["list", []]]]):
        with pytest.raises(ValueError):
            decode(junk)


def test_the_score_stays_in_the_unit_interval_whatever_the_channel_carries():
    """Whatever a program writes on the result channel (here: random junk, repeated and
    out-of-range indices, right values claimed many times), at most len(tests) verdicts are
    true, so the score is in [0, 1]."""
    import random

    from rewards.code_asserts import judge, read_claims, split_suite
    from rewards.sandbox import SandboxLimits

    suite = split_suite("", ("assert add(1, 2) == 3", "assert add(2, 2) == 4"))
    rng = random.Random(0)
    pieces = ["0\t[\"int\", \"0x3\"]", "1\t[\"int\", \"0x4\"]", "2\t[\"int\", \"0x5\"]", "99\t[\"int\", \"0x3\"]",
              "-1\t[]", "0\t[\"raised\", \"X\"]", "1\tnot json", "\t", "0\t[\"bool\", true]", "x" * 50]
    for _ in range(300):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        verdicts = judge(suite, read_claims(text, 2), SandboxLimits(), True)
        assert len(verdicts) == 2 and 0 <= sum(verdicts) / 2 <= 1
    assert judge(suite, read_claims("0\t[\"int\", \"0x3\"]\n1\t[\"int\", \"0x4\"]", 2), SandboxLimits(), True) == [True, True]


def test_a_test_that_does_not_parse_counts_as_failed(code):
    program = "def add(a, b):\n    return a + b"
    assert code(["q"], [program], tests=[["assert add(1, 2) == 3", "assert add(1,"]]) == [0.5]


def test_memory_is_shared_by_the_allowed_processes():
    """memory_mb bounds the tree: 256 MiB over 8 processes leaves 32 MiB each, too little for a
    100 MiB list; with processes=1 the one program may use all 256 MiB."""
    program = "x = bytearray(100 << 20)\nprint('ok')"
    tests = [[{"input": "", "output": "ok"}]]
    split = rewards.get("code", memory_mb=256)
    whole = rewards.get("code", memory_mb=256, processes=1)
    assert split(["q"], [program], tests=tests) == [0.0]
    assert whole(["q"], [program], tests=tests) == [1.0]
