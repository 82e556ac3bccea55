"""The base class of every config section (recipe sections and the per-module configs they embed).

It lives in its own tiny module so that modules such as ``tuneforge.data.clean`` can define their
own typed section next to the code that uses it (PEFT's config/layer split) without importing
``tuneforge.recipe``, which in turn imports them to assemble the recipe.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
