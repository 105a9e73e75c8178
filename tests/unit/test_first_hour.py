"""Issue 33, a newcomer's first hour: the mistakes a new user makes get one line that names the
recipe key, without starting Ray.

- trap 3: a model path that is not a folder here but has the shape of a hub name
  (`runs/tiny-model` before `rlp tiny-model` ran) is one line naming the key, HF_HUB_OFFLINE
  and the local alternative, whether the hub is unreachable or switched off: for sft, grpo,
  eval (and the teacher's and reward models' paths), not a minute of hub retries and a traceback.
  The unreachable hub is real: HF_ENDPOINT points at a local port nothing listens on.
- `--resume` of a run directory that holds no checkpoint says it starts from step 0.
- a malformed jsonl line is named by its line number.
- a distill run that keeps almost nothing (2 of 1,600 samples) warns, in stats.json and the card.
- accuracy comes from the reward that grades correctness, not from whichever reward is first.
(tests/integration/test_first_hour.py: `rlp eval` says and writes what it scored; the chat template
of a model trained on plain text.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RLP = str(Path(sys.executable).with_name("rlp"))


def closed_endpoint() -> str:
    """An HTTP endpoint on this machine that refuses connections: a hub that cannot be reached."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def rlp(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(HF_HOME=str(cwd / "hf-home"), **env)
    return subprocess.run([RLP, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=150)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


STAGES = {
    "sft": ["sft", str(ROOT / "recipes/sft_tiny_base.yaml")],
    "grpo": ["grpo", str(ROOT / "recipes/grpo_tiny.yaml"), "model.path=runs/tiny-model"],
    "eval": ["eval", str(ROOT / "recipes/grpo_tiny.yaml"), "model.path=runs/tiny-model"],
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_missing_local_model_with_the_hub_unreachable_is_one_line_naming_model_path(stage, tmp_path):
    # Before the fix: `runs/tiny-model` passed as a hub name and the tokenizer load went to the hub
    # (53 s of retries against huggingface.co, a 299-line traceback without `model.path`).
    result = rlp(STAGES[stage], tmp_path, HF_ENDPOINT=closed_endpoint())
    line = one_error_line(result)
    assert line.startswith("error: model.path: model 'runs/tiny-model' not found"), line
    assert "unreachable" in line and "HF_HUB_OFFLINE" in line and "rlp tiny-model" in line, line
    assert str(tmp_path) in line  # where the relative path was looked for


def test_a_missing_local_model_with_the_hub_off_names_hf_hub_offline(tmp_path):
    line = one_error_line(rlp(STAGES["sft"], tmp_path, HF_HUB_OFFLINE="1"))
    assert line.startswith("error: model.path: model 'runs/tiny-model' not found"), line
    assert "HF_HUB_OFFLINE is set" in line and "rlp tiny-model" in line, line


def test_a_hub_model_in_the_local_cache_passes_offline(tmp_path):
    """A model downloaded before loads offline, so the check must not refuse it. The cache is the
    real huggingface_hub layout (refs/main -> snapshots/<commit>/config.json)."""
    snapshot = tmp_path / "hub" / "models--someorg--somemodel" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    code = ("from rl_pipeline.models.loading import check_model_source as c; c('someorg/somemodel'); "
            "c('otherorg/othermodel')")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    # the cached one passes; the next, uncached, is refused by name
    assert "model.path: model 'otherorg/othermodel' not found" in result.stderr, result.stderr


@pytest.mark.parametrize("path", ["runs/sft-base/final_model", "/nowhere/model", "./model", "runs/"])
def test_paths_that_cannot_be_hub_names_fail_without_asking_the_hub(path, monkeypatch):
    from rl_pipeline.config import InputError
    from rl_pipeline.models.loading import check_model_source

    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint())
    with pytest.raises(InputError, match=r"^distill\.expert: model .* not found .*not a hub name"):
        check_model_source(path, "distill.expert")


def test_teacher_and_reward_model_paths_are_checked_under_their_own_keys(monkeypatch):
    from rl_pipeline.config import InputError, RewardsConfig, parse_recipe
    from rl_pipeline.models.loading import check_reward_model_paths
    from rl_pipeline.pipelines.grpo_inputs import check_teacher

    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint())
    rewards = RewardsConfig(functions=[{"name": "math"},
                                       {"name": "reward_model", "kwargs": {"model": "runs/rm-tiny"}}])
    with pytest.raises(InputError, match=r"^rewards\.functions\[1\]\.kwargs\.model: model 'runs/rm-tiny' not found"):
        check_reward_model_paths(rewards)
    recipe = parse_recipe({"model": {"path": "m"}, "teacher": {"model": {"path": "runs/teacher"}}})
    with pytest.raises(InputError, match=r"^teacher\.model\.path: model 'runs/teacher' not found .*unreachable"):
        check_teacher(recipe, student_tokenizer=None)


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, caplog):
    # Before the fix: nothing was said; the run silently restarted from step 0.
    from rl_pipeline.checkpoint import RunDir
    from rl_pipeline.config import parse_recipe

    recipe = parse_recipe({"model": {"path": "m"}, "data": {"train": {"path": "t.jsonl"}}, "sft": {"save_every": 50}})
    RunDir.open(recipe, tmp_path / "run", resume=False)  # a run stopped before its first save
    with caplog.at_level("WARNING", logger="rl_pipeline.checkpoint"):
        run = RunDir.open(recipe, tmp_path / "run", resume=True)
    assert run.latest() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"--resume: {tmp_path / 'run'} has no checkpoint yet (one is written every sft.save_every steps); "
        "starting from step 0"]


