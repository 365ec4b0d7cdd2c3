"""Commands on a run's record: rerun (the same spec again, its data checked unchanged), diff (two runs compared)."""

from __future__ import annotations

import typer

from sdk.cli.app import SetOption, _console, app


@app.command()
def rerun(
    run: str = typer.Argument(..., help="a finished run: id or run folder URI"),
    overrides: list[str] | None = SetOption,
    allow_data_change: bool = typer.Option(False, "--allow-data-change",
                                           help="run even when a data file changed since (the record says so)"),
    local: bool = typer.Option(False, "--local", help="run on this machine"),
    backend: str = typer.Option("auto", "--backend", help="auto (the run's own) | local | skypilot"),
    detach: bool = typer.Option(False, "--detach", "-d", help="return after submitting"),
) -> None:
    """Launch a run's spec again as a new run: every data file its record names is hashed again first (a changed
    one is refused, naming it and both hashes); a cluster's node installs the packages it ran with (lock.json), a
    local rerun shows how this machine differs. The new run's record names the run it reproduces."""
    from sdk.cli.runs import follow_to_end
    from sdk.runs.rerun import plan_rerun

    plan = plan_rerun(run, overrides=overrides, allow_data_change=allow_data_change,
                      backend="local" if local else backend)
    for line in plan.lines():
        _console().print(line, markup=False, highlight=False)
    handle = plan.submit()
    compare = f"finetune diff {plan.rerun.run_id} {handle.id}"
    follow_to_end(handle, detach=detach, hint=compare, done=f"compare: {compare}")


@app.command()
def diff(
    run_a: str = typer.Argument(..., help="run id or run folder URI"),
    run_b: str = typer.Argument(..., help="run id or run folder URI"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Two runs compared: the spec fields (dotted paths), data hashes, packages, hardware, environment and final
    metrics that differ — exactly those; what is never compared (names, places, times) is listed as ignored."""
    import sys

    from sdk.runs.diff import diff_runs

    result = diff_runs(run_a, run_b)
    if json_out:
        sys.stdout.write(result.model_dump_json() + "\n")
        return
    for line in result.lines():
        _console().print(line, markup=False, highlight=False)
