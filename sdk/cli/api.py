"""`finetune api`: the OpenAI-compatible fine-tuning API (sdk.api); `finetune api keys`: its bearer keys."""

from __future__ import annotations

import typer

from sdk.cli.app import _console, app

api_app = typer.Typer(help="An OpenAI-compatible fine-tuning API: files, jobs, events, checkpoints, models and chat "
                           "completions on one base URL (docs/openai.md).", invoke_without_command=True,
                      no_args_is_help=False, rich_markup_mode=None)
app.add_typer(api_app, name="api")


@api_app.callback()
def api(
    ctx: typer.Context,
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="TCP port"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface; put TLS "
                                                         "in front of it)"),
    store: str | None = typer.Option(None, "--store", help="where files, jobs and runs live (default: the config's, "
                                                           "else ./runs)"),
    backend: str | None = typer.Option(None, "--backend", help="local | skypilot (default: the config's, else local)"),
    config: str | None = typer.Option(None, "--config", help="YAML: store, backend, the model map, serving settings"),
) -> None:
    """Serve the API until Ctrl-C; jobs keep running and a restart picks them up."""
    if ctx.invoked_subcommand is not None:
        return
    from sdk.api import serve

    if backend not in (None, "local", "skypilot"):
        raise typer.BadParameter("local or skypilot", param_hint="--backend")
    serve(port=port, host=host, store=store, backend=backend, config=config,
          announce=lambda line: _console().print(line, markup=False, highlight=False))


@api_app.command("keys")
def keys(
    create: bool = typer.Option(False, "--create", help="make a key and print it (shown once)"),
    revoke: str | None = typer.Option(None, "--revoke", metavar="ID", help="revoke a key by its id"),
) -> None:
    """List the API's keys (id, created, last four characters); --create one, or --revoke ID."""
    import datetime

    from sdk.api.keys import create_key, keys_file, list_keys, revoke_key

    console = _console()
    if create:
        ident, key = create_key()
        console.print(f"{ident}  {key}", markup=False, highlight=False)
        return
    if revoke:
        revoke_key(revoke)
        console.print(f"revoked {revoke}", markup=False)
        return
    listed = list_keys()
    if not listed:
        console.print(f"no keys yet ({keys_file()}); finetune api makes one at its first start", markup=False)
    for entry in listed:
        when = datetime.datetime.fromtimestamp(entry["created_at"]).isoformat(timespec="seconds")
        console.print(f"{entry['id']}  created {when}  …{entry['last4']}", markup=False, highlight=False)
