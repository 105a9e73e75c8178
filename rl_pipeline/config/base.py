"""The recipe's base pieces: the input errors every layer raises and the strict section model."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class InputError(ValueError):
    """Bad user input (recipe, dataset, model path) found before any actor starts."""


class RecipeError(InputError):
    """A recipe or override that cannot be used; the message names the file and key path."""


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _zero_is_off(value: object) -> object:
    return None if value == 0 and not isinstance(value, bool) else value


# A period in steps (`eval_every`, `save_every`): 0 or null turns it off, as users write it.
EveryNSteps = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_zero_is_off)]
