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
    """A recipe about to be validated, launched or swept: a new spec, held to check_new_spec's rules."""
    from sdk.core.recipes import load_recipe
    from sdk.core.spec import check_new_spec

    spec = load_recipe(recipe, overrides or [])
    check_new_spec(spec)
    return spec


# ------------------------------------------------------------------------------------------- recipes


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

    failed = 0
    console = _console()
    for file in files:
        try:
            spec = _load(file, overrides)
            if data:
                _check_data(spec)
        except SpecError as exc:
            failed += 1
            _console(stderr=True).print(f"[red]✗[/red] {escape(str(exc))}", markup=True)
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


# -------------------------------------------------------------------------------------------- runs


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _features(summary) -> str:
    f = summary.features
    on = [name for name, value in (("padding-free packing", f.packing), ("gradient checkpointing", f.gradient_checkpointing),
                                   ("activation offloading", f.activation_offloading), ("Liger kernels", f.liger_kernels),
                                   ("torch.compile", f.compile)) if value]
    unpacked = ["padded, not packed: " + f.packing_note.partition(": ")[2]] if f.packing_note else []
    return ", ".join([f"{summary.attention or 'default'} attention", *on, *([f.optimizer] if f.optimizer else []), *unpacked])


def _print_summary(summary) -> None:
    """A RunSummary as a two-column table, then the side-by-side generations."""
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    hw = summary.hardware
    device = f"{hw.count}× {hw.name}" if hw.name else hw.device
    steps = str(summary.steps)
    if summary.first_loss is not None and summary.last_loss is not None:
        steps += f", loss {summary.first_loss:.4f} → {summary.last_loss:.4f}"
    rows = [
        ("model", f"{summary.model} ({summary.method}, {summary.objective}, {summary.precision}, {device})"),
        ("trainable", f"{summary.trainable_params:,} of {summary.total_params:,} ({summary.trainable_percent:.3f}%)"),
        ("steps", steps),
        ("eval loss", f"{summary.eval_loss:.4f}" if summary.eval_loss is not None else "-"),
        ("trained with", _features(summary)),
        ("memory", f"resident {_fmt_bytes(summary.resident_memory_bytes)}, peak {_fmt_bytes(summary.peak_memory_bytes)} "
                   f"({summary.peak_memory_kind})"),
        ("adapter", _fmt_bytes(summary.adapter_bytes)),
        ("runtime", ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in summary.runtime_s.model_dump().items()
                              if v is not None)),
    ]
    acc = summary.label_accuracy
    if acc.before and acc.after:
        rows.append(("label accuracy", f"{acc.before.accuracy:.1%} → {acc.after.accuracy:.1%} "
                                       f"({acc.after.correct}/{acc.after.total} held-out)"))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    _console().print(table)
    for gen in summary.generations:
        _console().print(f"  expected [green]{gen.expected!r}[/green]  base {gen.base!r}  tuned {gen.tuned!r}", markup=True)


