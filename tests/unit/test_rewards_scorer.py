"""The reward scorer without Ray: weighted totals, metrics, and what survives faulty functions.

Faults are injected on purpose by a user reward file (written below): a sample that sleeps past
the timeout, one that raises, one that kills its worker process. Each must score
`failure_score`, be counted, and leave the other samples and later batches scored normally.
"""

from __future__ import annotations

import logging
import textwrap

import pytest

from rl_pipeline.config import InputError, RewardsConfig
from rl_pipeline.workers.reward import RewardFunctionError, RewardScorer, score_batch, validate

FAULTS = textwrap.dedent("""
    import os, time

    def faulty(prompts, completions, **_):
        text = completions[0]
        if text == "sleep":
            time.sleep(60)            # injected fault: runs past the per-sample timeout
        if text == "raise":
            raise RuntimeError("injected failure")
        if text == "die":
            os._exit(3)               # injected fault: the worker process dies
        if text == "na":
            return [None]
        return [1.0]

    def wrong_count(prompts, completions, **_):
        return [1.0, 2.0]

    def words(prompts, completions, **_):
        return ["many" for _ in completions]

    def nothing(prompts, completions, **_):
        return None

    def text(prompts, completions, **_):
        return "0.5"

    def sleeps(prompts, completions, **_):
        time.sleep(30)                # injected fault: far past any batch deadline below
        return [0.0]

    def picky(prompts, completions, **_):
        if completions[0].startswith("1"):
            raise ValueError(f"cannot grade {completions[0]!r}")
        return [1.0]
""")


@pytest.fixture(scope="module")
def faults_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user_rewards") / "faults.py"
    path.write_text(FAULTS)
    return path


def config(*functions, **settings) -> RewardsConfig:
    return RewardsConfig(functions=list(functions), **settings)


def test_weighted_total_components_and_metrics():
    cfg = config({"name": "math"}, {"name": "format", "weight": 0.5},
                 {"name": "length_penalty", "weight": 2.0, "kwargs": {"max_length": 30, "cache_length": 10}})
    completions = [
        "<think>2+2</think> \\boxed{4}",    # math 1, format 1, 28 chars -> (20 - 28) / 10 = -0.8
        "\\boxed{5}",                       # math 0, format 0, 9 chars -> 0
        "<think>x</think> \\boxed{4}",      # math None (no ground truth), format 1, 26 chars -> -0.6
    ]
    result = score_batch(cfg, ["q"] * 3, completions, {"ground_truth": ["4", "4", None]})
    assert result.components["math"] == [1.0, 0.0, None]
    assert result.components["format"] == [1.0, 0.0, 1.0]
    assert result.components["length_penalty"] == pytest.approx([-0.8, 0.0, -0.6])
    # totals: 1 + 0.5 * 1 + 2 * (-0.8) = -0.1; 0; 0 (None) + 0.5 * 1 + 2 * (-0.6) = -0.7
    assert result.total == pytest.approx([-0.1, 0.0, -0.7])
    assert result.metrics["reward/math/mean"] == 0.5  # None left out of the mean
    assert result.metrics["reward/math/applicable"] == 2.0
    assert result.metrics["reward/format/mean"] == pytest.approx(2 / 3)
    assert result.metrics["reward/total/mean"] == pytest.approx(-0.8 / 3)
    assert result.metrics["reward/errors"] == 0.0 and result.metrics["reward/timeouts"] == 0.0


def test_faults_score_failure_and_the_run_goes_on(faults_file, caplog):
    cfg = config({"name": f"{faults_file}:faulty"}, {"name": "format"}, num_workers=2, timeout_s=1.0,
                 failure_score=-1.0)
    completions = ["ok", "sleep", "raise", "die", "na", "<think>a</think>b"]
    with caplog.at_level(logging.ERROR), RewardScorer(cfg) as scorer:
        result = scorer.score(["q"] * 6, completions)
        assert result.components["faulty"] == [1.0, -1.0, -1.0, -1.0, None, 1.0]
        assert result.components["format"] == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        assert result.metrics["reward/timeouts"] == 1.0  # "sleep"
        assert result.metrics["reward/errors"] == 2.0  # "raise" and "die"
        assert result.metrics["reward/faulty/mean"] == pytest.approx(-1 / 5)  # (1 - 3 + 1) / 5
        assert scorer.pool.restarts == 2  # the timed-out and the dead worker were replaced
        again = scorer.score(["q", "q"], ["ok", "ok"])  # the pool still works
        assert again.components["faulty"] == [1.0, 1.0] and again.metrics["reward/errors"] == 0.0
    # one traceback logged for the function, not one per failure
    logged = [r for r in caplog.records if "reward 'faulty' failed" in r.getMessage()]
    assert len(logged) == 1


def test_timeout_is_per_sample_not_per_batch(faults_file):
    """Eight 0.3 s samples on two workers: 1.2 s in all, yet none exceeds its 1 s limit."""
    slow = faults_file.with_name("slow.py")
    slow.write_text("import time\ndef slow(prompts, completions, **_):\n    time.sleep(0.3)\n    return [1.0]\n")
    result = score_batch(config({"name": f"{slow}:slow"}, timeout_s=1.0), ["q"] * 8, ["x"] * 8)
    assert result.total == [1.0] * 8 and result.metrics["reward/timeouts"] == 0.0


