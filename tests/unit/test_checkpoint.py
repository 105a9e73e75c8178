"""RunDir (rl_pipeline.checkpoint) without Ray: an interrupted save leaves nothing half-written,
a resume removes saves a kill left behind, and a resume that would change the learning-rate
schedule or the updates per step is refused naming the keys."""

from __future__ import annotations

import pytest
import yaml

from rl_pipeline.checkpoint import RunDir
from rl_pipeline.config import InputError, parse_recipe


def recipe(tmp_path, **grpo):
    return parse_recipe({"name": "ckpt", "output_dir": str(tmp_path), "model": {"path": "m"},
                         "trainer": {"lr": 1e-4, "min_lr": 0.0, "schedule": "linear"},
                         "grpo": {"steps": 10, **grpo}})


def test_ctrl_c_during_a_save_removes_its_temporary_folder(tmp_path):
    run = RunDir.open(recipe(tmp_path), tmp_path / "run", resume=False)
    run.save(2, lambda folder: None, {"data_position": 8})

    def interrupted(folder: str) -> None:  # the fault: Ctrl-C while the ranks write their part
        (tmp_path / "run" / "checkpoints" / ".step_00000004.tmp" / "rank0.pt").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.save(4, interrupted, {"data_position": 16})
    assert not list((tmp_path / "run").rglob("*.tmp")), "an interrupted save left its folder behind"
    assert run.latest().step == 2  # the previous checkpoint is still the one to resume from


def test_resume_removes_saves_that_a_kill_left_behind(tmp_path):
    run = RunDir.open(recipe(tmp_path), tmp_path / "run", resume=False)
    run.save(2, lambda folder: None, {"data_position": 8})
    left = tmp_path / "run" / "checkpoints" / ".step_00000004.tmp"
    left.mkdir()  # what SIGKILL mid-save leaves: no cleanup code ran
    (left / "rank0.pt").write_bytes(b"half")
    resumed = RunDir.open(recipe(tmp_path), tmp_path / "run", resume=True)
    assert not left.exists() and resumed.latest().step == 2


@pytest.mark.parametrize("section, key, value", [
    ("trainer", "lr", 3e-4), ("trainer", "min_lr", 1e-5), ("trainer", "warmup_steps", 5),
    ("trainer", "schedule", "cosine"), ("grpo", "inner_epochs", 2), ("grpo", "mini_batches", 2),
    ("grpo", "steps", 20),
])
def test_resume_that_changes_the_schedule_or_the_updates_is_refused_naming_the_key(tmp_path, section, key, value):
    RunDir.open(recipe(tmp_path), tmp_path / "run", resume=False)
    changed = recipe(tmp_path).model_dump(mode="json")
    changed[section][key] = value
    with pytest.raises(InputError, match=f"{section}.{key}: "):
        RunDir.open(parse_recipe(changed), tmp_path / "run", resume=True)
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())[section][key] != value
