"""Turn pydantic's ValidationError into short lines that name the field path (and file:line when known)."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from sdk.core.errors import FieldError

Path = tuple[str | int, ...]
# pydantic puts union-branch names into `loc` ("literal['a','b']", "list[str]", "function-after[...]").
_BRANCH = re.compile(r"^(literal\[|list\[|dict\[|function-|tagged-union\[|str$|int$|float$|bool$|none$|is-instance\[)")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation can hold (through Optional, Union and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if origin in (list, dict):  # a list's items, a dict's values (objective.rewards, a multi grader's graders)
        return _models_in(typing.get_args(annotation)[-1])
    return []


def _contains_items(annotation: Any) -> bool:
    """A list or dict (through Optional and Annotated): its errors have an index or key before the item's own path."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated or origin in (typing.Union, types.UnionType):
        return any(_contains_items(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, dict)


def _tag_of(cls: type[BaseModel]) -> str | None:
    field = cls.model_fields.get("name")
    return field.default if field is not None and isinstance(field.default, str) else None


def _tags_of(cls: type[BaseModel]) -> list[str]:
    """The discriminator values a model answers to: its `name` or `type` default, or every value of its Literal."""
    for key in ("name", "type"):
        field = cls.model_fields.get(key)
        if field is None:
            continue
        if isinstance(field.default, str):
            return [field.default]
        if typing.get_origin(field.annotation) is typing.Literal:
            return [str(v) for v in typing.get_args(field.annotation)]
    return []


def resolve(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Path, type[BaseModel] | None]:
    """Field path of an error location, and the model class that owns its last element."""
    path: list[str | int] = []
    owner: type[BaseModel] | None = root
    current: type[BaseModel] | None = root
    i = 0
    while i < len(loc):
        part = loc[i]
        if current is not None and isinstance(part, str) and part in current.model_fields:
            path.append(part)
            owner = current
            annotation = current.model_fields[part].annotation
            candidates = _models_in(annotation)
            current = None
            if candidates and _contains_items(annotation) and i + 1 < len(loc):
                path.append(loc[i + 1])  # the item's index or key
                i += 1
            if len(candidates) == 1:
                current = candidates[0]
            elif candidates and i + 1 < len(loc):
                tagged = {tag: c for c in candidates for tag in _tags_of(c)}
                if loc[i + 1] in tagged:
                    current = tagged[loc[i + 1]]
                    i += 1  # the discriminator tag is not part of the user's path
        elif isinstance(part, str) and _BRANCH.match(part):
            pass
        else:
            path.append(part)
            owner = current
            current = None
        i += 1
    return tuple(path), (current if current is not None else owner)


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _all_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for field in cls.model_fields.values():
            todo.extend(_models_in(field.annotation))
    return seen


def _unknown_key(root: type[BaseModel], owner: type[BaseModel] | None, key: str) -> str:
    message = f"unknown key {key!r}"
    if owner is None:
        return message
    allowed = list(owner.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    owners = [c for c in _all_models(root) if key in c.model_fields and _tag_of(c) and _tag_of(owner)]
    if owners:
        names = ", ".join(sorted({_tag_of(c) or "" for c in owners}))
        return f"{message}: it belongs to method {names}, not {_tag_of(owner)}"
    return f"{message}; allowed: {', '.join(allowed)}"


def _message(root: type[BaseModel], err: dict[str, Any], owner: type[BaseModel] | None, path: Path) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return _unknown_key(root, owner, str(path[-1]))
    if kind == "missing":
        _, parent = resolve(root, tuple(err["loc"])[:-1])  # the model that lacks the field
        field = parent.model_fields.get(str(path[-1])) if parent is not None and path else None
        accepts = f": give {field.description}" if field is not None and field.description else ""
        return f"required field is missing{accepts}"
    if kind == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        expected = [t.strip(" '") for t in err["ctx"]["expected_tags"].split(",")]
        close = difflib.get_close_matches(str(tag), expected, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = path[-1] if path and isinstance(path[-1], str) else "name"
        return f"unknown {what} {tag!r}{hint} (one of: {', '.join(expected)})"
    if kind == "union_tag_not_found":
        example = {"tracking": "mlflow"}.get(str(path[0]) if path else "", "lora")
        return f"needs a 'name' (e.g. name: {example})"
    error = (err.get("ctx") or {}).get("error")
    message = str(error) if isinstance(error, Exception) else err["msg"]
    value = err.get("input")
    if kind not in ("value_error", "assertion_error") and not isinstance(value, (dict, list, type(None))):
        message += f" (got {value!r})"
    return message


def format_errors(
    exc: ValidationError, *, locate: Callable[[Path], str | None] | None = None, root: type[BaseModel] | None = None
) -> list[FieldError]:
    """One FieldError per field path: field, message(s), and where (file:line) when `locate` knows."""
    if root is None:
        from sdk.core.spec import FineTuneSpec

        root = FineTuneSpec
    grouped: dict[Path, list[str]] = {}
    for err in exc.errors(include_url=False):
        path, owner = resolve(root, tuple(err["loc"]))
        error = (err.get("ctx") or {}).get("error")
        field = getattr(error, "field", None)
        if field:  # a cross-field rule names the field the user should change
            path = tuple(field.split("."))
            message = str(error).split(": ", 1)[1]
        else:
            message = _message(root, err, owner, path)
        messages = grouped.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    return [FieldError(dotted(path), "; or ".join(messages), locate(path) if locate else None)
            for path, messages in grouped.items()]
