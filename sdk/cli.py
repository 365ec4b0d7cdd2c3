"""`finetune`: the command line. Start-up imports only typer; each command imports what it needs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="finetune",
    help="Launch parameter-efficient fine-tuning locally or on cloud GPUs (SkyPilot); adapters land in your store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: rich's help renderer costs ~80 ms of imports, and `--help` must feel instant.
    rich_markup_mode=None,
)

SetOption = typer.Option(None, "--set", "-s", help="override a recipe field: --set train.lr=1e-4 (repeatable)")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _load(recipe: str, overrides: list[str] | None):
    from sdk.recipes import load_recipe

    return load_recipe(recipe, overrides or [])


# ------------------------------------------------------------------------------------------- recipes


@app.command()
def recipes() -> None:
    """List the shipped recipes with a one-line description."""
    from rich.table import Table

    from sdk.recipes import shipped_recipes

    table = Table("recipe", "description", box=None, pad_edge=False)
    for name, description in shipped_recipes():
        table.add_row(name, description)
    _console().print(table)


@app.command()
def validate(
    files: list[str] = typer.Argument(..., help="recipe files (or shipped recipe names)"),
    overrides: list[str] | None = SetOption,
    show: bool = typer.Option(False, "--show", help="print the resolved spec as JSON"),
) -> None:
    """Check recipes against the spec; every problem is reported with file:line and field path."""
    from sdk.errors import SpecError

    failed = 0
    console = _console()
    for file in files:
        try:
            spec = _load(file, overrides)
        except SpecError as exc:
            failed += 1
            _console(stderr=True).print(f"[red]✗[/red] {exc}", markup=True)
            continue
        console.print(f"[green]✓[/green] {file}: {spec.method.name} on {spec.model.id}, {spec.train.length}")
        if show:
            console.print_json(spec.to_json())
    if failed:
        raise typer.Exit(2)


@app.command()
def schema(output: Path | None = typer.Option(None, "--output", "-o", help="write to this file")) -> None:
    """Print the JSON Schema of FineTuneSpec (for editor completion of recipes)."""
    import json

    from sdk.spec import FineTuneSpec

    text = json.dumps(FineTuneSpec.model_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


# ------------------------------------------------------------------------------------------- entry


def main() -> None:
    """Console-script entry: user errors print one clean message and exit 2, never a traceback."""
    from sdk.errors import FinetuneError

    try:
        app()
    except FinetuneError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
