"""A fine-tuning job request as OpenAI's API takes it, resolved into the run's spec; and a run's state read as a job's.

Hyperparameters (OpenAI's name → the spec; "auto" or absent: the product's default, or the model's recipe's):

| OpenAI                      | spec                                                                        |
|-----------------------------|-----------------------------------------------------------------------------|
| n_epochs                    | train.epochs (replaces the recipe's max_steps)                              |
| batch_size                  | train.batch_size                                                            |
| learning_rate_multiplier    | train.lr = multiplier × the default learning rate of the job's spec         |
| beta (dpo)                  | objective.beta                                                              |
| seed (a job field)          | train.seed                                                                  |
| validation_file             | data.eval_source (none: every row trains, as at OpenAI: data.eval_split=0)  |
| reinforcement.grader        | objective.rewards: [grader] (sdk.objectives.rewards reads OpenAI graders)   |
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdk.api.config import CLOSED_PREFIXES, ApiConfig, ModelEntry
from sdk.api.errors import invalid
from sdk.api.objects import JobStatus
from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec

SHARED_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
FIELDS = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "hyperparameters", "method",
          "integrations"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # what an unmapped name may be: a Hub id
# (name, what it is, lowest, highest) of the values OpenAI takes; "auto" is always taken
RANGES = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-6, 100.0),
          "beta": (float, 1e-6, 2.0)}
RECIPE_SECTIONS = ("model", "method", "train", "resources", "distributed", "env", "secrets", "tracking")
SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# A run's state, as the job that started it reports it
JOB_STATUS: dict[str, JobStatus] = {
    "pending": "queued", "provisioning": "queued", "running": "running", "recovering": "running",
    "cancelling": "running", "lost": "failed", "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}


def objective_for(method_type: str) -> Any:
    from sdk.objectives import OBJECTIVES

    for objective in OBJECTIVES.values():
        if objective.openai_method == method_type:
            return objective
    known = sorted(o.openai_method for o in OBJECTIVES.values() if o.openai_method)
    raise invalid(f"method.type {method_type!r}: use one of {', '.join(known)}", param="method.type")


def check_request(body: Any, config: ApiConfig) -> None:
    """What OpenAI refuses at create, refused the same way: unknown arguments, values out of range, and here also
    graders that would run a key holder's code or send the API machine's keys (unless the operator allows them)."""
    if not isinstance(body, dict):
        raise invalid("the request body is a JSON object", param=None)
    for name in body:
        if name not in FIELDS:
            raise invalid(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    if body.get("integrations"):
        raise invalid("integrations: not supported here; name a tracker in the model's settings (tracking: in the "
                      "API config's set:, see docs/tracking.md)", param="integrations")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2147483647):
        raise invalid("seed: an integer from 0 to 2147483647", param="seed")
    if body.get("hyperparameters") is not None and not isinstance(body["hyperparameters"], dict):
        raise invalid("hyperparameters: an object (n_epochs, batch_size, learning_rate_multiplier)",
                      param="hyperparameters")
    method = body.get("method")
    grader = method.get("reinforcement", {}).get("grader") if isinstance(method, dict) and isinstance(
        method.get("reinforcement"), dict) else None
    if grader is not None:
        check_grader(grader, config, "method.reinforcement.grader")


def check_grader(grader: Any, config: ApiConfig, where: str) -> None:
    if isinstance(grader, list):
        for index, item in enumerate(grader):
            check_grader(item, config, f"{where}[{index}]")
        return
    if not isinstance(grader, dict):
        return  # the objective's own check names what is wrong with it
    if grader.get("type") in ("python", "function") and not config.allow_code_graders:
        raise invalid(f"{where}: a {grader['type']} grader runs the request's code on the API's machine; this API does "
                      "not take them (allow_code_graders: true in its config)", param=where)
    key = grader.get("api_key_env")
    if key is not None and key not in config.grader_keys:
        raise invalid(f"{where}.api_key_env: {key!r} is not one of the keys this API lets graders send "
                      "(grader_keys: in its config)", param=f"{where}.api_key_env")
    nested = grader.get("graders")  # a multi grader's, by name
    for name, item in (nested.items() if isinstance(nested, dict) else enumerate(nested or [])):
        check_grader(item, config, f"{where}.graders.{name}")


def check_value(name: str, value: Any, param: str) -> None:
    if value == "auto" or name not in RANGES:
        return
    kind, low, high = RANGES[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind is int and not isinstance(value, int)) or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise invalid(f"{param}: {what} from {low:g} to {high:g}, or 'auto'", param=param)


def read_method(body: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(objective, hyperparameters, the method's body) from `method` or the legacy top-level `hyperparameters`."""
    legacy = body.get("hyperparameters") or {}
    method = body.get("method")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": legacy}}
    elif not isinstance(method, dict) or not isinstance(method.get("type"), str):
        raise invalid("method: an object with a type (supervised, dpo, reinforcement)", param="method")
    objective = objective_for(method["type"])
    inner = method.get(method["type"]) or {}
    if not isinstance(inner, dict):
        raise invalid(f"method.{method['type']}: an object", param=f"method.{method['type']}")
    given = inner.get("hyperparameters") or {}
    if not isinstance(given, dict):
        raise invalid(f"method.{method['type']}.hyperparameters: an object",
                      param=f"method.{method['type']}.hyperparameters")
    hyperparameters = {**legacy, **given}
    allowed = (*SHARED_HYPERPARAMETERS, *objective.openai_hyperparameters)
    for name, value in hyperparameters.items():
        param = f"method.{method['type']}.hyperparameters.{name}"
        check_value(name, value, param)
        if name not in allowed:
            raise invalid(f"{param}: not a hyperparameter of {method['type']} (use {', '.join(allowed)})", param=param)
        auto_only = name in objective.openai_hyperparameters and objective.openai_hyperparameters[name] is None
        if value != "auto" and auto_only:
            raise invalid(f"{param}: only 'auto' here (no counterpart in an open-model trainer)", param=param)
    if inner.get("response_format"):
        raise invalid("response_format: structured outputs in reinforcement jobs are not supported",
                      param=f"method.{method['type']}.response_format")
    return objective, hyperparameters, inner


