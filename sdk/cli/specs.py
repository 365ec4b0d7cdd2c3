"""Commands on recipes and specs, before anything runs: recipes, validate, schema, estimate, tiny-model."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sdk.cli.app import (
    SetOption,
    _check_data,
    _console,
    _load,
    app,
)
from sdk.cli.show import _fmt_bytes


@app.command()
def recipes() -> None:
    """List the shipped recipes with a one-line description."""
    from rich.table import Table

    from sdk.core.recipes import shipped_recipes

    table = Table("recipe", "description", box=None, pad_edge=False)
    for name, description in shipped_recipes():
        table.add_row(name, description)
    _console().print(table)


@app.command()
def validate(
    files: list[str] = typer.Argument(..., help="recipe files (or shipped recipe names)"),
    overrides: list[str] | None = SetOption,
    show: bool = typer.Option(False, "--show", help="print the resolved spec as JSON"),
    data: bool = typer.Option(True, "--data/--no-data", help="also read and check every row of the recipe's data"),
) -> None:
    """Check recipes against the spec (file:line and field path) and their data (every bad row as file:line)."""
    from rich.markup import escape

    from sdk.core.errors import SpecError
    from sdk.runs.shipping import check_shipped

    failed = 0
    console = _console()
    for file in files:
        try:
            spec = _load(file, overrides)
            check_shipped(spec)  # a reward's Python file: it exists, compiles, defines the function
            if data:
                _check_data(spec)
        except SpecError as exc:
            failed += 1
            _console(stderr=True).print(f"[red]✗[/red] {escape(str(exc))}", markup=True)
            continue
        console.print(f"[green]✓[/green] {file}: {spec.method.name} on {spec.model.id}, {spec.objective.name}, "
                      f"{spec.train.length}")
        if show:
            console.print_json(spec.to_json())
    if failed:
        raise typer.Exit(2)


@app.command()
def schema(output: Path | None = typer.Option(None, "--output", "-o", help="write to this file")) -> None:
    """Print the JSON Schema of FineTuneSpec (for editor completion of recipes)."""
    import json

    from sdk.core.spec import FineTuneSpec

    text = json.dumps(FineTuneSpec.model_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def estimate(
    recipe: str = typer.Argument(..., help="recipe file or shipped recipe name"),
    overrides: list[str] | None = SetOption,
    device: str = typer.Option("gpu", "--device", help="gpu (per-GPU bytes, bf16 by default) or cpu (fp32 process)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Memory per GPU by component, which GPUs fit, and their price where SkyPilot's catalog is present."""
    from rich.table import Table

    from sdk.core.plan import estimate as plan_estimate

    if device not in ("gpu", "cpu"):
        raise typer.BadParameter("use gpu or cpu", param_hint="--device")
    result = plan_estimate(_load(recipe, overrides), device=device)
    if json_out:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    console = _console()
    console.print(f"{result.model}: {result.method}, {result.total_params:,} params, {result.trainable_params:,} trainable "
                  f"({result.trainable_percent:.3f}%), seq {result.seq_len} × micro-batch {result.micro_batch}, "
                  f"{result.world_size} {'GPU' if device == 'gpu' else 'process'}(s)")
    table = Table("component", "memory", "how", box=None, pad_edge=False)
    for part in result.components:
        table.add_row(part.name, _fmt_bytes(part.bytes), part.note)
    table.add_row("[bold]allocated[/bold]", f"[bold]{_fmt_bytes(result.allocated_bytes)}[/bold]", "peak of torch's allocator")
    table.add_row("[bold]required[/bold]", f"[bold]{_fmt_bytes(result.required_bytes)}[/bold]", "what each device must hold")
    console.print(table)
    if device == "gpu":
        fits = Table("gpu", "memory", "fits", "headroom", "$/h", box=None, pad_edge=False)
        for fit in result.fits:
            price = f"{fit.hourly_usd:.2f}" if fit.hourly_usd is not None else "-"
            fits.add_row(fit.gpu, f"{fit.memory_gb} GB", "[green]yes[/green]" if fit.fits else "[red]no[/red]",
                         f"{fit.headroom_gb:+.1f} GB", price)
        console.print(fits)


@app.command(name="tiny-model")
def tiny_model(
    out: Path = typer.Argument(..., help="output directory"),
    like: str = typer.Option("llama", "--like", help="recipe, config.json, model dir, or an architecture name"),
) -> None:
    """Build a tiny model of a target architecture (few layers, small hidden, local tokenizer) for dry runs."""
    import subprocess

    # built by the node's code in a process of its own: the client never imports torch or transformers
    done = subprocess.run([sys.executable, "-m", "launch.tiny", str(out), "--like", like], capture_output=True, text=True)
    if done.returncode != 0:
        _console(stderr=True).print((done.stderr.strip().splitlines() or [f"tiny-model failed ({done.returncode})"])[-1]
                                    .removeprefix("error: ").strip(),
                                    markup=False, highlight=False)
        raise typer.Exit(2)
    _console().print((done.stdout.strip().splitlines() or [""])[-1], markup=False)  # its last line says where
