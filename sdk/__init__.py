"""finetune client SDK. Imports no torch; attributes load lazily so `import sdk` is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FineTuneSpec": "sdk.core.spec",
    "ModelSpec": "sdk.core.spec",
    "DataSpec": "sdk.core.spec",
    "TrainSpec": "sdk.core.spec",
    "EvalSpec": "sdk.core.spec",
    "ResourcesSpec": "sdk.core.spec",
    "DistributedSpec": "sdk.core.spec",
    "LoraSpec": "sdk.core.methods",
    "QloraSpec": "sdk.core.methods",
    "DoraSpec": "sdk.core.methods",
    "method_named": "sdk.core.methods",
    "RunSummary": "sdk.core.summary",
    "FieldError": "sdk.core.errors",
    "load_recipe": "sdk.core.recipes",
    "import_config": "sdk.importers",
    "ImportResult": "sdk.importers",
    "submit": "sdk.runs",
    "rerun": "sdk.runs.rerun",
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
    "generate": "sdk.runs.tools",
    "evaluate": "sdk.runs.tools",
    "merge": "sdk.runs.tools",
    "compare": "sdk.runs.tools",
    "FinetuneError": "sdk.core.errors",
    "SpecError": "sdk.core.errors",
    "StoreError": "sdk.core.errors",
    "LaunchError": "sdk.core.errors",
    "RunNotFound": "sdk.core.errors",
    "IntegrityError": "sdk.core.errors",
}

if TYPE_CHECKING:
    from sdk.core.errors import (
        FieldError,
        FinetuneError,
        IntegrityError,
        LaunchError,
        RunNotFound,
        SpecError,
        StoreError,
    )
    from sdk.core.methods import DoraSpec, LoraSpec, QloraSpec, method_named
    from sdk.core.recipes import load_recipe
    from sdk.core.spec import (
        DataSpec,
        DistributedSpec,
        EvalSpec,
        FineTuneSpec,
        ModelSpec,
        ResourcesSpec,
        TrainSpec,
    )
    from sdk.core.summary import RunSummary
    from sdk.importers import ImportResult, import_config
    from sdk.runs import Run, RunStatus, get_run, list_runs, submit
    from sdk.runs.rerun import rerun
    from sdk.runs.tools import evaluate, generate, merge
    from sdk.serving import Server, get_server, list_servers, serve
    from sdk.sweeps import Sweep, get_sweep, list_sweeps, sweep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
