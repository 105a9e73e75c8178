"""The recipe schema: typed pydantic sections, YAML loading and `a.b.c=value` overrides.

A recipe is one YAML file with sections (model, data, trainer, sft, grpo, rollout, rewards,
distill, rm, tools, cluster, tracking, checkpoint). Every section is strict: an unknown key, a wrong type
or a missing required field raises `RecipeError` naming the file and the dotted key path,
before any actor starts. Required things (the model path, the training data) have no default.

The sections live in base.py (errors, Section), sections.py (what is trained and how) and
cluster.py (where it runs, tracking, checkpoints); this module assembles the Recipe and loads it.
Everything is importable from `rl_pipeline.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from rl_pipeline.config.base import InputError, RecipeError, Section
from rl_pipeline.config.cluster import (
    CheckpointConfig,
    ClusterConfig,
    NodePinning,
    PlacementConfig,
    ReferencePlacement,
    RewardPlacement,
    RolePlacement,
    Strategy,
    TrackingConfig,
)
from rl_pipeline.config.sections import (
    AlgorithmConfig,
    DataConfig,
    DatasetConfig,
    DistillConfig,
    GRPOConfig,
    LoraConfig,
    ModelConfig,
    PreferencePairsConfig,
    RewardFunctionSpec,
    RewardsConfig,
    RMConfig,
    RolloutConfig,
    SFTConfig,
    TeacherConfig,
    ToolsConfig,
    ToolSpec,
    TrainerConfig,
)

__all__ = [
    "AlgorithmConfig", "CheckpointConfig", "ClusterConfig", "DataConfig", "DatasetConfig", "DistillConfig",
    "GRPOConfig", "InputError",
    "LoraConfig", "ModelConfig", "NodePinning", "PlacementConfig", "PreferencePairsConfig", "RMConfig", "Recipe",
    "RecipeError",
    "ReferencePlacement", "RewardFunctionSpec", "RewardPlacement", "RewardsConfig", "RolePlacement", "RolloutConfig",
    "SFTConfig", "Section", "Strategy", "TeacherConfig", "ToolSpec", "ToolsConfig", "TrackingConfig", "TrainerConfig",
    "apply_override", "load_recipe", "parse_recipe", "recipe_to_yaml",
]


class Recipe(Section):
    name: str = "run"
    output_dir: str = Field("runs", description="run directories are created under it")
    model: ModelConfig
    data: DataConfig | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    sft: SFTConfig | None = None
    grpo: GRPOConfig | None = None
    rollout: RolloutConfig | None = None
    rewards: RewardsConfig | None = None
    distill: DistillConfig | None = None
    rm: RMConfig | None = None
    tools: ToolsConfig | None = None
    teacher: TeacherConfig | None = Field(None, description="on-policy distillation teacher (a grpo run)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="before")
    @classmethod
    def _teacher_means_on_policy_distillation(cls, data: Any) -> Any:
        """A `teacher:` section with no grpo.algorithm named selects on_policy_distill (as before the
        algorithm registry existed)."""
        if isinstance(data, dict) and data.get("teacher") is not None and isinstance(data.get("grpo"), dict) \
                and "algorithm" not in data["grpo"]:
            return {**data, "grpo": {**data["grpo"], "algorithm": {"name": "on_policy_distill"}}}
        return data

    @model_validator(mode="after")
    def _teacher_matches_algorithm(self) -> "Recipe":
        if self.grpo is None:
            return self
        from rl_pipeline.algorithms import resolve

        needs = resolve(self.grpo.algorithm.name).needs_teacher
        if needs and self.teacher is None:
            raise ValueError(f"grpo.algorithm.name: {self.grpo.algorithm.name} needs a teacher: section "
                             "(teacher.model.path: the model whose per-token logprobs teach)")
        if self.teacher is not None and not needs:
            raise ValueError(f"teacher: the section is used by on_policy_distill only; grpo.algorithm.name is "
                             f"{self.grpo.algorithm.name}: remove the teacher section or that name")
        return self

    def require(self, *sections: str, source: str = "recipe") -> None:
        """Fail with the section name when a stage needs a section the recipe lacks."""
        for section in sections:
            if getattr(self, section) is None:
                raise RecipeError(f"{source}: section '{section}' is required for this command but missing")


def _format_validation_error(source: str, err: ValidationError) -> str:
    problems = []
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        kind = item["type"]
        if kind == "extra_forbidden":
            problems.append(f"{path}: unknown key")
        elif kind == "missing":
            problems.append(f"{path}: required key is missing")
        else:
            problems.append(f"{path}: {item['msg']} (got {item.get('input')!r})")
    return f"{source}: " + "; ".join(problems)


def _parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` and parse the value as YAML, so `3`, `1e-4`, `true`, `[a, b]` get types."""
    if "=" not in text:
        raise RecipeError(f"override '{text}': expected KEY=VALUE, e.g. trainer.lr=1e-4")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise RecipeError(f"override '{text}': empty key segment in '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return keys, value


def apply_override(data: dict, text: str) -> None:
    """Set the dotted key of `text` in the raw recipe dict (creating sections as needed)."""
    keys, value = _parse_override(text)
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            path = ".".join(keys[: depth + 1])
            raise RecipeError(f"override '{text}': '{path}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    """Validate a raw recipe dict; errors name `source` and the dotted key path."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(source, err)) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply `a.b.c=value` overrides (YAML-typed), and validate it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    for text in overrides:
        try:
            apply_override(data, text)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None
    source = f"{path}" + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return parse_recipe(data, source)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default spelled out), as a run directory stores it."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
