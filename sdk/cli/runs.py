"""Commands on runs: launch, status, logs, metrics, fetch, cancel, down, runs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sdk.cli.app import (
    SetOption,
    _check_data,
    _console,
    _follow,
    _get_sweep,
    _is_sweep,
    _load,
    _warn_short_session,
    app,
)
from sdk.cli.show import _fmt_bytes, _print_dry_run, _print_summary, _print_sweep


@app.command()
def launch(
    recipe: str = typer.Argument(..., help="recipe file or shipped recipe name"),
    overrides: list[str] | None = SetOption,
    local: bool = typer.Option(False, "--local", help="run on this machine (default: SkyPilot when the recipe names accelerators or an infra)"),
    backend: str = typer.Option("auto", "--backend", help="auto | local | skypilot"),
    detach: bool = typer.Option(False, "--detach", "-d", help="return after submitting"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and show what would run; start nothing"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="USD: resources.max_cost (docs/cost.md)"),
) -> None:
    """Submit a run and (unless --detach) follow it to the end with a progress bar."""
    from sdk.runs import submit

    overrides = [*(overrides or []), *([f"resources.max_cost={max_cost}"] if max_cost is not None else [])]
    spec = _load(recipe, overrides)
    chosen = "local" if local else backend
    if spec.model.trust_remote_code:
        _console(stderr=True).print(f"warning: model.trust_remote_code: the node will run Python code from {spec.model.id}'s "
                                    "repository as it loads the model; set it only for a repository you trust",
                                    markup=False, highlight=False)
    _check_data(spec, dry_run=dry_run)
    from sdk.backends import choose_backend

    name = choose_backend(spec, chosen)
    _warn_short_session(spec, name)
    from sdk.runs.cost import unpriced_limit

    unpriced = unpriced_limit(spec, backend=name)
    if unpriced:
        _console(stderr=True).print(f"warning: {unpriced}", markup=False, highlight=False)
    if dry_run:
        from sdk.runs.cost import check_max_cost

        estimate = check_max_cost(spec, backend=name)  # a plan already over resources.max_cost is refused here
        _console().print(f"would run {spec.method.name} on {spec.model.id} ({spec.train.length}) with backend "
                         f"{name}, output {spec.output}")
        _console().print(_estimate_line(estimate, spec.resources.max_cost), markup=False, highlight=False)
        _print_dry_run(spec, name)
        return
    from sdk.runs.record import Provenance, recipe_given

    run = submit(spec, backend=chosen, check_data=False, provenance=Provenance(recipe=recipe_given(recipe, overrides)))
    follow_to_end(run, detach=detach, hint=f"finetune logs {run.id} -f",
                  done=f"[green]succeeded[/green]; adapter: finetune fetch {run.id} ./adapter")


def follow_to_end(run, *, detach: bool, hint: str, done: str) -> None:
    """Follow a submitted run: its summary and `done` when it succeeds; else its state, error and (failed) the log's
    last lines, and exit 130 (cancelled) or 1."""
    status = _follow(run, what="run", detach=detach, hint=hint)
    if status is None:
        return
    if status.state == "succeeded":
        summary = run.summary()
        if summary:
            _print_summary(summary)
        _console().print(done, markup=True)
        return
    _console(stderr=True).print(f"run {run.id} {status.state}" + (f": {status.error}" if status.error else ""),
                                markup=False)
    backend = run._backend()
    if backend is not None and run.info is not None and backend.left_up(run.info):
        _console(stderr=True).print(f"its cluster is still up, and billed: finetune down {run.id}", markup=False)
    log_tail = "\n".join(str(run.logs()).splitlines()[-15:])
    if status.state == "failed" and log_tail:
        _console(stderr=True).print(log_tail, markup=False)
    raise typer.Exit(130 if status.state == "cancelled" else 1)


def _estimate_line(estimate, limit: float | None) -> str:
    cap = "" if limit is None else f" (max_cost ${limit:,.2f})"
    if estimate.usd is None:
        return f"estimated cost: unknown{cap}" + (f": {estimate.note}" if estimate.note else "")
    hours = "" if estimate.hours is None else f", {estimate.hours:.2f} h"
    return f"estimated cost: ${estimate.usd:,.2f}{hours}{cap}" + (f"; {estimate.note}" if estimate.note else "")


@app.command()
def down(run: str = typer.Argument(...)) -> None:
    """Tear down the cluster a SkyPilot run left up (infra without autodown, such as Slurm)."""
    from sdk.runs import get_run

    get_run(run).down()
    _console().print(f"{run}: cluster torn down")


@app.command()
def runs(store: str | None = typer.Option(None, "--store", help="list the runs in this store instead of the local registry")) -> None:
    """List runs: the local registry, or every run folder in a store."""
    from rich.table import Table

    from sdk.runs import list_runs

    table = Table("run", "state", "step", "loss", "uri", box=None, pad_edge=False)
    for run in list_runs(store=store):
        try:
            status = run.status()
            step = f"{status.step or 0}/{status.total_steps or '?'}"
            loss = f"{status.last_loss:.4f}" if status.last_loss is not None else "-"
            table.add_row(run.id, status.state, step, loss, run.uri)
        except Exception as exc:  # one unreadable run must not hide the others
            table.add_row(run.id, "?", "-", "-", f"{run.uri} ({exc})")
    _console().print(table)


@app.command()
def status(
    run: str = typer.Argument(..., help="run id or run folder URI"),
    json_out: bool = typer.Option(False, "--json"),
    reconcile: bool = typer.Option(False, "--reconcile", help="write the backend's view (e.g. a dead node) into the store"),
) -> None:
    """The state of a run (from its store, or its backend when that knows better), with step and loss.
    Given a sweep id: its trials and leaderboard."""
    from sdk.runs import get_run

    if _is_sweep(run):
        _print_sweep(_get_sweep(run), json_out=json_out)
        return
    handle = get_run(run)
    st = handle.reconcile() if reconcile else handle.status()
    cost = handle.cost()
    if json_out:
        record = handle.record()  # what it read and ran with (sdk.core.record); null for a run from before records
        _console().print_json(data={**st.model_dump(mode="json"),
                                    "cost": cost.model_dump(mode="json") if cost is not None else None,
                                    "record": record.model_dump(mode="json") if record is not None else None})
        return
    line = f"{handle.id}: {st.state}"
    if st.step is not None:
        line += f", step {st.step}/{st.total_steps}"
    if st.last_loss is not None:
        line += f", loss {st.last_loss:.4f}"
    if st.phase and not st.done:
        line += f" ({st.phase})"
    if st.error:
        line += f"\n  error: {st.error}"
    if getattr(st, "note", None):
        line += f"\n  note: {st.note}"
    if cost is not None:
        line += f"\n  cost: {cost.line()}"
    _console().print(line, markup=False)


@app.command()
def logs(run: str = typer.Argument(...), follow: bool = typer.Option(False, "--follow", "-f")) -> None:
    """Print the node's log (follow it with -f until the run ends)."""
    from sdk.runs import get_run

    handle = get_run(run)
    if follow:
        for chunk in handle.logs(follow=True):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(str(handle.logs()))


