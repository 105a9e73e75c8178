"""Round two of attacks on the `code` reward (issue 27, classes 1 and 5): each wrong program
must score 0, each honest one 1, and nothing a program writes may raise in the caller.

Class 1, assert tests whose shape escaped the split: a tested function named like a builtin,
the tests' setup (an expected value ``E0``, a reference helper) visible to the program, a
library call or a method call on a returned value evaluated inside the program's process.
Class 5, the trusted side's decoders: a result index that is a non-ASCII digit, a set of
hash-colliding ints, an honest int over 4,300 digits. Written attack-first: the tests marked
"1.0 before" scored 1.0 on the commit before the fix; "raised before" raised in the caller;
"0.0 before" is the honest program that scored 0. Real sandboxed processes.
"""

from __future__ import annotations

import ast
import json

import pytest

import rewards
from rewards._code_values import decode, encode
from rewards.code_asserts import UnsplittableTest, read_claims


def score(program: str, tests: list[str]) -> float:
    fn = rewards.get("code", timeout_s=10.0, cpu_s=4)
    return fn(["q"], [f"```python\n{program}\n```"], tests=[tests])[0]


BUILTIN_NAMED = [  # the task asks for a function that shares a builtin's name
    "assert pow(2, 3) == 8", "assert max([1, 5, 2]) == 5", "assert sum([1, 2, 3]) == 6",
    "assert sorted([3, 1, 2]) == [1, 2, 3]",
]
BUILTIN_NAMED_RIGHT = ("import builtins\ndef pow(a, b):\n    return a ** b\ndef max(xs):\n    return builtins.max(xs)\n"
                       "def sum(xs):\n    return builtins.sum(xs)\ndef sorted(xs):\n    return builtins.sorted(xs)")


@pytest.mark.parametrize("program", ["pass", "def pow(a, b):\n    return 0\ndef max(xs):\n    return 0\n"
                                     "def sum(xs):\n    return 0\ndef sorted(xs):\n    return xs"])
def test_a_function_named_like_a_builtin_is_the_programs(program):  # 1.0 before, both
    assert score(program, BUILTIN_NAMED) == 0.0


def test_a_right_function_named_like_a_builtin_passes():
    assert score(BUILTIN_NAMED_RIGHT, BUILTIN_NAMED) == 1.0


SETUP_LEAKS = {  # (program, tests): the program answers from the tests' own setup
    "bound expected value": ("def answer():\n    return E0", ["E0 = 42", "assert answer() == E0"]),
    "reference helper": ("def square(n):\n    return ref(n)",
                         ["def ref(n):\n    return n * n", "assert square(3) == ref(3)", "assert square(4) == ref(4)"]),
    "files beside it": ("import os, re\ndef answer():\n    text = ''.join(open(n, errors='replace').read() "
                        "for n in os.listdir('.') if os.path.isfile(n))\n"
                        "    m = re.search(r'E0 = (\\d+)', text)\n    return int(m.group(1)) if m else -1",
                        ["E0 = 42", "assert answer() == E0"]),
    "globals scan": ("def answer():\n    return [v for k, v in globals().items() if k.startswith('EXP')][0]",
                     ["EXPECTED = [3, 1, 4]", "assert answer() == EXPECTED"]),
}


@pytest.mark.parametrize("leak", sorted(SETUP_LEAKS))
def test_the_program_never_holds_the_tests_setup(leak):  # 1.0 before, each
    program, tests = SETUP_LEAKS[leak]
    assert score(program, tests) == 0.0


def test_setup_values_still_reach_the_program_as_arguments():
    tests = ["import math", "K = 3", "def ref(n):\n    return helper(n)", "def helper(n):\n    return n * n",
             "NUMS = [1, 2, 3]",
             "assert square(K) == ref(K)", "assert square(len(NUMS)) == 9", "assert total(NUMS) == 6",
             "assert root(16) == math.isqrt(16)"]
    program = ("import math\ndef square(n):\n    return n * n\ndef total(xs):\n    return sum(xs)\n"
               "def root(n):\n    return math.isqrt(n)")
    assert score(program, tests) == 1.0


RIGGED = {  # (program, tests): the verdict's library/method call runs where the program rigs it
    "patched math.isclose": ("import math\nmath.isclose = lambda *a, **k: True\ndef half(x):\n    return 0.0",
                             ["assert math.isclose(half(1), 0.5)"]),
    "str subclass startswith": ("class R(str):\n    def startswith(self, *a):\n        return True\n"
                                "def greet(x):\n    return R('nope')", ["assert greet('Bob').startswith('Hello')"]),
    "class named like the function": ("class greet:\n    def __init__(self, *a):\n        pass\n"
                                      "    def __getattr__(self, name):\n        return lambda *a, **k: True",
                                      ["assert greet('Bob').startswith('Hello')", "assert greet('Bob').endswith('Bob')"]),
}


@pytest.mark.parametrize("rig", sorted(RIGGED))
def test_library_and_method_calls_of_the_verdict_run_outside_the_program(rig):  # 1.0 before, each
    program, tests = RIGGED[rig]
    assert score(program, tests) == 0.0


def test_honest_library_and_method_calls_still_pass():
    tests = ["assert math.isclose(half(1), 0.5)", "assert greet('Bob').startswith('Hello')",
             "assert greet('Bob').split()[-1] == 'Bob'", "assert Solution().two_sum([2, 7], 9)[0] == 0",
             "assert Box(3).double().value == 6"]
    program = ("import math\ndef half(x):\n    return x / 2\ndef greet(x):\n    return 'Hello ' + x\n"
               "class Solution:\n    def two_sum(self, xs, t):\n        return [0, 1]\n"
               "class Box:\n    def __init__(self, v):\n        self.value = v\n    def double(self):\n"
               "        return Box(2 * self.value)")
    assert score(program, tests) == 1.0


