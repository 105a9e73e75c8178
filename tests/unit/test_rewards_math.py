"""The `math` reward on hand-written cases: each form right and wrong (1.0 / 0.0)."""

from __future__ import annotations

import pytest

import rewards

CASES = [
    # (ground truth, completion, expected score)
    ("42", r"The answer is $\boxed{42}$.", 1.0),
    ("42", r"The answer is $\boxed{41}$.", 0.0),
    (r"\frac{1}{2}", r"\boxed{0.5}", 1.0),
    (r"\frac{1}{2}", r"\boxed{\frac{2}{4}}", 1.0),
    (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}", 0.0),
    ("1/2", r"so $\boxed{\dfrac12}$", 1.0),
    (r"50\%", r"\boxed{50\%}", 1.0),
    (r"50\%", r"\boxed{0.5}", 1.0),
    (r"50\%", r"\boxed{5\%}", 0.0),
    ("1000", r"\boxed{1,000}", 1.0),
    ("1,234,567", r"\boxed{1234567}", 1.0),
    ("1000", r"\boxed{1,001}", 0.0),
    (r"\{1, 2, 3\}", r"\boxed{\{3, 2, 1\}}", 1.0),
    (r"\{1, 2, 3\}", r"\boxed{\{1, 2\}}", 0.0),
    ("(0, 1]", r"\boxed{(0, 1]}", 1.0),
    ("(0, 1]", r"\boxed{[0, 1]}", 0.0),
    (r"\sqrt{2}/2", r"\boxed{\frac{\sqrt{2}}{2}}", 1.0),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", 1.0),
    ("x^2+2x+1", r"\boxed{(x-1)^2}", 0.0),
    ("3", r"\boxed{x = 3}", 1.0),
    ("72", r"\boxed{72 \text{ dollars}}", 1.0),
    # GSM8K-style reference answers and completions
    ("Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72", "She sold 72 clips in total.", 1.0),
    ("Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72", "48 + 24 = 73\n#### 73", 0.0),
    ("#### 1,200", "The total is 600 + 600.\n#### 1200", 1.0),
    ("18", "16 - 3 - 4 = 9 eggs, 9 * 2 = 18\n#### 18", 1.0),
    # R1 style: only the text after </think> is graded
    ("5", "<think>maybe it is 5? no, 6</think> The answer is 6.", 0.0),
    ("6", "<think>maybe it is 5? no, 6</think> The answer is $\\boxed{6}$.", 1.0),
    ("7", "I have no idea.", 0.0),
    ("7", "", 0.0),
]


@pytest.fixture(scope="module")
def math_reward():
    return rewards.get("math")


@pytest.mark.parametrize(("gold", "completion", "expected"), CASES)
def test_math_case(math_reward, gold, completion, expected):
    assert math_reward(["q"], [completion], ground_truth=[gold]) == [expected]


def test_case_count_covers_the_issue():
    assert len(CASES) >= 25
    assert sum(score == 0.0 for *_, score in CASES) >= 10


def test_batch_and_missing_ground_truth(math_reward):
    scores = math_reward(["q"] * 3, [r"\boxed{2}", r"\boxed{2}", r"\boxed{3}"], ground_truth=["2", None, "2"])
    assert scores == [1.0, None, 0.0]


def test_missing_column_is_a_clear_error(math_reward):
    with pytest.raises(ValueError, match="needs a 'ground_truth' column"):
        math_reward(["q"], ["1"])


def test_answer_after_can_be_disabled():
    fn = rewards.get("math", answer_after=None)
    # With the whole text graded, the boxed answer inside the reasoning counts.
    assert fn(["q"], [r"<think>\boxed{5}</think> not sure"], ground_truth=["5"]) == [1.0]
