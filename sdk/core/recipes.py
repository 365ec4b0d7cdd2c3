"""Recipes: YAML files that hold a FineTuneSpec, plus `key=value` overrides.

Every error names the file and line (or the `--set` override) and the field path, e.g.
`recipes/x.yaml:12: train.lr: Input should be greater than 0 (got -1.0)`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec, parse_spec


def _shipped_dir() -> Path:
    """The shipped recipes: recipes/ beside this source tree (a checkout or an editable install), else the
    `finetune_recipes` package data of an installed wheel. The source tree goes first so that a checkout never
    reads the recipes of another checkout an older editable install still points at."""
    import importlib.util

    beside = Path(__file__).resolve().parents[2] / "recipes"
    if any(beside.glob("*.yaml")):
        return beside
    found = importlib.util.find_spec("finetune_recipes")
    if found is not None and found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations)))
    return beside


RECIPES_DIR = _shipped_dir()


@dataclass
class _Located:
    """A YAML document with the line of every key path, for error messages."""

    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)


def _compose(text: str, source: str) -> _Located:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None
    located = _Located(data)
    if node is not None:
        _walk(node, (), located.lines, source)
    return located


def _walk(node: Any, path: tuple[str | int, ...], lines: dict, source: str) -> None:
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(
                    f"{source}:{line}: duplicate key {'.'.join(map(str, path + (key,)))!r} "
                    f"(first set at line {seen[key]})"
                )
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001). Values are read as YAML ('[a, b]', 'true', '3')."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"--set {text}: write KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], dict[tuple, str]]:
    """Set each override into a copy of `data`; return it and which paths came from which override."""
    data = copy.deepcopy(data)
    origin: dict[tuple, str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        node, above = _at(data, keys[:-1], text)
        path = (*above, _key(node, keys[-1], text, keys[:-1]))
        node[path[-1]] = value
        origin[path] = f"--set {text}"
        other = EXCLUSIVE.get(tuple(keys))
        if other and other not in origin and value is not None and isinstance(node, dict):
            node.pop(other[-1], None)  # --set train.max_steps=500 replaces the recipe's epochs, and vice versa
    return data, origin


# A section written as one string, as a mapping (`data: file.jsonl` is `data: {source: file.jsonl}`).
_STRING_SECTIONS = {"model": "id", "data": "source", "method": "name", "objective": "name", "distributed": "strategy",
                    "sources": "source"}


def _key(node: Any, key: str, text: str, above: list[str]) -> str | int:
    """A dotted key's part: a name in a mapping, or an index into a list (data.sources.1.weight=0.2)."""
    if not isinstance(node, list):
        return key
    if not key.isdigit() or int(key) >= len(node):
        raise SpecError(f"--set {text}: {'.'.join(above)} is a list of {len(node)}; {key!r} is not an index of it")
    return int(key)


def _at(data: dict[str, Any], keys: list[str], text: str) -> tuple[Any, tuple[str | int, ...]]:
    """The section at a dotted path, made where missing (and a section written as a string made a mapping), and its
    path with list indices as numbers (as the recipe's line numbers are keyed)."""
    node: Any = data
    path: list[str | int] = []
    for i, key in enumerate(keys):
        part = _key(node, key, text, keys[:i])
        path.append(part)
        child = node[part] if isinstance(node, list) else node.get(part)
        owner = keys[i - 1] if isinstance(node, list) and i else key
        if isinstance(child, str) and owner in _STRING_SECTIONS:
            child = {_STRING_SECTIONS[owner]: child}
        elif isinstance(child, list) and key == "data":  # `data: [a, b]` is `data: {sources: [a, b]}`
            child = {"sources": child}
        elif child is None:
            child = {}
        elif not isinstance(child, (dict, list)):
            raise SpecError(f"--set {text}: {'.'.join(keys[: i + 1])} is a value, not a section")
        node[part] = child
        node = child
    return node, tuple(path)


# Settings of which a spec takes one: an override of either replaces the other written in the recipe.
EXCLUSIVE = {("train", "max_steps"): ("train", "epochs"), ("train", "epochs"): ("train", "max_steps"),
             ("data", "source"): ("data", "sources"), ("data", "sources"): ("data", "source")}


def _locator(source: str, lines: dict[tuple, int], origin: dict[tuple, str]):
    def locate(path: tuple) -> str | None:
        for n in range(len(path), -1, -1):
            prefix = tuple(path[:n])
            if prefix in origin:
                return origin[prefix]
            if prefix in lines and (n or not path):
                return f"{source}:{lines[prefix]}"
        return source

    return locate


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> FineTuneSpec:
    """Read a YAML recipe (a path, or the name of a shipped recipe) into a validated spec."""
    file = resolve_recipe(path)
    source = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{source}: cannot read recipe: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[: exc.start].count(b"\n") + 1
        raise SpecError(f"{source}:{line}: not a UTF-8 text file (byte {exc.object[exc.start]:#04x} at offset "
                        f"{exc.start}); a recipe is YAML text") from None
    located = _compose(text, source)
    if located.data is None:
        raise SpecError(f"{source}:1: recipe is empty")
    if not isinstance(located.data, dict):
        raise SpecError(f"{source}:1: a recipe is a mapping of keys (model:, method:, data: ...), not a {type(located.data).__name__}")
    data, origin = apply_overrides(located.data, overrides or [])
    return parse_spec(data, locate=_locator(source, located.lines, origin))


def read_yaml_mapping(path: str, *, what: str) -> dict[str, Any]:
    """A YAML file that holds a mapping (an API config, a config to import), or SpecError naming the file."""
    import yaml

    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: {what} is a mapping of keys, not a {type(data).__name__}")
    return data


def resolve_recipe(path: str | Path) -> Path:
    """A recipe path as given, or a shipped recipe by name ('tiny', 'tiny.yaml')."""
    file = Path(path).expanduser()
    if file.exists() or file.is_absolute() or "/" in str(path):
        if not file.exists():
            raise SpecError(f"{path}: no such recipe file")
        if file.is_dir():
            raise SpecError(f"{path}: is a directory, not a recipe file")
        return file
    for candidate in (RECIPES_DIR / str(path), RECIPES_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise SpecError(f"{path}: no such recipe file or shipped recipe (shipped: {known})")


def shipped_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) for every recipe in recipes/."""
    import yaml

    out = []
    for file in sorted(RECIPES_DIR.glob("*.yaml")):
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        description = (data.get("description") or "").strip().splitlines()
        out.append((file.stem, description[0] if description else ""))
    return out