@pytest.mark.parametrize(
    ("function", "pattern"),
    [("wrong_count", r"reward '.*faults.py:wrong_count' .* returned 2 scores for 1 completions \(batch row 0: "),
     ("words", r"reward '.*faults.py:words' .* returned a non-numeric score 'many'"),
     ("nothing", r"^rewards.functions\[1\]: reward '.*faults.py:nothing' \(.*nothing\) returned None \(NoneType\)"
                 r"; expected a list of 1 scores \(batch row 0: prompt 'q', completion 'x';"),
     ("text", r"reward '.*faults.py:text' \(.*text\) returned '0.5' \(str\)")],
)
def test_api_violations_raise_one_line_naming_the_function_row_and_value(faults_file, function, pattern):
    """A function that breaks the API is a bug: one line (an InputError, which `rlp` prints as one
    line) naming the function, the row and what it returned, however many samples the batch has."""
    cfg = config({"name": "format"}, {"name": f"{faults_file}:{function}"})
    with pytest.raises(RewardFunctionError, match=pattern) as raised:
        score_batch(cfg, ["q"] * 6, ["x"] * 6)
    assert isinstance(raised.value, InputError) and "\n" not in str(raised.value)


def test_batch_deadline_bounds_a_slow_function(faults_file):
    """Injected fault: a function sleeping 30 s a sample, 8 samples on 2 workers with the per-sample
    timeout at its default (10 s, which alone would take 8 x 10 / 2 = 40 s). The batch deadline
    (3 s) ends the batch: the 2 samples in flight are killed (2 worker restarts, not 8), the other
    6 never start, and all 8 score failure_score as timeouts. Listed first, it also kept the fast
    function from starting in that batch; in the next it goes last and the fast one is scored."""
    cfg = config({"name": f"{faults_file}:sleeps"}, {"name": "format"}, batch_timeout_s=3.0, failure_score=-1.0)
    with RewardScorer(cfg) as scorer:
        result = scorer.score(["q"] * 8, ["x"] * 8)
        assert result.components["sleeps"] == [-1.0] * 8 and result.metrics["reward/sleeps/timeouts"] == 8.0
        assert scorer.pool.restarts == 2
        assert result.failures["sleeps"] == "still running at the batch deadline"
        assert result.metrics["reward/format/timeouts"] == 8.0  # starved behind the slow one
        again = scorer.score(["q"] * 8, ["x"] * 8)
        assert again.components["format"] == [0.0] * 8 and again.metrics["reward/format/timeouts"] == 0.0
        assert again.metrics["reward/sleeps/timeouts"] == 8.0 and list(again.failures) == ["sleeps"]


def test_failures_reach_the_console_once_per_function_with_count_and_first_message(faults_file, caplog):
    """A function raising on some inputs: its name, the count and the first message are one
    console line (FailureLog, what RewardService.score calls on the driver); a second failing
    batch within the rate limit is held back and counted into the next line."""
    from rl_pipeline.workers.reward import FailureLog

    cfg = config({"name": f"{faults_file}:picky"}, failure_score=-1.0)
    with RewardScorer(cfg) as scorer:
        result = scorer.score(["q"] * 4, ["12", "3", "14", "5"])
        again = scorer.score(["q"] * 2, ["1", "2"])
    assert result.components["picky"] == [-1.0, 1.0, -1.0, 1.0]
    assert result.failures == {"picky": "ValueError: cannot grade '12'"}
    failures = FailureLog(cfg, every_s=3600)
    caplog.clear()  # the scorer's own log (the first traceback, in the actor's log under Ray)
    with caplog.at_level(logging.WARNING, logger="rl_pipeline.workers.reward"):
        failures.report(result)
        failures.report(again)  # within the hour: held back
    lines = [r.getMessage() for r in caplog.records if r.name == "rl_pipeline.workers.reward"]
    assert lines == [
        "reward 'picky': 2 raised of 4 samples in this batch, scored -1; first: ValueError: cannot grade '12'"]
    assert failures.line("picky", failures.counts["picky"], "x").startswith("reward 'picky': 1 raised of 2 samples")


def test_validate_unknown_name_lists_registered():
    with pytest.raises(InputError, match=r"rewards.functions\[1\] \('mathh'\): unknown reward 'mathh'; "
                                         r"registered rewards are: .*math"):
        validate(config({"name": "format"}, {"name": "mathh"}))


def test_validate_bad_kwargs_names_function_and_argument():
    with pytest.raises(InputError, match=r"rewards.functions\[0\] \('reward_model'\): missing a required argument: 'model'"):
        validate(config({"name": "reward_model"}))
    with pytest.raises(InputError, match=r"\('reward_model'\): unknown keyword argument\(s\) \['modle'\]"):
        validate(config({"name": "reward_model", "kwargs": {"modle": "x"}}))


def test_relative_file_path_and_repeated_names(faults_file, monkeypatch):
    monkeypatch.chdir(faults_file.parent)
    cfg = config({"name": "faults.py:faulty"}, {"name": "faults.py:faulty", "weight": 2.0})
    result = score_batch(cfg, ["q"], ["ok"])
    assert list(result.components) == ["faulty", "faulty#2"] and result.total == [3.0]


def test_length_mismatch_is_an_input_error():
    with pytest.raises(InputError, match="column 'ground_truth' has 1 rows for 2 completions"):
        score_batch(config({"name": "math"}), ["q", "q"], ["1", "2"], {"ground_truth": ["1"]})
