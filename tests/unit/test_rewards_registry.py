"""The reward plug-in API: lookup by name, module path, file path and entry point; the veRL
adapter; async functions; output validation with messages naming the function."""

from __future__ import annotations

import sys
import textwrap

import pytest

import rewards
from rewards import RewardOutputError, UnknownRewardError


@rewards.register("test_registry_length")
def _length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def test_registered_name_returns_batch_callable():
    fn = rewards.get("test_registry_length")
    assert fn(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    assert {"math", "format", "length_penalty", "code", "reward_model", "judge"} <= set(rewards.registered())


def test_module_function_string():
    fn = rewards.get("rewards.format:format_reward")
    assert fn(["q"], ["<think>x</think>42"]) == [1.0]


def test_user_file_function_found_by_path(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text("def exact(prompts, completions, ground_truth):\n"
                    "    return [float(c == g) for c, g in zip(completions, ground_truth)]\n")
    fn = rewards.get(f"{path}:exact")
    # `exact` takes no **kwargs: the extra column `other` is dropped, `ground_truth` is passed.
    assert fn(["a", "b"], ["1", "2"], ground_truth=["1", "3"], other=[0, 0]) == [1.0, 0.0]


def test_entry_point_plugin_found_by_name(tmp_path, monkeypatch):
    """A real installed-distribution layout (dist-info with entry_points.txt) on sys.path."""
    pkg = tmp_path / "third_party_rewards.py"
    pkg.write_text("def shouting(prompts, completions, **_):\n"
                   "    return [float(c.isupper()) for c in completions]\n")
    dist = tmp_path / "third_party_rewards-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rl_pipeline.rewards]\nshouting = third_party_rewards:shouting\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(rewards._STATE, "entry_points_loaded", False)
    try:
        assert "shouting" in rewards.registered()
        assert rewards.get("shouting")(["", ""], ["HI", "hi"]) == [1.0, 0.0]
    finally:
        rewards._REGISTRY.pop("shouting", None)
        sys.modules.pop("third_party_rewards", None)


def test_unknown_name_lists_registered():
    with pytest.raises(UnknownRewardError) as err:
        rewards.get("maths")
    message = str(err.value)
    assert "'maths'" in message and "math, " in message and "format" in message


def test_missing_attribute_in_file_names_what_exists(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def one(prompts, completions, **_):\n    return [1.0] * len(completions)\n")
    with pytest.raises(UnknownRewardError, match=r"no callable 'two'; it defines: one"):
        rewards.get(f"{path}:two")
    with pytest.raises(UnknownRewardError, match="cannot import"):
        rewards.get(f"{tmp_path}/absent.py:one")


def test_a_user_file_that_does_not_import_is_one_line_with_file_and_line(tmp_path):
    (tmp_path / "syntax.py").write_text("x = 1\ndef f(:\n")
    with pytest.raises(rewards.UnknownRewardError) as syntax:
        rewards.get(f"{tmp_path}/syntax.py:f")
    assert f"{tmp_path}/syntax.py, line 2: SyntaxError" in str(syntax.value) and "\n" not in str(syntax.value)
    (tmp_path / "raises.py").write_text("import json\n\nLIMIT = 1 / 0\n")
    with pytest.raises(rewards.UnknownRewardError) as raised:
        rewards.get(f"{tmp_path}/raises.py:f")
    assert f"{tmp_path}/raises.py, line 3: ZeroDivisionError: division by zero" in str(raised.value)


def test_verl_per_sample_function_is_adapted(tmp_path):
    path = tmp_path / "verl_style.py"
    path.write_text(textwrap.dedent("""
        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            if data_source == "dict":
                return {"score": 0.5, "acc": True}
            return 1.0 if solution_str.strip() == ground_truth else 0.0
    """))
    fn = rewards.get(f"{path}:compute_score")
    scores = fn(["", "", ""], ["7", "8", "x"], data_source=["gsm8k", "gsm8k", "dict"],
                ground_truth=["7", "7", "?"], extra_info=[{}, {}, {}])
    assert scores == [1.0, 0.0, 0.5]
    # veRL datasets keep the answer in a `reward_model` dict column.
    assert fn([""], ["7"], reward_model=[{"ground_truth": "7"}]) == [1.0]


def test_async_function_is_awaited():
    async def slow_len(prompts, completions, **_):
        return [float(len(c)) for c in completions]

    fn = rewards.RewardFn(name="slow_len", target=slow_len)
    assert fn(["", ""], ["a", "abc"]) == [1.0, 3.0]


def test_kwargs_are_bound():
    fn = rewards.get("length_penalty", max_length=10, cache_length=4)
    # soft penalty: lengths 6 -> 0; 8 -> (6 - 8) / 4 = -0.5; 11 -> -1
    assert fn(["", "", ""], ["x" * 6, "x" * 8, "x" * 11]) == [0.0, -0.5, -1.0]


def _wrong_count(prompts, completions, **_):
    return [1.0]


def _non_numeric(prompts, completions, **_):
    return ["high"] * len(completions)


def _nan(prompts, completions, **_):
    return [float("nan")] * len(completions)


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        (_wrong_count, r"reward 'bad' \(.*_wrong_count\) returned 1 scores for 2 completions"),
        (_non_numeric, r"reward 'bad' \(.*_non_numeric\) returned a non-numeric score 'high'"),
        (_nan, r"reward 'bad' \(.*_nan\) returned NaN"),
    ],
)
def test_bad_output_names_the_function(target, pattern):
    with pytest.raises(RewardOutputError, match=pattern):
        rewards.RewardFn(name="bad", target=target)(["", ""], ["a", "b"])


def test_none_and_numpy_scores_pass_validation():
    import numpy as np

    fn = rewards.RewardFn(name="mixed", target=lambda p, c, **_: [None, np.float32(0.25)])
    assert fn(["", ""], ["a", "b"]) == [None, 0.25]


def test_register_refuses_a_different_function_under_a_taken_name():
    with pytest.raises(rewards.RewardError, match="already registered"):
        rewards.register("math")(_wrong_count)
