"""Recipe schema: valid recipes load, errors name the file and the dotted key path, overrides
coerce types, and `rlp config` prints YAML or fails with exit status 2 and one stderr line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl_pipeline.config import RecipeError, load_recipe, recipe_to_yaml

REPO = Path(__file__).resolve().parents[2]
RLP = Path(sys.executable).with_name("rlp")

VALID = {
    "name": "unit",
    "model": {"path": "models/tiny"},
    "data": {
        "train": {"path": "data/train.jsonl", "format": "prompt_completion"},
        "max_length": 64,
    },
    "trainer": {"lr": 1.0e-3, "micro_batch_size": 4, "betas": [0.9, 0.98]},
    "sft": {"epochs": 1, "log_every": 5},
}


def write_recipe(tmp_path: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_changes(**sections) -> dict:
    """A deep-ish copy of VALID with whole sections replaced."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    data.update(sections)
    return data


def recipe_error(path: Path, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


# --- valid recipes -----------------------------------------------------------------------------


def test_valid_recipe_loads_with_defaults(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, VALID))
    assert recipe.model.path == "models/tiny"
    assert recipe.data.train.path == "data/train.jsonl"
    assert recipe.data.train.format == "prompt_completion"
    assert recipe.trainer.lr == pytest.approx(1e-3)
    assert recipe.trainer.betas == (0.9, 0.98)
    assert recipe.sft.epochs == 1.0
    # Sections the recipe leaves out: required-free ones get defaults, stage ones stay None.
    assert recipe.cluster.address is None
    assert recipe.grpo is None and recipe.rewards is None


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, VALID))
    again = load_recipe(write_recipe(tmp_path, yaml.safe_load(recipe_to_yaml(recipe)), "resolved.yaml"))
    assert again == recipe


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    if "stages" in yaml.safe_load(path.read_text()):  # a pipeline recipe: every stage must load
        from rl_pipeline.pipelines.pipeline import load_plan

        plan = load_plan(path, "/tmp/run")
        assert plan.stages and all(stage.recipe.model.path for stage in plan.stages)
        return
    recipe = load_recipe(path)
    assert recipe.model.path


def test_pipeline_seed_reaches_every_stage_and_the_model_init_but_not_the_task():
    from rl_pipeline.pipelines.pipeline import load_plan

    default, seeded = load_plan(REPO / "recipes" / "demo.yaml", "/tmp/run"), load_plan(
        REPO / "recipes" / "demo.yaml", "/tmp/run", seed=7)
    assert {getattr(s.recipe, s.kind).seed for s in seeded.stages} == {7}
    assert seeded.prepare["tiny_model"]["seed"] == 7 and "seed" not in default.prepare["tiny_model"]
    assert seeded.prepare["task"] == default.prepare["task"], "the held-out problems must not change with the seed"


def test_require_names_missing_section(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, VALID))
    recipe.require("model", "data", "sft")
    with pytest.raises(RecipeError, match="section 'grpo' is required"):
        recipe.require("grpo")


# --- errors name the file and the dotted key path ------------------------------------------------


def test_unknown_key_names_path(tmp_path):
    data = with_changes(trainer={"lrr": 1e-3})
    message = recipe_error(write_recipe(tmp_path, data))
    assert str(tmp_path / "recipe.yaml") in message
    assert "trainer.lrr: unknown key" in message


def test_unknown_nested_key_names_path(tmp_path):
    data = with_changes(data={"train": {"path": "x.jsonl", "colum": "q"}})
    message = recipe_error(write_recipe(tmp_path, data))
    assert "data.train.colum: unknown key" in message


def test_wrong_type_names_path_and_value(tmp_path):
    data = with_changes(trainer={"lr": "fast"})
    message = recipe_error(write_recipe(tmp_path, data))
    assert "recipe.yaml" in message
    assert "trainer.lr" in message and "'fast'" in message


def test_wrong_literal_names_path(tmp_path):
    data = with_changes(model={"path": "m", "dtype": "float64"})
    assert "model.dtype" in recipe_error(write_recipe(tmp_path, data))


def test_missing_required_field_names_path(tmp_path):
    data = with_changes(data={"train": {"format": "prompt"}})
    message = recipe_error(write_recipe(tmp_path, data))
    assert "recipe.yaml" in message
    assert "data.train.path: required key is missing" in message


def test_missing_model_path_is_not_defaulted(tmp_path):
    data = with_changes(model={"dtype": "float32"})
    assert "model.path: required key is missing" in recipe_error(write_recipe(tmp_path, data))


