"""The typer app every command group registers on, and what the groups share: the console, loading a recipe
as a new spec, the data check, following a run or sweep."""

from __future__ import annotations

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


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def json_dumps(value) -> str:
    import json

    return json.dumps(value)


def _is_sweep(name: str) -> bool:
    from sdk.sweeps import is_sweep_ref

    return is_sweep_ref(name)


def _get_sweep(name: str, store: str | None = None):
    from sdk.sweeps import get_sweep

    return get_sweep(name, store=store)