@app.command()
def launch(
    recipe: str = typer.Argument(..., help="recipe file or shipped recipe name"),
    overrides: list[str] | None = SetOption,
    local: bool = typer.Option(False, "--local", help="run on this machine (default: SkyPilot when the recipe names accelerators or an infra)"),
    backend: str = typer.Option("auto", "--backend", help="auto | local | skypilot"),
    detach: bool = typer.Option(False, "--detach", "-d", help="return after submitting"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and show what would run; start nothing"),
) -> None:
    """Submit a run and (unless --detach) follow it to the end with a progress bar."""
    from sdk.runs import submit

    spec = _load(recipe, overrides)
    chosen = "local" if local else backend
    if spec.model.trust_remote_code:
        _console(stderr=True).print(f"warning: model.trust_remote_code: the node will run Python code from {spec.model.id}'s "
                                    "repository as it loads the model; set it only for a repository you trust",
                                    markup=False, highlight=False)
    _check_data(spec, dry_run=dry_run)
    from sdk.backends import choose_backend

    _warn_short_session(spec, choose_backend(spec, chosen))
    if dry_run:
        name = choose_backend(spec, chosen)
        _console().print(f"would run {spec.method.name} on {spec.model.id} ({spec.train.length}) with backend "
                         f"{name}, output {spec.output}")
        if name == "skypilot":
            _print_cloud_plan(spec)
        else:
            _console().print_json(spec.to_json())
        return
    run = submit(spec, backend=chosen, check_data=False)
    console = _console()
    status = _follow(run, what="run", detach=detach, hint=f"finetune logs {run.id} -f")
    if status is None:
        return
    if status.state == "succeeded":
        summary = run.summary()
        if summary:
            _print_summary(summary)
        console.print(f"[green]succeeded[/green]; adapter: finetune fetch {run.id} ./adapter", markup=True)
        return
    _console(stderr=True).print(f"run {run.id} {status.state}" + (f": {status.error}" if status.error else ""), markup=False)
    log_tail = "\n".join(str(run.logs()).splitlines()[-15:])
    if status.state == "failed" and log_tail:
        _console(stderr=True).print(log_tail, markup=False)
    raise typer.Exit(130 if status.state == "cancelled" else 1)


def _warn_short_session(spec, backend: str, *, hours: float | None = None) -> None:
    """A forwarded AWS session token that expires before the planned end of the run: say so before launch."""
    if backend != "skypilot":
        return
    from sdk.backends.skypilot import forwarded_secrets
    from sdk.core.errors import FinetuneError
    from sdk.core.plan import estimate_cost
    from sdk.store.credentials import session_warning

    if hours is None:
        try:
            hours = estimate_cost(spec, backend=backend).hours
        except FinetuneError:
            hours = None
    line = session_warning(hours=hours, forwards_aws="AWS_SESSION_TOKEN" in forwarded_secrets(spec))
    if line:
        _console(stderr=True).print(f"warning: {line}", markup=False, highlight=False)


def _check_data(spec, *, dry_run: bool = False) -> None:
    """Every row read and checked before anything starts; one line per source and note, bad rows as an error.
    A dry run whose data cannot be reached from here (no credentials yet) warns and shows the plan anyway."""
    from sdk.data.rows import DataUnreachable
    from sdk.runs import preflight_data

    try:
        report = preflight_data(spec)
    except DataUnreachable as exc:
        if not dry_run:
            raise
        _console(stderr=True).print(f"warning: data not checked: {exc} (a launch checks every row first)",
                                    markup=False, highlight=False)
        return
    for line in report.lines():
        _console().print(line, markup=False, highlight=False)


def _follow(handle, *, what: str, detach: bool, hint: str):
    """Print where a run or sweep lives, then wait for it with progress; None when detached.
    Ctrl-C detaches: the run or sweep goes on."""
    console = _console()
    console.print(f"{what} [bold]{handle.id}[/bold] → {handle.uri}", markup=True)
    if detach:
        console.print(f"follow it with: finetune status {handle.id}  |  {hint}")
        return None
    try:
        return handle.wait(progress=True)
    except KeyboardInterrupt:
        console.print(f"\ndetached; the {what} goes on. Stop it with: finetune cancel {handle.id}")
        raise typer.Exit(130) from None


def _print_cloud_plan(spec) -> None:
    """Accelerator, nodes, estimated memory and the task YAML; provisions nothing."""
    from sdk.backends.skypilot import build_dist, forwarded_secrets, task_config, to_yaml
    from sdk.core.errors import FinetuneError
    from sdk.core.plan import estimate
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder, new_run_id

    console = _console()
    accel = spec.resources.accelerators or {}
    wanted = ", ".join(f"{name}:{count}" for name, count in accel.items()) or "none (CPU nodes)"
    console.print(f"accelerators: {wanted} × {spec.resources.nodes} node(s); infra: {spec.resources.infra or 'any'}")
    try:
        est = estimate(spec)
    except FinetuneError as exc:
        console.print(f"estimated memory: unknown ({exc})")
    else:
        console.print(f"estimated memory per process: {est.required_bytes / 2**30:.1f} GiB "
                      f"(world size {est.world_size}, {est.trainable_params:,} trainable parameters)")
        for fit in est.fits:
            if fit.gpu in accel:
                price = f", ${fit.hourly_usd:.2f}/h" if fit.hourly_usd is not None else ""
                console.print(f"  {fit.gpu}: {fit.memory_gb} GB, {'fits' if fit.fits else 'DOES NOT FIT'}{price}")
    secrets = forwarded_secrets(spec)
    if secrets:
        console.print(f"secrets forwarded by name (values never written): {', '.join(secrets)}")
    from sdk.backends.skypilot import TORCH_DEFAULT, constraints, extras_for
    from sdk.backends.torch_index import explain

    pins = dict(line.split("==", 1) for line in constraints().splitlines() if "==" in line)
    console.print(f"node setup: finetune[{extras_for(spec)}]; {explain(pins.get('torch', TORCH_DEFAULT))}",
                  markup=False, highlight=False)
    folder = RunFolder(open_store(spec.output), new_run_id(spec.name))
    sys.stdout.write("---\n" + to_yaml(task_config(spec, folder, build_dist())))


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
    if json_out:
        _console().print_json(st.model_dump_json())
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
        table = Table("step", "loss", "lr", "grad_norm", "tokens/s", "eval_loss", "peak mem", box=None, pad_edge=False)

        def cell(row: dict, key: str, fmt: str = "{:.4g}") -> str:
            return fmt.format(row[key]) if row.get(key) is not None else "-"

        for row in rows:
            table.add_row(str(row.get("step")), cell(row, "loss"), cell(row, "lr"), cell(row, "grad_norm"),
                          cell(row, "tokens_per_s", "{:.0f}"), cell(row, "eval_loss"), _fmt_bytes(row.get("peak_mem_bytes")))
        _console().print(table)
        if summary:
            _print_summary(summary)
    if plot:
        handle.plot(plot)
        _console(stderr=True).print(f"saved {plot}")


@app.command()
def fetch(
    run: str = typer.Argument(...),
    dest: Path = typer.Argument(..., help="destination directory (created; must be empty unless --force)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty destination"),
    whole: bool = typer.Option(False, "--all", help="the whole run folder: metrics, logs, tensorboard/, wandb/, adapter/"),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="with --all: the checkpoints too"),
) -> None:
    """Download the run's adapter (or with --all its whole folder), verifying the adapter against its manifest."""
    from sdk.runs import get_run

    handle = get_run(run)
    if whole:
        _console().print(f"run folder → {handle.fetch(dest, overwrite=force, checkpoints=checkpoints)}")
        return
    path = handle.fetch_adapter(dest, overwrite=force)
    _console().print(f"adapter → {path}")


