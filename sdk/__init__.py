"""finetune client SDK. Imports no torch; attributes load lazily so `import sdk` is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FineTuneSpec": "sdk.spec",
    "ModelSpec": "sdk.spec",
    "DataSpec": "sdk.spec",
    "TrainSpec": "sdk.spec",
    "EvalSpec": "sdk.spec",
    "ResourcesSpec": "sdk.spec",
    "DistributedSpec": "sdk.spec",
    "LoraSpec": "sdk.methods",
    "QloraSpec": "sdk.methods",
    "DoraSpec": "sdk.methods",
    "method_named": "sdk.methods",
    "RunSummary": "sdk.summary",
    "FieldError": "sdk.errors",
    "load_recipe": "sdk.recipes",
    "submit": "sdk.runs",
    "get_run": "sdk.runs",
    "list_runs": "sdk.runs",
    "Run": "sdk.runs",
    "RunStatus": "sdk.runs",
    "sweep": "sdk.sweeps",
    "get_sweep": "sdk.sweeps",
    "list_sweeps": "sdk.sweeps",
    "Sweep": "sdk.sweeps",
    "serve": "sdk.serving",
    "Server": "sdk.serving",
    "list_servers": "sdk.serving",
    "get_server": "sdk.serving",
    "generate": "sdk.node_tools",
    "evaluate": "sdk.node_tools",
    "merge": "sdk.node_tools",
    "FinetuneError": "sdk.errors",
    "SpecError": "sdk.errors",
    "StoreError": "sdk.errors",
    "LaunchError": "sdk.errors",
    "RunNotFound": "sdk.errors",
    "IntegrityError": "sdk.errors",
}

if TYPE_CHECKING:
    from sdk.errors import FieldError, FinetuneError, IntegrityError, LaunchError, RunNotFound, SpecError, StoreError
    from sdk.methods import DoraSpec, LoraSpec, QloraSpec, method_named
    from sdk.node_tools import evaluate, generate, merge
    from sdk.recipes import load_recipe
    from sdk.runs import Run, RunStatus, get_run, list_runs, submit
    from sdk.serving import Server, get_server, list_servers, serve
    from sdk.spec import (
        DataSpec,
        DistributedSpec,
        EvalSpec,
        FineTuneSpec,
        ModelSpec,
        ResourcesSpec,
        TrainSpec,
    )
    from sdk.summary import RunSummary
    from sdk.sweeps import Sweep, get_sweep, list_sweeps, sweep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
