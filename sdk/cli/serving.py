"""Commands on endpoints: serve, servers."""

from __future__ import annotations

import typer

from sdk.cli.app import (
    _console,
    app,
    json_dumps,
)


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
    from sdk.runs import get_run
    from sdk.serving import parse_ref, plan_serving, serving_backend_for
    from sdk.serving import serve as start_server

    if (tls_cert is None) != (tls_key is None):
        from sdk.serving import ServeError

        raise ServeError("--tls-cert and --tls-key: give both (the certificate and its private key)")
    first = get_run(parse_ref(runs[0])[1]).spec()
    backend = serving_backend_for(runs, "local" if local else "auto")  # the function sdk.serve(backend="auto") uses
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
        where = "sky serve" if server.record.service else server.backend
        table.add_row(server.id, where, server.url, server.state(), ", ".join(server.models))
    _console().print(table)
