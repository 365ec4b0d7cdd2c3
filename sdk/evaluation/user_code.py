"""User code a reward runs: a `file.py:function` loaded from the node's copy of the file, and its failures in one line
naming the user's file:line (RewardError), never a traceback. No torch here."""

from __future__ import annotations

import importlib.util
import itertools
import math
import numbers
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sdk.core.errors import FinetuneError
from sdk.evaluation.graders import finite_number, one_line, user_line

_MODULES = itertools.count()


class RewardError(FinetuneError):
    """A reward could not score: the message names the item (objective.rewards[i] (name)) and, for user code,
    the user's file:line."""


def load_function(path: Path, name: str, *, shown: str,
                  modules: dict[Path, ModuleType] | None = None) -> Callable[..., Any]:
    """`name` from the Python file at `path`, loaded under a module name of its own. `shown` is the file as the user
    wrote it, used in every message (the shipped copy's path means nothing to them). `modules`: the files loaded
    so far, so two rewards from one file share it (its import-time work, a model it loads, happens once)."""
    modules = {} if modules is None else modules
    key = path.resolve()
    if key not in modules:
        modules[key] = _load_module(path, shown=shown)
    return _callable(modules[key], name, shown=shown)


def _load_module(path: Path, *, shown: str) -> ModuleType:
    if not path.is_file():
        raise RewardError(f"{shown}: no such file ({path})")
    module_name = f"finetune_reward_{next(_MODULES)}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RewardError(f"{shown}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise RewardError(f"{shown}:{exc.lineno}: SyntaxError: {exc.msg}") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise RewardError(user_failure(exc, path=path, shown=shown)) from None
    return module


def _callable(module: Any, name: str, *, shown: str) -> Callable[..., Any]:
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(key for key, value in vars(module).items() if not key.startswith("_") and callable(value)
                         and getattr(value, "__module__", None) == module.__name__)
        listed = f" (it defines {', '.join(defined)})" if defined else ""
        raise RewardError(f"{shown} defines no {name!r}{listed}")
    if not callable(function):
        raise RewardError(f"{shown}: {name} is a {type(function).__name__}, not a function")
    return function


def user_failure(exc: BaseException, *, path: Path, shown: str) -> str:
    """`shown:LINE: Type: message`, LINE from the innermost frame in the user's file."""
    line = user_line(exc, filename=path)
    return f"{shown}{f':{line}' if line else ''}: {one_line(exc)}"


def checked_values(values: Any, n: int) -> list[float | None]:
    """A function reward's result as trl reads it, or ValueError saying what is wrong with it."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise ValueError(f"returned {type(values).__name__}, not a list of {n} numbers (or None)")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"returned {len(values)} rewards for {n} completions")
    out: list[float | None] = []
    for index, value in enumerate(values):
        if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
            out.append(None)  # trl reads None and NaN alike: not applicable
            continue
        number = finite_number(value)
        if number is None:
            raise ValueError(f"returned {value!r} for completion {index}, not a finite number (or None)")
        out.append(number)
    return out
