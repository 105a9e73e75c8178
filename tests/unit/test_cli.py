"""The `rlp` command line: the commands are listed, `make-task` writes the task, and bad input
to any command is one stderr line with exit status 2. (`rlp config` is covered in test_config,
`rlp tiny-model` end to end in tests/integration/test_tiny_model.py.)"""

from __future__ import annotations

import json
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