def test_a_setup_statement_that_cannot_be_split_is_refused_naming_it():
    with pytest.raises(UnsplittableTest, match=r"check = lambda"):
        score("def f(x):\n    return x", ["check = lambda x: f(x) == x", "assert check(1)"])


def test_an_argument_that_is_not_plain_data_is_refused_naming_the_test():
    tests = ["class Node:\n    def __init__(self, v):\n        self.v = v", "assert depth(Node(1)) == 1"]
    with pytest.raises(UnsplittableTest, match=r"test 'assert depth\(Node\(1\)\) == 1'.*not plain data"):
        score("def depth(node):\n    return 1", tests)


def test_only_cheap_pure_verdicts_run_in_the_caller():
    """The caller evaluates a verdict itself only when its cost is linear in the values; the rest
    goes to the program-free verdict sandbox."""
    from rewards.code_asserts import _is_safe

    def here(source, math_is_module=True):
        return _is_safe(ast.parse(source, mode="eval"), math_is_module)

    assert here("sum(_v0) == 3") and here("_v0.startswith('He')") and here("math.isclose(_v0, 0.5)")
    assert not here("math.isclose(_v0, 0.5)", math_is_module=False)  # the tests rebound `math`
    assert not here("sum(_v0, []) == [1]")  # quadratic in the number of lists
    assert not here("_v0 // 7 == 1")  # big-int division is quadratic
    assert not here("math.factorial(_v0) == 1") and not here("_v0.__class__ == int")
    assert not here("len.__self__ == 1") and not here("_v0.center(10 ** 9)")


# Class 5: the decoders of the trusted side.

FAKE_LINE = """
import os
def add(a, b):
    for fd in range(1, 30):
        try:
            os.write(fd, {line!r}.encode())
        except OSError:
            pass
    os._exit(0)
"""


def test_a_non_ascii_index_on_the_channel_does_not_raise():  # raised before
    assert read_claims('\u0661\t["int", "3"]\n\u00b2\t["int", "3"]', 2) == [read_claims("", 1)[0]] * 2
    line = '\u0660\t["int", "3"]\n'  # ARABIC-INDIC DIGIT ZERO: str.isdigit() is True, int() reads 0
    assert score(FAKE_LINE.format(line=line), ["assert add(1, 2) == 3"]) == 0.0


COLLIDING = [encode(k * (2**61 - 1)) for k in range(1, 3001)]  # all hash to 0


def test_hash_colliding_values_are_refused_by_the_decoder():  # accepted before (quadratic cost)
    for claim in (["set", COLLIDING], ["frozenset", COLLIDING], ["list", COLLIDING],
                  ["dict", [[item, ["none"]] for item in COLLIDING]],
                  ["list", [["tuple", [item]] for item in COLLIDING]]):
        with pytest.raises(ValueError, match="hash"):
            decode(claim)
    honest = [-1, -2] * 50 + [2**61 - 1, 0]  # hash(-1) == hash(-2), hash(2**61 - 1) == hash(0): few distinct
    assert decode(encode(honest)) == honest
    assert decode(encode(set(honest))) == set(honest)


def test_a_colliding_set_on_the_channel_scores_nothing():
    line = "0\t" + json.dumps(["set", COLLIDING]) + "\n"
    assert score(FAKE_LINE.format(line=line), ["assert add(1, 2) == {1}"]) == 0.0


def test_the_decoder_caps_a_values_size():
    with pytest.raises(ValueError, match="too many"):
        decode(["list", [["none"]] * 300_000])
    with pytest.raises(ValueError):
        decode(["int", "0x" + "f" * (1 << 21)])


def test_an_int_over_4300_digits_comes_back_whole():  # 0.0 before
    big = 7**6000  # 5,071 digits
    assert decode(encode(big)) == big and decode(encode(-big)) == -big
    tests = ["assert big(6000) == 7 ** 6000", "assert big(6000) % 1000 == 1", "assert big(2) == 49"]
    assert score("def big(n):\n    return 7 ** n", tests) == 1.0


@pytest.mark.parametrize("junk", [["int", "\u0663"], ["int", " 3"], ["int", "3_0"], ["float", "\u0663.0"],
                                  ["float", "1e5"], ["complex", "0x1p+0", "\u0661"]])
def test_numbers_are_parsed_as_strict_ascii(junk):
    with pytest.raises(ValueError):
        decode(junk)


# Fuzz: whatever arrives on the channel, the caller gets claims or nothing, never an exception.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**6000), max_value=10**6000)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.frozensets(st.integers() | st.text(max_size=5), max_size=5)
    | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["int", "float", "str", "list", "tuple", "set", "dict", "range", "none", "absent", "raised",
                       "0x1f", "-0x0", "\u0663", "nan", "inf", "0x1.8p+0"]),
    lambda inner: st.lists(inner, max_size=6), max_leaves=40)


@settings(max_examples=150, deadline=None)
@given(PLAIN)
def test_every_plain_value_crosses_unchanged(value):
    assert decode(encode(value)) == value


@settings(max_examples=400, deadline=None)
@given(JSONISH)
def test_decode_of_anything_is_a_value_or_a_value_error(claim):
    try:
        decode(claim)
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=4) | st.sampled_from(["0", "1", "٣", "²", "00", "-1", "1 "]),
                          JSONISH.map(json.dumps) | st.text(max_size=30)), max_size=12))
def test_read_claims_never_raises_and_answers_every_probe(lines):
    text = "\n".join(f"{index}\t{payload}" for index, payload in lines)
    claims = read_claims(text, 2)
    assert len(claims) == 2
