"""A grid of values over spec fields (`--grid train.lr=1e-4,3e-4`) and the trial specs it expands to,
each checked as a spec with the grid value's origin in errors."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec

# ---------------------------------------------------------------------------------------------- grid


def split_values(text: str) -> list[str]:
    """'1e-4,3e-4' -> ['1e-4', '3e-4']; commas inside [] or {} belong to the value ('{name: lora, r: 8},{name: ia3}')."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`--grid key=v1,v2` options into {key: [values]}; each value is read as YAML, like `--set`."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError(f"--grid {text}: write KEY=V1,V2 with a dotted spec key, e.g. train.lr=1e-4,3e-4")
        values = []
        for part in split_values(raw):
            if not part:
                raise SpecError(f"--grid {text}: empty value")
            try:
                values.append(_number(yaml.safe_load(part)))
            except yaml.YAMLError:
                values.append(part)
        if key in grid:
            raise SpecError(f"--grid {key}: given twice; list every value in one --grid")
        grid[key] = values
    return grid


def _number(value: Any) -> Any:
    """YAML 1.1 reads '1e-4' as a string; a grid of learning rates means numbers."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _slug(key: str, value: Any) -> str:
    short = key.rsplit(".", 1)[-1]
    text = value.get("name", json.dumps(value)) if isinstance(value, dict) else f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{short}_{text}").strip("_.-")


def trial_specs(spec: FineTuneSpec, grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict[str, Any], FineTuneSpec]]:
    """Every combination of the grid applied to the spec, each validated: a key that is not a spec field
    or a value of the wrong type fails here, before anything launches, naming the field."""
    from sdk.core.recipes import apply_overrides
    from sdk.core.spec import check_new_spec, parse_spec

    if not grid:
        raise SpecError("--grid: give at least one KEY=V1,V2")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise SpecError(f"--grid {key}: give a non-empty list of values")
    base = spec.model_dump(mode="json")
    base_name = spec.name or "sweep"
    trials = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        data, origin = apply_overrides(base, [])
        for key, value in values.items():
            data, more = _set(data, key, value)
            origin.update(more)
        name = "-".join([base_name, *(_slug(k, v) for k, v in values.items())])[:40].rstrip("._-")
        data["name"] = name
        trial = parse_spec(data, locate=lambda path, origin=origin: _grid_origin(path, origin))
        check_new_spec(trial)  # each trial is a run about to start
        trials.append((values, trial))
    return trials


def _set(data: dict[str, Any], key: str, value: Any) -> tuple[dict[str, Any], dict[tuple, str]]:
    from sdk.core.recipes import apply_overrides

    # apply_overrides reads text; hand it the value as YAML so `--grid` and `sdk.sweep(grid=...)` agree
    return apply_overrides(data, [f"{key}={json.dumps(value)}"])


def _grid_origin(path: tuple, origin: dict[tuple, str]) -> str | None:
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in origin:
            return origin[tuple(path[:n])].replace("--set", "--grid")
    below = [text for key, text in origin.items() if key[: len(path)] == tuple(path)]  # an unknown section
    return below[0].replace("--set", "--grid") if below else None