@app.command()
def generate(
    run: str = typer.Argument(...),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="a prompt (repeat for several); written in the run's training template"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="default: the run's eval.max_new_tokens"),
    base: bool = typer.Option(False, "--base", help="the base model, adapter off"),
    raw: bool = typer.Option(False, "--raw", help="send the prompt as written, without the run's template"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object: rendered prompts and outputs"),
) -> None:
    """Greedy completions from a run's model with transformers + peft: a quick try without a server."""
    import json

    from sdk.runs import get_run
    from sdk.runs.tools import generate as generate_with

    result = generate_with(get_run(run).uri, prompt, max_new_tokens=max_new_tokens, base=base, raw=raw)
    if as_json:
        print(json.dumps(result))
        return
    for item in result["outputs"]:
        _console().print(f"[bold]{item['prompt']}[/bold] → {escape_markup(item['text'])}", markup=True)


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


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


# -------------------------------------------------------------------------------------------- sweeps


def _is_sweep(name: str) -> bool:
    return name.startswith("sweep-") or "/sweeps/" in name


def _get_sweep(name: str, store: str | None = None):
    from sdk.sweeps import get_sweep

    return get_sweep(name, store=store)


def _print_sweep(handle, *, json_out: bool = False) -> None:
    from rich.table import Table

    record = handle.record()
    status = handle.status()
    rows = handle.leaderboard(as_frame=False)
    if json_out:
        import json

        sys.stdout.write(json.dumps({"sweep": record.sweep_id, "state": status.state, "driver": status.driver, "metric": record.metric,
                                     "leaderboard": [r.model_dump(mode="json") for r in rows]}) + "\n")
        return
    console = _console()
    cost = f", estimated ${record.estimate_usd:,.2f}" if record.estimate_usd else ""
    console.print(f"{record.sweep_id}: {status.state} ({', '.join(f'{n} {st}' for st, n in status.counts.items())}); "
                  f"{len(record.trials)} trials on {record.backend}, {record.max_parallel} at a time{cost}; "
                  f"ranked by {record.metric} ({record.goal})", markup=False)
    if status.note:
        console.print(f"note: {status.note}", markup=False)
    keys = list(record.grid)
    table = Table(box=None, pad_edge=False)
    for column in ("#", "trial", *[k.rsplit(".", 1)[-1] for k in keys], "state", record.metric.replace("_", " "), "eval loss", "error"):
        table.add_column(column, no_wrap=column == "trial", overflow="fold")
    for r in rows:
        metric = "-" if r.metric is None else f"{r.metric:.4g}"
        eval_loss = "-" if r.eval_loss is None else f"{r.eval_loss:.4f}"
        table.add_row(str(r.rank or "-"), r.trial, *[str(r.values.get(k)) for k in keys], r.state, metric, eval_loss,
                      r.error if r.error and r.state != "succeeded" else "")
    console.print(table)
    if rows and rows[0].metric is not None:
        console.print(f"best: {rows[0].trial} (run {rows[0].run_id}); its adapter: finetune fetch {rows[0].run_id} ./adapter",
                      markup=False)