@app.command()
def metrics(
    run: str = typer.Argument(...),
    plot: Path | None = typer.Option(None, "--plot", help="save loss and lr curves to this PNG"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Metrics logged by the run (one row per logged step), and its summary."""
    import json

    from rich.table import Table

    from sdk.runs import get_run

    handle = get_run(run)
    rows = handle.metrics()
    summary = handle.summary()
    if json_out:
        sys.stdout.write(json.dumps({"metrics": rows, "summary": summary.model_dump(mode="json") if summary else None}) + "\n")
    else:
        own = _objective_columns(handle, rows)
        table = Table("step", "loss", "lr", "grad_norm", "tokens/s", "eval_loss", *own, "peak mem", box=None, pad_edge=False)

        def cell(row: dict, key: str, fmt: str = "{:.4g}") -> str:
            return fmt.format(row[key]) if row.get(key) is not None else "-"

        for row in rows:
            table.add_row(str(row.get("step")), cell(row, "loss"), cell(row, "lr"), cell(row, "grad_norm"),
                          cell(row, "tokens_per_s", "{:.0f}"), cell(row, "eval_loss"), *(cell(row, k) for k in own),
                          _fmt_bytes(row.get("peak_mem_bytes")))
        _console().print(table)
        if summary:
            _print_summary(summary)
    if plot:
        handle.plot(plot)
        _console(stderr=True).print(f"saved {plot}")


def _objective_columns(handle: object, rows: list[dict]) -> list[str]:
    """The metrics the run's objective logs (sdk.objectives: reward, rewards/accuracies …), as its rows name them."""
    from sdk.objectives import objective_of

    try:
        metrics = objective_of(handle.spec()).metrics  # type: ignore[attr-defined]
    except ValueError:  # a run of an objective this client does not know (a plugin not installed here)
        return []
    return [m.name for m in metrics if any(m.name in row for row in rows)][:4]


@app.command()
def fetch(
    run: str = typer.Argument(...),
    dest: Path = typer.Argument(..., help="destination directory (created; must be empty unless --force)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty destination"),
    whole: bool = typer.Option(False, "--all", help="the whole run folder: metrics, logs, tensorboard/, wandb/, adapter/"),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="with --all: the checkpoints too"),
    export: str | None = typer.Option(None, "--export", help="a committed export instead: gguf, gguf-adapter, "
                                                              "ollama, ollama-adapter, merged, hub"),
) -> None:
    """Download the run's adapter (or with --all its whole folder, or with --export a committed export), every
    file verified against its manifest."""
    from sdk.runs import get_run

    if export is not None:
        from sdk.exports import fetch_export

        _console().print(f"{export} export → {fetch_export(run, export, dest, overwrite=force)}")
        return
    handle = get_run(run)
    if whole:
        _console().print(f"run folder → {handle.fetch(dest, overwrite=force, checkpoints=checkpoints)}")
        return
    path = handle.fetch_adapter(dest, overwrite=force)
    _console().print(f"adapter → {path}")


@app.command()
def cancel(run: str = typer.Argument(...),
           wait: float = typer.Option(60, "--wait", min=0, help="seconds to wait for the node or backend to confirm")) -> None:
    """Stop a run, or every trial of a sweep; it reads cancelling until the node or its backend confirms."""
    import time

    from sdk.runs import get_run

    if _is_sweep(run):
        handle = _get_sweep(run)
        sweep_status = handle.cancel()
        _console().print(f"{handle.id}: {sweep_status.state}; " + ", ".join(f"{n} {st}" for n, st, _ in sweep_status.trials))
        return
    handle = get_run(run)
    st = handle.cancel()
    deadline = time.time() + wait
    while st.state == "cancelling" and time.time() < deadline:  # a node elsewhere stops at its next step
        time.sleep(1)
        st = handle.status()
    if st.done and st.state != "lost":
        st = handle.reconcile()  # what the backend confirmed goes into the store, for every other client
    note = " (not confirmed yet: the node stops at its next step; finetune status shows when)" if st.state == "cancelling" else ""
    _console().print(f"{run}: {st.state}{note}")
