"""An export on a node of the run's own kind, as a SkyPilot task: for a model too large for this machine. The
task installs the product as a training task does (same venv, same stack), then llama.cpp's pinned tools, and runs
`python -m launch.exports`, which commits to the run folder as it does here; its outcome (the report, or the one
line that refused or failed it) is written to the run folder too, where this client reads it. The cluster is
taken down when the export ends, whatever its outcome."""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from typing import Any

from sdk.core.errors import ExportCheckFailed, FinetuneError, LaunchError

TERMINAL_JOB = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED", "FAILED_PRECHECKS",
                "FAILED_NO_RESOURCE", "FAILED_CONTROLLER")


def outcome_key(name: str) -> str:
    return f"exports/.{name}.outcome.json"


def export_run_script(folder: Any, options_json: str, *, name: str, force: bool) -> str:
    command = ["-m", "launch.exports", "--run", folder.uri, "--options", options_json, "--outcome", outcome_key(name)]
    if force:
        command.append("--force")
    return f"""set -uo pipefail
VENV="${{FINETUNE_VENV:-$HOME/.finetune/venv-$FINETUNE_STACK_KEY}}"
"$VENV/bin/python" -m launch.exports.llamacpp >&2 || exit 3
"$VENV/bin/python" {' '.join(shlex.quote(part) for part in command)}
"""


def export_cluster(run_id: str, name: str) -> str:
    return f"ft-export-{hashlib.sha256(f'{run_id}/{name}'.encode()).hexdigest()[:10]}"


def export_task_config(folder: Any, spec: Any, options_json: str, *, name: str, force: bool,
                       secrets: list[str] = ()) -> dict[str, Any]:
    """The run's own training task with the export as its run command, on one node; `secrets`: more variables
    forwarded as SkyPilot secrets (the Hub token an upload needs), by name only in the YAML."""
    from sdk.backends.node_setup import build_dist
    from sdk.backends.skypilot import task_config, validate

    config = task_config(spec, folder, build_dist(), managed=False)
    config.update(name=export_cluster(folder.run_id, name), num_nodes=1,
                  run=export_run_script(folder, options_json, name=name, force=force))
    if secrets:
        config["secrets"] = {**config.get("secrets", {}), **{n: None for n in secrets}}
    validate(config)
    return config


def export_on_node(folder: Any, spec: Any, options_json: str, *, name: str, force: bool, secrets: list[str] = (),
                   timeout: float = 6 * 3600) -> dict[str, Any]:
    """Launch the export task, wait for its job, take the cluster down; the node's outcome, or its refusal raised."""
    import os

    import sky

    from sdk.backends.skypilot import build_task, forwarded_secrets

    config = export_task_config(folder, spec, options_json, name=name, force=force, secrets=secrets)
    cluster = config["name"]
    folder.store.delete_prefix(folder.key(outcome_key(name)))
    names = [*forwarded_secrets(spec), *secrets]
    task = build_task(config, {n: os.environ[n] for n in names if n in os.environ})
    print(f"[finetune export] on a node: SkyPilot cluster {cluster}", flush=True)
    try:
        try:
            job_id, _ = sky.stream_and_get(sky.launch(task, cluster_name=cluster))
        except Exception as exc:
            raise LaunchError(f"SkyPilot could not launch the export {cluster}: {type(exc).__name__}: {exc}") from None
        state = wait_for_job(cluster, job_id, timeout=timeout)
        return read_outcome(folder, name, state, cluster)
    finally:
        try:
            sky.get(sky.down(cluster))
        except Exception as exc:  # said, not raised: the export's own outcome matters more
            print(f"[finetune export] warning: could not take {cluster} down ({exc}): finetune down {cluster}",
                  flush=True)


def wait_for_job(cluster: str, job_id: int, *, timeout: float, poll: float = 5.0) -> str:
    import sky

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = sky.get(sky.job_status(cluster, [job_id])).get(job_id)
        state = getattr(status, "name", str(status)).split(".")[-1] if status is not None else ""
        if state in TERMINAL_JOB:
            return state
        time.sleep(poll)
    raise LaunchError(f"the export on {cluster} did not end within {timeout / 3600:.1f} h")


def read_outcome(folder: Any, name: str, state: str, cluster: str) -> dict[str, Any]:
    raw = folder.read_text(outcome_key(name))
    if raw is None:
        raise LaunchError(f"the export job on {cluster} ended {state} without a word in the run folder (its setup "
                          "failed before the export started); the cluster is taken down")
    outcome = json.loads(raw)
    folder.store.delete_prefix(folder.key(outcome_key(name)))
    if "error" in outcome:
        raise (ExportCheckFailed if outcome.get("exit") == 1 else FinetuneError)(outcome["error"] + f" (on {cluster})")
    return outcome