@app.command()
def sweep(
    recipe: str = typer.Argument(..., help="recipe file or shipped recipe name; or `resume SWEEP_ID`"),
    target: str | None = typer.Argument(None, help="with `resume`: the sweep whose driver stopped"),
    grid: list[str] | None = typer.Option(None, "--grid", "-g", help="KEY=V1,V2: one axis of the grid (repeatable), e.g. train.lr=1e-4,3e-4"),
    overrides: list[str] | None = SetOption,
    local: bool = typer.Option(False, "--local", help="run the trials on this machine"),
    backend: str = typer.Option("auto", "--backend", help="auto | local | skypilot"),
    max_parallel: int = typer.Option(2, "--max-parallel", "-p", help="trials running at once"),
    metric: str | None = typer.Option(None, "--metric", help="label_accuracy (default with eval labels), eval_loss, train_loss, last_loss, "
                                       "or a key the runs log with its goal: rewards/accuracies:max"),
    budget: float | None = typer.Option(None, "--budget", help="USD: refuse to start when the estimate of all trials exceeds it"),
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


@app.command(name="eval")
def eval_command(
    run: str = typer.Argument(...),
    data: str = typer.Option(..., "--data", help="labelled file (jsonl/csv/parquet with text + label columns)"),
    text_field: str = typer.Option("text", "--text-field"),
    label_field: str = typer.Option("label", "--label-field"),
    limit: int | None = typer.Option(None, "--limit", help="score at most this many rows"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Label accuracy of the base and the tuned model on a labelled file you bring."""
    import json

    from sdk.runs.tools import evaluate

    result = evaluate(run, data=data, text_field=text_field, label_field=label_field, limit=limit)
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    b, t = result["base"], result["tuned"]
    _console().print(f"{result['rows']} rows of {data}: base {b['accuracy']:.1%} ({b['correct']}/{b['total']}) → "
                     f"tuned {t['accuracy']:.1%} ({t['correct']}/{t['total']})")


@app.command()
def merge(
    run: str = typer.Argument(...),
    out: Path = typer.Argument(..., help="output directory for the standalone model (must be empty unless --force)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the run's compute dtype), fp32, bf16 or fp16"),
    prompts: int = typer.Option(8, "--prompts", help="eval prompts the merged logits are checked on"),
    max_logit_diff: float | None = typer.Option(None, "--max-logit-diff", help="tolerance (default by dtype)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output directory"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Merge the adapter into its base and write a standalone model, checked against the adapter's logits.
    QLoRA merges into the dequantized 16-bit base, never into the 4-bit weights."""
    import json

    from sdk.core.errors import SpecError
    from sdk.runs.tools import merge as merge_run

    if dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise SpecError(f"--dtype: {dtype!r} is not one of auto, fp32, bf16, fp16")
    report = merge_run(run, out, dtype=dtype, prompts=prompts, max_logit_diff=max_logit_diff, force=force)
    if json_out:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    line = f"merged {report['method']} into the {report['merged_into']}: max logit diff vs adapter {report['max_logit_diff']:.3g}"
    if "max_logit_diff_4bit_merge" in report:
        line += f" (merging into the 4-bit base would give {report['max_logit_diff_4bit_merge']:.3g})"
    _console().print(f"{line}\nmodel → {report['out']}")


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


# ------------------------------------------------------------------------------------------- entry


@app.command()
def serve(
    runs: list[str] = typer.Argument(..., help="runs to serve: RUN or ALIAS=RUN (served name = the run id, or ALIAS)"),
    local: bool = typer.Option(False, "--local", help="on this machine (default: SkyPilot when the runs' recipe names accelerators or an infra)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port, 1-65535"),
    merge: bool = typer.Option(False, "--merge", help="serve one run merged into its base (DoRA, IA3, head-only, full)"),
    base_name: str | None = typer.Option(None, "--base-name", help="the base model's served name (default: from its id)"),
    replicas: int | None = typer.Option(None, "--replicas", help="SkyPilot: a service of N replicas behind one endpoint (sky serve)"),
    detach: bool = typer.Option(False, "--detach", "-d", help="return once the server answers; stop it with finetune servers --stop ID"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check and show what would be served; start nothing"),
    idle_stop: float | None = typer.Option(None, "--idle-stop", min=0,
                                           help="minutes without a request before the engine stops (default: 60 on a "
                                                "cloud cluster, which then goes down; never locally); 0: never"),
    tls_cert: str | None = typer.Option(None, "--tls-cert", help="SkyPilot: PEM certificate; the endpoint serves HTTPS"),
    tls_key: str | None = typer.Option(None, "--tls-key", help="SkyPilot: the certificate's PEM private key"),
) -> None:
    """Serve runs' adapters and their base model on one OpenAI-compatible endpoint (vLLM multi-LoRA)."""
    from sdk.backends import choose_backend
    from sdk.runs import get_run
    from sdk.serving import parse_ref, plan_serving
    from sdk.serving import serve as start_server

    if (tls_cert is None) != (tls_key is None):
        from sdk.serving import ServeError

        raise ServeError("--tls-cert and --tls-key: give both (the certificate and its private key)")
    first = get_run(parse_ref(runs[0])[1]).spec()
    backend = choose_backend(first, "local" if local else "auto")  # the same rule as sdk.serve(backend="auto")
    console = _console()
    if dry_run:
        plan = plan_serving(runs, merge=merge, port=port, base_name=base_name, backend=backend)
        console.print(f"would serve on {backend}: " + ", ".join(plan.names) + f" (base {plan.base_spec['model']['id']}"
                      + (f", --max-lora-rank {plan.max_lora_rank}, --max-loras {plan.max_loras})" if plan.adapters else ")"),
                      markup=False)
        if backend == "skypilot":
            from sdk.backends.skypilot import to_yaml
            from sdk.serving.skypilot import serve_task_config

            tls = (tls_cert, tls_key) if tls_cert and tls_key else None
            console.print(to_yaml(serve_task_config(plan, first, replicas=replicas, tls=tls)), markup=False, highlight=False)
        return
    server = start_server(runs, merge=merge, port=port, base_name=base_name, backend=backend, replicas=replicas,
                          idle_stop=idle_stop, tls=(tls_cert, tls_key) if tls_cert and tls_key else None)
    console.print(f"server [bold]{server.id}[/bold] → {server.url}/v1  models: {', '.join(server.models)}", markup=True)
    example = server.prompt(server.models[-1], "Hello")
    if isinstance(example, str):  # prompted as in training: the completions endpoint with the run's template
        body = json_dumps({"model": server.models[-1], "prompt": example, "max_tokens": 16, "temperature": 0})
        console.print(f"try: curl {server.url}/v1/completions -H \"Authorization: Bearer $(finetune servers --show-key {server.id})\" "
                      f"-H 'Content-Type: application/json' -d '{body}'", markup=False, highlight=False)
    else:
        console.print(f"try: chat completions with model {server.models[-1]} (trained with the chat template)")
    if detach or backend != "local":  # a cluster outlives this terminal; it is stopped by name
        console.print(f"stop it with: finetune servers --stop {server.id}")
        return
    console.print("serving; Ctrl-C stops the server")
    try:
        while server.alive():
            import time

            time.sleep(1)
        _console(stderr=True).print("the server exited:\n" + "\n".join(server.logs().splitlines()[-10:]), markup=False)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        server.stop()
        console.print(f"\nstopped {server.id}")


def json_dumps(value) -> str:
    import json

    return json.dumps(value)


@app.command()
def servers(stop: str | None = typer.Option(None, "--stop", help="stop this server (id, URL or PID)"),
            show_key: str | None = typer.Option(None, "--show-key", help="print this server's API key (id, URL or PID)")) -> None:
    """Servers started from this machine; --stop ID stops one (its whole process group)."""
    from rich.table import Table

    from sdk.serving import get_server, list_servers

    if show_key:
        print(get_server(show_key).api_key)  # plain stdout, for OPENAI_API_KEY=$(finetune servers --show-key ID)
        return
    if stop:
        server = get_server(stop)
        server.stop()
        _console().print(f"stopped {server.id}")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("server", "where", "url", "state"):
        table.add_column(column, no_wrap=True)  # ids and URLs are copied whole, never cut
    table.add_column("models", overflow="fold")
    for server in list_servers():
        where = "sky serve" if server.record.get("service") else server.backend
        table.add_row(server.id, where, server.url, server.state(), ", ".join(server.models))
    _console().print(table)


def main() -> None:
    """Console-script entry: user errors print one clean message and exit 2, never a traceback."""
    from sdk.core.errors import FinetuneError

    try:
        app()
    except FinetuneError as exc:
        _console(stderr=True).print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