def model_entry(config: ApiConfig, name: Any) -> ModelEntry:
    """The operator's entry for a model name, an open model taken as given, or an OpenAI-shaped 400."""
    if not isinstance(name, str) or not name:
        raise invalid("model: the model to fine-tune", param="model")
    if name in config.models:
        return config.models[name]
    where = f"under models: in {config.source}" if config.source else "in an API config (finetune api --config FILE)"
    if name.startswith("ft:"):
        raise invalid(f"model {name!r}: training on top of a fine-tuned model is not supported; start from its base",
                      param="model", code="model_not_available")
    if name.startswith(CLOSED_PREFIXES):
        raise invalid(f"model {name!r} is OpenAI's and is not mapped to an open model; map it {where}, e.g. "
                      f"'{name}: {{model: Qwen/Qwen2.5-7B-Instruct}}'", param="model", code="model_not_available")
    if not config.open_models or not HUB_ID.match(name) or ".." in name:
        raise invalid(f"model {name!r}: not one of the models this API trains ({', '.join(config.models) or 'none'}); "
                      f"a Hub model id (org/name), or add it {where}", param="model", code="model_not_available")
    return ModelEntry()


def _recipe_part(entry: ModelEntry) -> dict[str, Any]:
    if not entry.recipe:
        return {}
    from sdk.core.recipes import load_recipe

    data = load_recipe(entry.recipe).model_dump(mode="json", exclude_unset=True)
    return {k: v for k, v in data.items() if k in RECIPE_SECTIONS}


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the value reads back as written


