"""The `rlp` command line: the commands are listed, `make-task` writes the task, and bad input
to any command is one stderr line with exit status 2. (`rlp config` is covered in test_config,
`rlp tiny-model` end to end in tests/integration/test_tiny_model.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rl_pipeline.cli import app

RLP = Path(sys.executable).with_name("rlp")
runner = CliRunner()


def test_help_lists_the_commands():
    result = subprocess.run([str(RLP), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("config", "tiny-model", "make-task", "sft"):
        assert command in result.stdout


def test_no_arguments_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "make-task" in result.output


def test_make_task_writes_disjoint_jsonl_splits(tmp_path):
    result = runner.invoke(app, ["make-task", str(tmp_path), "--train", "30", "--eval", "5", "--test", "5", "--seed", "4"])
    assert result.exit_code == 0, result.output
    for name, size in {"train": 30, "eval": 5, "test": 5}.items():
        path = tmp_path / f"{name}.jsonl"
        assert f"{name}: {path}" in result.stdout
        assert len(path.read_text().splitlines()) == size
    prompts = [json.loads(line)["prompt"] for name in ("train", "eval", "test") for line in (tmp_path / f"{name}.jsonl").open()]
    assert len(set(prompts)) == 40


def test_make_task_with_options(tmp_path):
    result = runner.invoke(app, ["make-task", str(tmp_path), "--train", "20", "--eval", "2", "--test", "2", "--digits", "1", "--ops", "*-"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").open()]
    assert all(len(r["prompt"]) == 4 and r["prompt"][1] in "*-" for r in rows)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["make-task", "{out}", "--train", "200", "--digits", "1"], "only 100 distinct ones exist"),
        (["make-task", "{out}", "--ops", "+/"], "unknown operations"),
        (["tiny-model", "{out}", "--hidden", "128", "--heads", "8"], "head_dim 16"),
        (["tiny-model", "{out}", "--hidden", "129", "--heads", "2"], "must be divisible by heads"),
        (["tiny-model", "{out}", "--heads", "4", "--kv-heads", "3", "--hidden", "256"], "multiple of kv_heads"),
    ],
    ids=["too-many-problems", "unknown-op", "head-dim", "indivisible-hidden", "kv-heads"],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, expected):
    out = tmp_path / "out"
    result = runner.invoke(app, [a.format(out=out) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_config_invalid_override_via_runner(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: m}\n")
    ok = runner.invoke(app, ["config", str(recipe), "trainer.lr=3e-4"])
    assert ok.exit_code == 0 and "lr: 0.0003" in ok.stdout
    bad = runner.invoke(app, ["config", str(recipe), "trainer.lr"])
    assert bad.exit_code == 2
    assert "expected KEY=VALUE" in bad.stderr and bad.stdout == ""


def test_config_prints_every_stage_of_a_pipeline_recipe():
    import yaml

    demo = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
    result = runner.invoke(app, ["config", str(demo)])
    assert result.exit_code == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    raw = yaml.safe_load(demo.read_text())
    assert [s["name"] for s in resolved["stages"]] == [s["name"] for s in raw["stages"]]
    # Each stage recipe is resolved: defaults spelled out, {run_dir} filled in.
    grpo = next(s["recipe"] for s in resolved["stages"] if s["kind"] == "grpo")
    assert "eps_low" in grpo["grpo"] and "{run_dir}" not in result.stdout
    refused = runner.invoke(app, ["config", str(demo), "trainer.lr=1e-4"])
    assert refused.exit_code == 2 and "pipeline recipe takes no KEY=VALUE overrides" in refused.stderr


# --- a reward file the user wrote with a syntax error ----------------------------------------------

BROKEN_REWARD = "def score(prompts, completions, **kw):\n    return [1.0 for c in completions]\n\ndef oops(:\n"


def _grpo_recipe_with_broken_reward(tmp_path: Path) -> Path:
    """A GRPO recipe complete up to its second reward, a file whose line 4 does not parse."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # enough for the model-path check
    (tmp_path / "my_rewards.py").write_text(BROKEN_REWARD)
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(
        "name: broken\noutput_dir: runs\nmodel: {path: model}\ndata: {train: {path: train.jsonl}}\n"
        "rollout: {max_tokens: 8}\ngrpo: {steps: 1}\n"
        "rewards:\n  functions:\n    - {name: math}\n    - {name: 'my_rewards.py:score'}\n")
    return recipe


def test_a_reward_file_with_a_syntax_error_is_one_line_naming_key_file_and_line(tmp_path):
    recipe = _grpo_recipe_with_broken_reward(tmp_path)
    result = subprocess.run([str(RLP), "grpo", str(recipe)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "rewards.functions[1]" in lines[0] and "my_rewards.py" in lines[0] and "line 4" in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # refused before the run directory (and any actor)


def test_a_pipeline_stage_with_a_broken_reward_file_is_refused_before_the_first_stage(tmp_path, monkeypatch):
    _grpo_recipe_with_broken_reward(tmp_path)
    monkeypatch.chdir(tmp_path)  # the reward file's path is relative, as users write it
    # The first stage lacks its `sft` section: it fails at once if it is reached at all.
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "name: p\noutput_dir: runs\nstages:\n"
        "  - {name: first, kind: sft, recipe: {model: {path: model}, data: {train: {path: train.jsonl}}}}\n"
        "  - name: rl\n    kind: grpo\n    recipe:\n      model: {path: model}\n"
        "      data: {train: {path: train.jsonl}}\n      rollout: {max_tokens: 8}\n"
        "      rewards: {functions: [{name: 'my_rewards.py:score'}]}\n")
    result = runner.invoke(app, ["pipeline", str(pipeline), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages[1] (rl)" in lines[0] and "rewards.functions[0]" in lines[0], result.stderr
    assert "my_rewards.py" in lines[0] and "line 4" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
