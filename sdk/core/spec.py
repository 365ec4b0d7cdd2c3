"""FineTuneSpec: the one contract between client, backend and node.

Every part is a pydantic v2 model with extra="forbid", so a misspelt key is an error (with a
did-you-mean, see `sdk.core.recipes`) rather than a silently ignored setting. Shorthands keep the
common case short: `model="Qwen/Qwen2.5-0.5B"`, `method="qlora"`, `data="train.jsonl"`,
`distributed="deepspeed"` all expand to their full objects.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from sdk.core.errors import SpecError
from sdk.core.methods import REGISTRY, LoraSpec, method_named
from sdk.core.parts import SpecPart
from sdk.core.sections import (  # noqa: F401  (imported from here by every caller)
    FILE_TYPES,
    DataSpec,
    DistributedSpec,
    EvalSpec,
    FieldMap,
    MlflowTracking,
    ModelSpec,
    Optimizer,
    ResourcesSpec,
    RowFormatName,
    TensorBoardTracking,
    TrackerSpec,
    TrainSpec,
    WandbTracking,
)
from sdk.objectives import OBJECTIVES, data_refusal, mixture_refusal, objective_of

DEFAULT_OUTPUT = "~/.finetune/runs"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names of credentials (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD...): secrets, never env.
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE)  # not TOKENIZERS_*
_PROCESS_ENV = frozenset({"PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "HOME", "SHELL", "BASH_ENV", "ENV"})
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

# -------------------------------------------------------------------------------------------- method

# One settings model per registered method (sdk.core.methods), told apart by `name`.
MethodSpec = Annotated[Union[tuple(m.spec for m in REGISTRY.values())], Field(discriminator="name")]  # type: ignore[valid-type]
# One settings model per registered objective (sdk.objectives, plugins included), told apart by `name`.
ObjectiveSpec = Annotated[Union[tuple(o.settings for o in OBJECTIVES.values())],  # type: ignore[valid-type]
                          Field(discriminator="name")]


# ----------------------------------------------------------------------------------------- the spec

class FineTuneSpec(SpecPart):
    """Everything a run needs. Validated once, here; backends and the node trust it."""

    name: str | None = Field(None, description="run name; the run id is derived from it")
    description: str | None = None
    model: ModelSpec = Field(description="a Hub model id, a local model directory, a .gguf file, pkg://<package>/<file> or tiny:<arch>")
    method: MethodSpec = Field(default_factory=LoraSpec)
    objective: ObjectiveSpec = Field(default_factory=lambda: OBJECTIVES["sft"].settings(),
                                     description="what the run optimizes, and its settings: sft, dpo, kto, orpo, "
                                                 "simpo, grpo (`objective: dpo` for the defaults)")
    data: DataSpec = Field(description="a local file, an s3:// URI, a Hub dataset id or builtin:<name>")
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    output: str = Field(DEFAULT_OUTPUT, description="store: s3://bucket/prefix or a local directory")
    secrets: list[str] = Field(default_factory=list, description="names of env vars forwarded to the node")
    env: dict[str, str] = Field(default_factory=dict, description="plain (non-secret) env vars for the node")
    tracking: list[TrackerSpec] = Field(
        default_factory=list, description="experiment trackers rank 0 logs to: mlflow, wandb, tensorboard "
                                          "(`tracking: mlflow` for the defaults)")

    @field_validator("method", mode="before")
    @classmethod
    def _method_from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _objective_train_defaults(cls, value: Any) -> Any:
        """The train settings an objective's own settings imply (sdk.objectives: train_defaults), unless set."""
        if not isinstance(value, dict):
            return value
        objective = value.get("objective", "sft")
        objective = {"name": objective} if isinstance(objective, str) else objective
        registered = OBJECTIVES.get(str(objective.get("name"))) if isinstance(objective, dict) else None
        train = value.get("train") or {}
        if registered is None or not isinstance(train, dict):
            return value
        defaults = registered.train_defaults(objective)
        return {**value, "train": {**defaults, **train}} if set(defaults) - set(train) else value

    @model_validator(mode="before")
    @classmethod
    def _train_dpo_beta(cls, value: Any) -> Any:
        """Specs written before objectives had sections kept β in train.dpo_beta (spec.json of older runs)."""
        if not (isinstance(value, dict) and isinstance(value.get("train"), dict) and "dpo_beta" in value["train"]):
            return value
        train = dict(value["train"])
        beta = train.pop("dpo_beta")
        objective = value.get("objective", "sft")
        objective = {"name": objective} if isinstance(objective, str) else dict(objective)
        settings = OBJECTIVES.get(str(objective.get("name")))
        if settings is not None and "beta" in settings.settings.model_fields:  # the preference objectives' β
            objective.setdefault("beta", beta)
        return {**value, "train": train, "objective": objective}

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _RUN_NAME.match(value):
            raise ValueError("use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if sep:
            if scheme != "s3":
                raise ValueError(f"unsupported store scheme {scheme}://; use s3://bucket/prefix or a local directory")
            if not rest.split("/")[0]:
                raise ValueError("s3:// URI needs a bucket: s3://bucket/prefix")
            if any(part in (".", "..") for part in rest.split("/")[1:]):
                raise ValueError("'.' and '..' are not folders in a bucket: write the prefix out, s3://bucket/a/b")
        elif not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_shorthand(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [] if value is None else [value]
        return [{"name": item} if isinstance(item, str) else item for item in items]

    @field_validator("tracking")
    @classmethod
    def _one_of_each_tracker(cls, value: list[Any]) -> list[Any]:
        names = [t.name for t in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed twice")
        for tracker in value:
            for env_name in (getattr(tracker, "uri_env", None), getattr(tracker, "key_env", None)):
                if env_name is not None and not _ENV_NAME.match(env_name):
                    raise ValueError(f"{env_name!r} is not an environment variable name (name the variable, not its value)")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        # `--set env.HF_HUB_OFFLINE=1` parses as an int; an environment only holds strings.
        if isinstance(value, dict):
            return {k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, (int, float)) else v
                    for k, v in value.items()}
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name (secrets lists names, not values)")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneSpec:
        method, objective = method_named(self.method.name), objective_of(self)
        if method.soft_prompt and not objective.soft_prompts:
            trains = ", ".join(sorted(o.name for o in OBJECTIVES.values() if o.soft_prompts))
            raise _CrossFieldError("method", f"{method.name} learns soft prompts, which objective {objective.name} cannot "
                                   f"train; use objective {trains}, or a method that trains weights (lora, qlora …)")
        mixed = mixture_refusal([(p.field, p.data.format) for p in self.data.parts() if p.data.format != "auto"])
        if mixed:
            raise _CrossFieldError("data.sources", mixed)
        for part in self.data.parts():
            refusal = data_refusal(objective.name, part.data.format, packing=self.data.packing)
            if refusal:
                where = refusal[0] if part.field == "data.source" else f"{part.field}.format"
                raise _CrossFieldError(where, refusal[1])
        for field_name, message in objective.check(self):
            raise _CrossFieldError(field_name, message)
        for key in objective.secrets(self.objective):  # forwarded to the node like any credential
            if key in self.env:
                raise _CrossFieldError("env", f"{key} holds a grader's key (api_key_env): a key never goes in the spec")
            if key not in self.secrets:
                self.secrets.append(key)
        if self.data.packing and method.virtual_tokens(self.method):
            raise _CrossFieldError("data.packing", f"{method.name} prepends virtual tokens to every sequence, "
                                   "so sequences cannot be packed into one row; set data.packing: false")
        if self.train.gradient_checkpointing and not method.gradient_checkpointing:  # only an explicit ask; the default follows the method
            raise _CrossFieldError("train.gradient_checkpointing", f"{method.name} does not support gradient checkpointing")
        if self.data.eval_source and self.data.eval_split:
            raise _CrossFieldError("data.eval_split", "set eval_source or eval_split, not both")
        if self.train.evals_per_epoch and not self.data.eval_source and not any(
                p.data.holdout_fraction for p in self.data.parts()):
            raise _CrossFieldError("train.evals_per_epoch", "nothing is held out to evaluate on (data.eval_split 0 and "
                                   "no data.eval_source)")
        overlap = set(self.secrets) & set(self.env)
        if overlap:
            raise _CrossFieldError("env", f"{sorted(overlap)} listed as secrets: secret values never go in the spec")
        judge_key = self.eval.judge.api_key_env if self.eval.judge else None
        if judge_key and judge_key in self.env:
            raise _CrossFieldError("env", f"{judge_key} is eval.judge.api_key_env: a key never goes in the spec")
        if judge_key and judge_key not in self.secrets:  # forwarded to the node like any credential
            self.secrets.append(judge_key)
        deepspeed = self.distributed.strategy == "deepspeed"
        if deepspeed and method.trains_all_weights and self.train.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            raise _CrossFieldError("train.optimizer", "8-bit bitsandbytes optimizers do not work under DeepSpeed; use adamw_torch")
        quant = method.quantization(self.method)
        zero3 = deepspeed and self.distributed.zero_stage == 3
        if quant is not None and quant.bits == 8 and (zero3 or self.distributed.strategy == "fsdp"):
            raise _CrossFieldError("method.quant_type", "bitsandbytes' 8-bit weights (Int8Params: int8 with a scale per "
                                   f"row) cannot be partitioned: {'ZeRO-3' if zero3 else 'FSDP'} flattens parameters into "
                                   "one float dtype and drops their scales; use quant_type nf4 (a 4-bit base shards under "
                                   "ZeRO-3), or DDP / zero_stage 2 with int8")
        if self.distributed.strategy == "fsdp" and method.quantized_base:
            raise _CrossFieldError("distributed.strategy", f"FSDP2 corrupts 4-bit weights in the forward pass "
                                   f"(bitsandbytes#1945: packed NF4 bytes read as NaNs and rewritten), so {method.name} "
                                   "under fsdp would train on a wrong model; use strategy: deepspeed with zero_stage: 3")
        if self.train.precision == "fp16" and getattr(self.method, "compute_dtype", None) == "bfloat16":
            raise _CrossFieldError("method.compute_dtype", "bfloat16 compute with fp16 precision; pick one 16-bit type")
        return self

    def __init__(self, /, **data: Any) -> None:
        """`FineTuneSpec(...)` from Python raises SpecError (a ValueError) with one short line per field,
        the same lines the CLI prints, instead of pydantic's raw report."""
        if _RAW_ERRORS.get():  # parse_spec wants pydantic's error to locate it in a file
            super().__init__(**data)
            return
        try:
            super().__init__(**data)
        except ValidationError as exc:
            from sdk.core.validation import format_errors

            raise SpecError(format_errors(exc)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> FineTuneSpec:  # type: ignore[override]
        return parse_spec(obj)

    # -- conveniences used by backends and the CLI

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> FineTuneSpec:
        return parse_spec(text, source=source, json=True)


def check_new_spec(spec: FineTuneSpec) -> None:
    """Rules for a spec about to run, not for one read back from a run folder (a run submitted before a rule
    existed stays readable): no credential in `env` (its values land in spec.json and --dry-run output), no
    variable that changes how every process on the node starts; a regex target_modules that matches a module of
    the model (where its files are readable here)."""
    from sdk.core.targets import check_target_modules

    check_target_modules(spec)
    for name in spec.env:
        if _SECRET_NAME.search(name):
            raise SpecError(f"env: {name} looks like a credential: env values are written to spec.json and shown by "
                            f"--dry-run; list the name under secrets: [{name}] and set its value in your environment")
        if name in _PROCESS_ENV or name.startswith(("LD_", "DYLD_")):
            raise SpecError(f"env: {name} changes how every process on the node starts; finetune sets the node's "
                            "environment itself (resources.image for a different one)")


class _CrossFieldError(ValueError):
    """A rule across fields; `field` names the one the user should change."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


# While set, FineTuneSpec's constructor lets pydantic's ValidationError through (to be located and formatted).
_RAW_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar("finetune_raw_spec_errors", default=False)


def parse_spec(
    data: Any, *, source: str | None = None, json: bool = False, locate: Callable[[tuple], str | None] | None = None
) -> FineTuneSpec:
    """Validate a dict (or JSON text) into a spec; pydantic's errors become one SpecError whose lines
    name the field path, and file:line when `locate` maps a path to where it was written."""
    from sdk.core.validation import format_errors

    validator = FineTuneSpec.__pydantic_validator__
    token = _RAW_ERRORS.set(True)
    try:
        return validator.validate_json(data) if json else validator.validate_python(data)
    except ValidationError as exc:
        raise SpecError(format_errors(exc, locate=locate), source=source) from None
    finally:
        _RAW_ERRORS.reset(token)