def test_several_problems_are_all_reported(tmp_path):
    data = with_changes(trainer={"lr": "fast", "zero_stage": 7, "bogus": 1})
    message = recipe_error(write_recipe(tmp_path, data))
    for key in ("trainer.lr", "trainer.zero_stage", "trainer.bogus"):
        assert key in message


def test_cross_field_check(tmp_path):
    data = with_changes(trainer={"lr": 1e-4, "min_lr": 1e-3})
    assert "min_lr" in recipe_error(write_recipe(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path):
    assert "recipe file not found" in recipe_error(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: m}\ntrainer:\n  lr: [1\n")
    assert "not valid YAML" in recipe_error(bad)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    assert "mapping of sections" in recipe_error(not_mapping)


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_coerce_types(tmp_path):
    path = write_recipe(tmp_path, VALID)
    recipe = load_recipe(
        path,
        [
            "trainer.lr=1e-4",  # PyYAML reads 1e-4 as a string; the schema must still make it a float
            "sft.max_steps=5",
            "data.packing=true",
            "trainer.betas=[0.8, 0.9]",
            'rollout.stop=[</answer>, "\\n\\n"]',  # YAML double quotes: escapes work
            "model.dtype=bfloat16",
            "trainer.grad_clip=null",
        ],
    )
    assert isinstance(recipe.trainer.lr, float) and recipe.trainer.lr == pytest.approx(1e-4)
    assert isinstance(recipe.sft.max_steps, int) and recipe.sft.max_steps == 5
    assert recipe.data.packing is True
    assert recipe.trainer.betas == (0.8, 0.9)
    assert recipe.rollout.stop == ["</answer>", "\n\n"]  # also creates the missing section
    assert recipe.model.dtype == "bfloat16"
    assert recipe.trainer.grad_clip is None


def test_override_with_equals_in_value(tmp_path):
    # Values are YAML, so a string starting with '{' (a flow mapping in YAML) needs quotes.
    recipe = load_recipe(write_recipe(tmp_path, VALID), ["grpo.prompt_template='{prompt} a=b'"])
    assert recipe.grpo.prompt_template == "{prompt} a=b"


def test_override_wrong_type_names_key_and_overrides(tmp_path):
    message = recipe_error(write_recipe(tmp_path, VALID), ["sft.max_steps=many"])
    assert "sft.max_steps" in message and "'many'" in message
    assert "with overrides sft.max_steps=many" in message


def test_override_unknown_key(tmp_path):
    assert "trainer.lrr: unknown key" in recipe_error(write_recipe(tmp_path, VALID), ["trainer.lrr=1"])


def test_override_into_a_value_fails(tmp_path):
    message = recipe_error(write_recipe(tmp_path, VALID), ["trainer.lr.max=1"])
    assert "recipe.yaml" in message
    assert "'trainer.lr' is a value, not a section" in message


@pytest.mark.parametrize("text", ["trainer.lr", "trainer..lr=1", "=3"])
def test_malformed_override(tmp_path, text):
    message = recipe_error(write_recipe(tmp_path, VALID), [text])
    assert f"override '{text}'" in message


# --- the command line ----------------------------------------------------------------------------


def run_rlp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RLP), *args], cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"}
    )


def test_rlp_config_prints_resolved_yaml(tmp_path):
    write_recipe(tmp_path, VALID)
    result = run_rlp("config", "recipe.yaml", "trainer.lr=1e-4", "sft.max_steps=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["lr"] == pytest.approx(1e-4)
    assert printed["sft"]["max_steps"] == 5
    assert printed["trainer"]["zero_stage"] == 2  # defaults are spelled out
    assert printed["model"]["path"] == "models/tiny"


@pytest.mark.parametrize(
    ("recipe", "overrides", "expected"),
    [
        (with_changes(trainer={"lrr": 1}), [], "trainer.lrr: unknown key"),
        (VALID, ["trainer.lr=fast"], "trainer.lr"),
        (VALID, ["trainer.lr.max=1"], "is a value, not a section"),
        ("model: {path: m}\ntrainer:\n  lr: [1\n", [], "not valid YAML"),  # multi-line parser message
    ],
    ids=["unknown-key", "bad-override-type", "override-into-value", "bad-yaml"],
)
def test_rlp_config_errors_exit_2_with_one_line(tmp_path, recipe, overrides, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    result = run_rlp("config", "recipe.yaml", *overrides, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: recipe.yaml") and expected in lines[0]
