"""`finetune api --config FILE`: where jobs run and land, and which open model answers each name users' code holds.

```yaml
store: s3://bucket/finetune-api      # jobs' run folders, uploaded files and the API's state (default: ./runs)
backend: local                       # or skypilot (a model's entry may choose its own)
open_models: true                    # any other Hub model id trains as given (false: only the names below)
max_local_jobs: 1                    # local jobs training at once; more wait in `queued`
models:
  gpt-4o-mini-2024-07-18:            # the name in the users' code
    model: Qwen/Qwen2.5-7B-Instruct  # what trains and answers under it
    method: qlora
    accelerators: "H100:1"
    set: [train.max_steps=200]       # any recipe field, as `finetune launch --set` takes it
  Qwen/Qwen2.5-0.5B:
    recipe: recipes/qwen05b-agnews.yaml   # a job starts from this recipe's settings, its data replaced
serve: {dtype: float32, max_lora_rank: 64, max_loras: 4}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdk.core.errors import SpecError
from sdk.core.spec import DEFAULT_OUTPUT

CLOSED_PREFIXES = ("gpt-", "ft:gpt-", "o1", "o3", "o4", "davinci", "babbage")  # OpenAI's own models: mapped or refused


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="what trains under this name: a Hub id, a local folder, pkg://…; "
                                                "default: the name itself")
    recipe: str | None = Field(None, description="a recipe a job starts from (its data replaced by the job's files)")
    method: str | None = Field(None, description="lora, qlora, dora, … (default: the recipe's, else lora)")
    backend: Literal["local", "skypilot"] | None = None
    accelerators: str | None = Field(None, description="SkyPilot accelerators, e.g. H100:1")
    set: list[str] = Field(default_factory=list, description="recipe fields, as --set takes them")


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=64, description="default: the model's own context length")
    max_lora_rank: int = Field(64, ge=1, description="the largest adapter rank a job may train to stay servable")
    max_loras: int = Field(4, ge=1, description="adapters in one batch")
    start_timeout: float = Field(900, gt=0)


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: str = DEFAULT_OUTPUT
    backend: Literal["local", "skypilot"] = "local"
    open_models: bool = True
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    max_local_jobs: int = Field(1, ge=1, description="local jobs training at once (more wait, queued)")
    # Graders that run code or send a key from the API's machine: code from any key holder, so off unless allowed
    allow_code_graders: bool = Field(False, description="accept python graders and reward functions (file.py:f)")
    grader_keys: list[str] = Field(default_factory=list, description="env vars a score_model grader may send as its "
                                                                     "key (api_key_env)")
    serve: ServeSettings = Field(default_factory=ServeSettings)
    source: str | None = Field(None, exclude=True)  # the file it was read from (errors name it)


def load_config(path: str | None, *, store: str | None = None, backend: str | None = None) -> ApiConfig:
    """The config file (or the defaults), with --store / --backend taking precedence."""
    from sdk.core.recipes import read_yaml_mapping

    data = read_yaml_mapping(path, what="the API config") if path else {}
    data = {**data, **({"store": store} if store else {}), **({"backend": backend} if backend else {})}
    try:
        config = ApiConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{path or 'api config'}: {field}: {first['msg']}") from None
    if "://" not in config.store:
        config.store = str(Path(config.store).expanduser().resolve())
    config.source = str(Path(path).expanduser().resolve()) if path else None
    return config