def test_a_malformed_jsonl_line_is_named_by_its_line_number(tmp_path):
    # Before the fix: "could not load ...: DatasetGenerationError: An error occurred while
    # generating the dataset" (the line only in a log line of pyarrow's, as "row 2").
    from rl_pipeline.config import DatasetConfig
    from rl_pipeline.data.loading import DataError, load_rows

    rows = ['{"prompt": "1+1=", "ground_truth": "2"}'] * 40 + ['{"prompt": "3+3=" "ground_truth": "6"}', "[1, 2]"]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        load_rows(DatasetConfig(path=str(path)), "data.eval")
    assert str(err.value) == f"data.eval: {path} line 41: not valid JSON (Expecting ',' delimiter at column 19)"
    path.write_text("\n".join(rows[:40] + rows[41:]) + "\n")
    with pytest.raises(DataError, match=r"^data\.eval: .*train\.jsonl line 41: not a JSON object"):
        load_rows(DatasetConfig(path=str(path)), "data.eval")


def _distill_stats(generated: int, accepted: int) -> dict:
    """stats.json of a one-shard distill run of 800 problems x 2 samples, the expert kind only."""
    from rl_pipeline.config import RolloutConfig
    from rl_pipeline.pipelines.distill import DistillInputs, _empty_counts, summarize

    recipe = parse_recipe_dict({"model": {"path": "m"}, "data": {"train": {"path": "t.jsonl"}},
                                "rewards": {"functions": [{"name": "math"}]},
                                "distill": {"expert": "e", "kinds": ["expert"], "system_prompt": "Check.",
                                            "samples_per_prompt": 2}})
    counts = _empty_counts(["math"])
    counts.update(generated=generated, accepted=accepted, problems_with_accepted=accepted, reward_max=1.0,
                  reward_sum_accepted=float(accepted))
    counts["rejected"]["below_threshold"] = generated - accepted
    inputs = DistillInputs(None, [], 0, ["math"], RolloutConfig(), Path("out"), "f", "expert")
    return summarize({0: {"problems": 800, "kinds": {"expert": counts}}}, recipe, inputs, 1)


def parse_recipe_dict(raw: dict):
    from rl_pipeline.config import parse_recipe

    return parse_recipe(raw)


def test_a_distill_run_that_keeps_almost_nothing_warns():
    # Before the fix: 2 of 1,600 kept was a silent success (exit 0, no warning anywhere).
    from rl_pipeline.data.distill_output import dataset_card

    stats = _distill_stats(1600, 2)
    assert stats["low_acceptance"] == (
        "low acceptance: kept only 2 of 1600 samples (0.1%, below 5%); rejected: 1598 below threshold "
        "(distill.threshold=1.0; the highest total reward was 1.0); an SFT on so few rows teaches little: check "
        "that the expert (distill.expert) solves this task and that the rewards accept its answers")
    assert "**Warning**: low acceptance: kept only 2 of 1600" in dataset_card(stats, "jsonl")
    assert _distill_stats(1600, 80)["low_acceptance"] is None  # 5% kept: fine
    assert _distill_stats(1600, 0)["low_acceptance"] is None  # empty: the empty_reason says it


def test_accuracy_comes_from_the_grading_reward_not_the_first_one(tmp_path, caplog):
    # Before the fix: the first component defined "correct", so a length or format reward first
    # made eval/accuracy 0.000 for a model that was 28.5% right.
    from rl_pipeline.config import InputError, RewardsConfig
    from rl_pipeline.pipelines.accuracy import correctness_component

    (tmp_path / "mine.py").write_text(
        "def short(prompts, completions, **kw):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n"
        "def exact(prompts, completions, ground_truth, **kw):\n"
        "    return [float(c == g) for c, g in zip(completions, ground_truth)]\n")
    short, exact = f"{tmp_path}/mine.py:short", f"{tmp_path}/mine.py:exact"

    def pick(names, functions, explicit=None):
        return correctness_component(RewardsConfig(functions=[{"name": n} for n in functions]), names, explicit)

    assert pick(["format", "math"], ["format", "math"]) == "math"
    assert pick(["short", "exact"], [short, exact]) == "exact"  # takes ground_truth: it grades
    assert pick(["format", "math"], ["format", "math"], explicit="format") == "format"  # the recipe decides
    with caplog.at_level("WARNING", logger="rl_pipeline.pipelines.accuracy"):
        assert pick(["format", "short"], ["format", short]) is None  # nothing grades: no accuracy
    assert "accuracy is not reported: no reward in rewards.functions (format, short)" in caplog.text
    with pytest.raises(InputError, match="grpo.accuracy_reward: 'mathh' is not a reward component"):
        pick(["math"], ["math"], explicit="mathh")


@pytest.mark.parametrize(("train", "raw"), [
    ({"format": "prompt_completion"}, True),
    ({"format": "prompt_completion", "chat": True}, False),
    ({"format": "auto"}, True),
    ({"format": "messages", "path": "chat.jsonl"}, False),
])
def test_only_plain_text_training_gets_the_plain_text_chat_template(tmp_path, train, raw):
    from rl_pipeline.config import parse_recipe
    from rl_pipeline.pipelines.sft import trains_on_raw_text

    (tmp_path / "t.jsonl").write_text('{"prompt": "1+2=", "completion": "3"}\n')
    (tmp_path / "chat.jsonl").write_text('{"messages": [{"role": "user", "content": "1+2="}]}\n')
    spec = {"path": str(tmp_path / train.pop("path", "t.jsonl")), **train}
    recipe = parse_recipe({"model": {"path": "m"}, "data": {"train": spec}, "sft": {}})
    assert trains_on_raw_text(recipe) is raw
