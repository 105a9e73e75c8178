"""The `format` (R1 tag structure) and `length_penalty` (overlong shaping) rewards."""

from __future__ import annotations

import pytest

import rewards


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>add 2 and 2</think>4", 1.0),
        ("<think>\nadd\n</think>\n\nThe answer is 4.", 1.0),
        ("  <think>x</think> 4  ", 1.0),  # surrounding whitespace is ignored
        ("4", 0.0),  # no reasoning block
        ("<think>add</think>", 0.0),  # no answer after it
        ("<think>add</think>   \n", 0.0),
        ("<think></think>4", 0.0),  # empty reasoning
        ("<think>a</think>4<think>b</think>5", 0.0),  # two blocks
        ("<think>a<think>b</think>4", 0.0),  # nested opening tag
        ("intro <think>a</think>4", 0.0),  # text before the block
        ("<think>a 4", 0.0),  # never closed
    ],
)
def test_think_then_answer(completion, expected):
    assert rewards.get("format")(["q"], [completion]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>4</answer>", 1.0),
        ("<think>a</think>\n<answer> 4 </answer>", 1.0),
        ("<think>a</think>4", 0.0),
        ("<think>a</think><answer>4</answer> trailing", 0.0),
        ("<think>a</think><answer></answer>", 0.0),
        ("<answer>4</answer><think>a</think>", 0.0),
    ],
)
def test_answer_tags(completion, expected):
    assert rewards.get("format", answer_tag="answer")(["q"], [completion]) == [expected]


def test_custom_tags_and_opened_by_prompt():
    fn = rewards.get("format", think_tag="reasoning", require_start=False)
    # A chat template ending with "<reasoning>" means the completion starts inside the block.
    assert fn(["q"] * 3, ["a</reasoning>4", "<reasoning>a</reasoning>4", "<think>a</think>4"]) == [1.0, 1.0, 0.0]


def test_soft_length_penalty_by_token_counts():
    fn = rewards.get("length_penalty", max_length=100, cache_length=20)
    # limit = 100 - 20 = 80: 80 -> 0; 90 -> (80 - 90) / 20 = -0.5; 100 -> -1.0; 101 -> -1
    lengths = [10, 80, 90, 100, 101]
    assert fn([""] * 5, ["x"] * 5, completion_length=lengths) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_hard_length_penalty_and_truncation():
    fn = rewards.get("length_penalty", max_length=5, mode="hard", truncated_score=-0.5)
    # by characters: 5 -> 0, 6 -> -1; a truncated sample gets truncated_score whatever its length
    assert fn([""] * 3, ["12345", "123456", "1"], truncated=[False, False, True]) == [0.0, -1.0, -0.5]


def test_length_penalty_rejects_bad_settings():
    with pytest.raises(ValueError, match="cache_length < max_length"):
        rewards.get("length_penalty", max_length=10, cache_length=10)([""], ["x"])
    with pytest.raises(ValueError, match="mode must be"):
        rewards.get("length_penalty", max_length=10, mode="linear")([""], ["x"])
