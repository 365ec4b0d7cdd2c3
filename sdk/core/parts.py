"""The base of every spec part: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class SpecPart(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    if "@" in value.split("://", 1)[1].split("/", 1)[0]:  # spec.json and error lines would carry the secret
        raise ValueError("holds credentials (user:key@host): name the key's environment variable in api_key_env instead")
    return value


# An OpenAI-compatible endpoint's base URL (eval.judge, a score_model grader).
EndpointUrl = Annotated[str, AfterValidator(_http_url)]
