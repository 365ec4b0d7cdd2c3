"""An OpenAI-compatible fine-tuning API over this product: `finetune api` / `sdk.api.serve`.

Code written against OpenAI's `client.files`, `client.fine_tuning.jobs` and `client.chat.completions` runs
unchanged but for `base_url`, `api_key` and the model name: files land in the store, a job is a run (its id is the
run id), its fine-tuned model answers on the same base URL. A thin layer: jobs are `sdk.submit` runs read back from
the store, models are served by `sdk.serving`'s engine. See docs/openai.md.

Modules: config (the operator's file: store, backend, model map), keys (bearer keys), state (files and jobs in the
store), files (the upload check), jobs (request → spec, run state → job status), progress (events, checkpoints,
the metrics CSV), service (create / cancel / the watcher), inference (engines and runtime adapters), app and routes
(HTTP), objects and errors (OpenAI's shapes).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["build", "serve"]


def build(*, store: str | None = None, backend: str | None = None, config: str | None = None) -> tuple[Any, Any, Any]:
    """(app, service, inference) for a config; nothing started yet."""
    from sdk.api.app import create_app
    from sdk.api.config import load_config
    from sdk.api.inference import Inference
    from sdk.api.keys import KeyCheck
    from sdk.api.service import JobService
    from sdk.api.state import ApiState

    settings = load_config(config, store=store, backend=backend)
    state = ApiState(settings.store)
    inference = Inference(settings, state)
    service = JobService(settings, state, on_succeeded=inference.on_succeeded)
    inference.settle = service.settle
    return create_app(service, inference, KeyCheck()), service, inference


def serve(*, port: int = 8080, host: str = "127.0.0.1", store: str | None = None, backend: str | None = None,
          config: str | None = None, announce: Any = print) -> None:
    """Serve the API until interrupted (SIGINT / SIGTERM); the engines it started stop with it (the app's lifespan),
    the jobs go on."""
    import uvicorn

    from sdk.api.keys import first_key, keys_file

    app, service, inference = build(store=store, backend=backend, config=config)
    key = first_key()
    if key:
        announce(f"API key (shown once; finetune api keys --create makes more): {key}")
    announce(f"finetune api: http://{host}:{port}/v1  store {service.config.store}  keys {keys_file()}")
    stop = threading.Event()
    watcher = threading.Thread(target=service.watch, args=(stop,), name="finetune-api-watch", daemon=True)
    watcher.start()
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()
    finally:
        stop.set()