def build_spec(config: ApiConfig, body: dict[str, Any], *, data: str, eval_data: str | None
               ) -> tuple[FineTuneSpec, ModelEntry, dict[str, Any]]:
    """The run's spec for a job request, and the hyperparameters as they were resolved."""
    from sdk.core.recipes import apply_overrides
    from sdk.core.spec import parse_spec

    name = body.get("model")
    entry = model_entry(config, name)
    objective, hyperparameters, inner = read_method(body)
    sets = [_override("model", entry.model or name), _override("objective", {"name": objective.name})]
    sets += [_override("method.name", entry.method)] if entry.method else []
    sets += [_override("resources.accelerators", entry.accelerators)] if entry.accelerators else []
    sets += [_override("data", {"source": data, **({"eval_source": eval_data} if eval_data else {"eval_split": 0})})]
    sets += [_override("output", config.store)]
    sets += [_override(f"objective.{k}", v) for k, v in objective.openai_settings(inner).items()]
    sets += entry.set  # the operator's defaults for this model; the request's own settings below win over them
    for hp, field in objective.openai_hyperparameters.items():
        if field and hyperparameters.get(hp, "auto") != "auto":
            sets.append(_override(f"objective.{field}", hyperparameters[hp]))
    if hyperparameters.get("n_epochs", "auto") != "auto":
        sets += [_override("train.max_steps", None), _override("train.epochs", hyperparameters["n_epochs"])]
    if hyperparameters.get("batch_size", "auto") != "auto":
        sets.append(_override("train.batch_size", hyperparameters["batch_size"]))
    if body.get("seed") is not None:
        sets.append(_override("train.seed", body["seed"]))
    try:
        data_dict, _ = apply_overrides(_recipe_part(entry), sets)
        spec = parse_spec(data_dict)
        multiplier = hyperparameters.get("learning_rate_multiplier", "auto")
        if multiplier != "auto":
            if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or multiplier <= 0:
                raise invalid("learning_rate_multiplier: a number above 0", param="hyperparameters")
            data_dict, _ = apply_overrides(data_dict, [_override("train.lr", spec.train.lr * multiplier)])
            spec = parse_spec(data_dict)
    except SpecError as exc:
        text = " ".join(str(exc).replace("invalid spec:", "").split())
        raise invalid(text, param=_param_of(text), code="invalid_job") from None
    epochs = spec.train.epochs
    resolved = {"n_epochs": int(epochs) if epochs is not None and epochs == int(epochs) else epochs or "auto",
                "batch_size": spec.train.batch_size,
                "learning_rate_multiplier": hyperparameters.get("learning_rate_multiplier", "auto")}
    resolved = {k: 1.0 if v == "auto" and k == "learning_rate_multiplier" else v for k, v in resolved.items()}
    for hp, field in objective.openai_hyperparameters.items():  # beta as the run takes it
        if field and hasattr(spec.objective, field):
            resolved[hp] = getattr(spec.objective, field)
    return spec, entry, {**hyperparameters, **resolved}


def _param_of(message: str) -> str:
    """The request parameter a spec error is about (its first field)."""
    field = message.split(":", 1)[0].strip()
    return {"train.epochs": "hyperparameters.n_epochs", "train.batch_size": "hyperparameters.batch_size",
            "train.lr": "hyperparameters.learning_rate_multiplier", "train.seed": "seed",
            "objective.beta": "hyperparameters.beta"}.get(field, "method" if field.startswith("objective") else "model")


def check_suffix(suffix: Any) -> str | None:
    if suffix is None:
        return None
    if not isinstance(suffix, str) or not SUFFIX.match(suffix):
        raise invalid("suffix: up to 64 characters of letters, digits, '.', '_' and '-'", param="suffix")
    return suffix


def check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()):
        raise invalid("metadata: up to 16 string pairs (keys ≤ 64 characters, values ≤ 512)", param="metadata")
    return metadata
