"""The recipe's base pieces: the input errors every layer raises and the strict section model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class InputError(ValueError):
    """Bad user input (recipe, dataset, model path) found before any actor starts."""


class RecipeError(InputError):
    """A recipe or override that cannot be used; the message names the file and key path."""


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
