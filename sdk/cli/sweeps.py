"""Commands on sweeps: sweep (and sweep resume), sweeps."""

from __future__ import annotations

import typer

from sdk.cli.app import SetOption, _console, _follow, _load, _warn_short_session, app
from sdk.cli.show import _print_sweep


@app.command()
def sweep(
    recipe: str = typer.Argument(..., help="recipe file or shipped recipe name; or `resume SWEEP_ID`"),
    target: str | None = typer.Argument(None, help="with `resume`: the sweep whose driver stopped"),
    grid: list[str] | None = typer.Option(None, "--grid", "-g", help="KEY=V1,V2: one axis of the grid (repeatable), e.g. train.lr=1e-4,3e-4"),
    overrides: list[str] | None = SetOption,
    local: bool = typer.Option(False, "--local", help="run the trials on this machine"),
    backend: str = typer.Option("auto", "--backend", help="auto | local | skypilot"),
    max_parallel: int = typer.Option(2, "--max-parallel", "-p", help="trials running at once"),
    metric: str | None = typer.Option(None, "--metric", help="label_accuracy (default with eval labels), eval_loss, train_loss, last_loss, exact_match, token_f1, rouge_l, json_valid, json_field_accuracy, tool_call_match, forgetting_ratio, judge_win_rate, "
                                       "or a key the runs log with its goal: rewards/accuracies:max"),
    budget: float | None = typer.Option(
        None, "--budget", help="USD: refused when the trials' estimate exceeds it; while it runs, no trial launches "
        "past it and running trials are cancelled when their actual spend reaches it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the trials and the cost estimate; start nothing"),
    detach: bool = typer.Option(False, "--detach", "-d", help="return after starting the sweep"),
) -> None:
    """Fan a recipe out over a grid; the trials run in parallel as ordinary runs and are ranked by a metric.
    `finetune sweep resume SWEEP_ID` starts a new driver for a sweep whose driver was killed or slept past its lease."""
    from rich.table import Table

    from sdk.core.errors import SpecError
    from sdk.sweeps import default_metric, parse_grid, plan_sweep, resume_sweep, total_usd
    from sdk.sweeps import sweep as start_sweep

    if recipe == "resume" and target is not None:
        handle = resume_sweep(target)
        final = _follow(handle, what="sweep", detach=detach, hint=f"stop every trial: finetune cancel {handle.id}")
        if final is not None:
            _print_sweep(handle)
            if final.state in ("failed", "cancelled"):
                raise typer.Exit(1)
        return
    if target is not None:
        raise SpecError(f"sweep: unexpected argument {target!r} (to resume a sweep: finetune sweep resume SWEEP_ID)")
    if not grid:
        raise SpecError("--grid: give at least one KEY=V1,V2, e.g. --grid train.lr=1e-4,3e-4")
    spec = _load(recipe, overrides)
    axes = parse_grid(grid)
    chosen = "local" if local else backend
    if dry_run:
        trials, name, costs = plan_sweep(spec, grid=axes, backend=chosen, metric=metric, budget=budget)
        table = Table("trial", *axes, "GPU", "hours", "USD", box=None, pad_edge=False)
        for (values, trial), cost in zip(trials, costs, strict=True):
            table.add_row(trial.name, *[str(values[k]) for k in axes], cost.gpu or "-",
                          "-" if cost.hours is None else f"{cost.hours:.2f}", "-" if cost.usd is None else f"{cost.usd:,.2f}")
        _console().print(table)
        usd = total_usd(costs)
        total = f"${usd:,.2f}" if usd is not None else f"unknown ({next(c.note for c in costs if c.usd is None)})"
        _console().print(f"{len(trials)} trials on {name}, {max_parallel} at a time, ranked by "
                         f"{metric or default_metric(spec)}; estimated cost {total}", markup=False)
        return
    from sdk.backends import choose_backend
    from sdk.core.plan import estimate_cost
    from sdk.sweeps import trial_specs

    name = choose_backend(spec, chosen)
    if name == "skypilot":  # the token must outlast the last trial: the trials run max_parallel at a time
        hours = [estimate_cost(t, backend=name).hours for _, t in trial_specs(spec, axes)]
        waves = -(-len(hours) // max_parallel)  # the trials run in waves of max_parallel
        _warn_short_session(spec, name, hours=None if None in hours else waves * max(hours))
    handle = start_sweep(spec, grid=axes, backend=chosen, max_parallel=max_parallel, metric=metric, budget=budget)
    final = _follow(handle, what="sweep", detach=detach, hint=f"stop every trial: finetune cancel {handle.id}")
    if final is None:
        return
    _print_sweep(handle)
    if final.state in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command()
def sweeps(store: str | None = typer.Option(None, "--store", help="list the sweeps in this store instead of the local registry")) -> None:
    """List sweeps: the ones started here, or every sweep folder in a store."""
    from rich.table import Table

    from sdk.sweeps import list_sweeps

    table = Table(box=None, pad_edge=False)
    for column in ("sweep", "state", "trials", "best"):
        table.add_column(column, no_wrap=column == "sweep", overflow="fold")
    for handle in list_sweeps(store=store):
        try:
            record, status = handle.record(), handle.status()
            top = handle.leaderboard(as_frame=False)[0]
            best = f"{top.trial}: {record.metric} {top.metric:.4g}" if top.metric is not None else "-"
            table.add_row(handle.id, status.state, str(len(record.trials)), best)
        except Exception as exc:  # one unreadable sweep must not hide the others
            table.add_row(handle.id, "?", "-", f"{handle.uri}: {exc}")
    _console().print(table)
