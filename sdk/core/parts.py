"""The base of every spec part: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SpecPart(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
