"""The shell and Python give the same result for the same call: every option a command shares (by name) with
the SDK function it calls has the same default in both."""

from __future__ import annotations

import inspect

import pytest

PAIRS = [  # (command, the SDK function it calls)
    ("launch", "sdk.runs:submit"),
    ("sweep", "sdk.sweeps:sweep"),
    ("serve", "sdk.serving:serve"),
    ("generate", "sdk.runs.tools:generate"),
    ("eval", "sdk.runs.tools:evaluate"),
    ("merge", "sdk.runs.tools:merge"),
    ("estimate", "sdk.core.plan:estimate"),
]


def command_defaults(name: str) -> dict[str, object]:
    import typer.main

    from sdk.cli import app

    command = typer.main.get_command(app).commands[name]
    return {param.name: param.default for param in command.params if not param.required}


def function_defaults(target: str) -> dict[str, object]:
    import importlib

    module, _, attr = target.partition(":")
    signature = inspect.signature(getattr(importlib.import_module(module), attr))
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(("command", "target"), PAIRS)
def test_a_command_and_its_sdk_call_share_their_defaults(command, target):
    shell, python = command_defaults(command), function_defaults(target)
    shared = sorted(set(shell) & set(python))
    assert shared, f"{command} and {target} share no option: the pair is wrong"
    assert {k: shell[k] for k in shared} == {k: python[k] for k in shared}
