"""SkyPilot backend: a spec compiled into a `sky.Task` that runs the same node code on every node.

- setup installs the exact client package (a wheel built from this source tree, file-mounted; or the
  released version from PyPI) with `finetune[train]` and the client's own versions of the training
  stack as pip constraints, into a venv keyed on both;
- run starts `python -m launch.launcher`, which builds the torchrun command from SKYPILOT_* env;
- secrets (spec.secrets, and AWS credentials when the output is in S3) travel as SkyPilot secrets:
  their values never appear in the task YAML, spec.json, logs or the registry;
- on-demand runs launch a cluster; spot runs are managed jobs that recover onto new VMs and resume
  from the newest committed checkpoint of the same run folder (the node checks SKYPILOT_TASK_ID).

Every task passes SkyPilot's own schema validation before anything is launched.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sdk.backends import BackendView, DryRun, bounded
from sdk.backends.node_setup import (  # noqa: F401  (re-exported)
    NODE_DIST,
    PINNED,
    TORCH_DEFAULT,
    _indent,
    build_dist,
    constraints,
    extras_for,
    install_env,
    installer_stage,
    kernels_stage,
    project_root,
    setup_script,
    stack_key,
    torch_stage,
    venv_stage,
)
from sdk.core.billing import Billing, BillingView
from sdk.core.errors import FinetuneError, LaunchError, SpecError
from sdk.core.spec import FineTuneSpec
from sdk.objectives import PLUGIN_ENV  # objective plugins load on the node as here
from sdk.store.runfolder import TERMINAL, RunFolder

AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
AWS_PLAIN = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
# Where autostop/autodown exist only for container clusters, a cluster is left up: `finetune down`.
NO_AUTODOWN = ("slurm", "kubernetes", "k8s", "ssh")


def cluster_name(run_id: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return f"ft-{name}"[:48].rstrip("-")


def infra_of(spec: FineTuneSpec) -> str | None:
    r = spec.resources
    if r.region and not r.infra:
        raise SpecError("resources.region: name the cloud too, in resources.infra (e.g. infra: aws, region: us-east-1)")
    if r.infra and r.region and "/" not in r.infra:
        return f"{r.infra}/{r.region}"
    return r.infra


def run_script(folder: RunFolder) -> str:
    # The launcher reads SKYPILOT_* and execs torchrun (or the node directly for one process).
    return f"""set -uo pipefail
VENV="${{FINETUNE_VENV:-$HOME/.finetune/venv-$FINETUNE_STACK_KEY}}"
mkdir -p ~/.finetune/logs
export FINETUNE_LOG_FILE=~/.finetune/logs/{folder.run_id}-node$SKYPILOT_NODE_RANK.log
"$VENV/bin/python" -m launch.launcher --run-dir {shlex.quote(folder.uri)} 2>&1 | tee -a "$FINETUNE_LOG_FILE"
exit "${{PIPESTATUS[0]}}"
"""


# -------------------------------------------------------------------------------------- the task


def forwarded_secrets(spec: FineTuneSpec) -> list[str]:
    from sdk.backends.tracking import forwarded_env

    names = list(spec.secrets)
    names += [n for n in forwarded_env(spec) if n not in names]
    if spec.output.startswith("s3://"):
        names += [n for n in AWS_SECRETS if n in os.environ and n not in names]
    return names


def resources_config(spec: FineTuneSpec, *, managed: bool) -> dict[str, Any]:
    r = spec.resources
    res: dict[str, Any] = {}
    infra = infra_of(spec)
    if infra:
        res["infra"] = infra
    for key, value in (("cpus", r.cpus), ("memory", r.memory), ("disk_size", r.disk_size), ("image_id", r.image)):
        if value is not None:
            res[key] = value
    if r.spot:
        res["use_spot"] = True
    if managed:
        # Preemptions are always recovered; a crash of the node itself is retried once (it resumes).
        res["job_recovery"] = {"strategy": "FAILOVER", "max_restarts_on_errors": 1}
    if r.accelerators and r.nodes > 1:
        res["network_tier"] = "best"  # InfiniBand / GPUDirect where the cloud has it: multi-node GPU traffic
    if r.accelerators:
        candidates = [{"accelerators": {name: count}} for name, count in r.accelerators.items()]
        if len(candidates) == 1:
            res.update(candidates[0])
        else:
            res["any_of"] = candidates  # SkyPilot picks the cheapest one that is available
    return res


def is_managed(spec: FineTuneSpec) -> bool:
    r = spec.resources
    return r.spot if r.managed is None else r.managed


def check_output(spec: FineTuneSpec) -> None:
    if not spec.output.startswith("s3://"):
        raise SpecError(
            f"output: {spec.output} is a directory on this machine, which cloud nodes cannot reach; "
            "use an s3:// store for SkyPilot runs (or --local)"
        )


def task_config(spec: FineTuneSpec, folder: RunFolder, dist: dict[str, Path], *, managed: bool | None = None) -> dict[str, Any]:
    """The task as a SkyPilot YAML dict. Secrets appear by name only, with no value."""
    from sdk.backends.node_setup import setup_for

    check_output(spec)
    managed = is_managed(spec) if managed is None else managed
    setup, node_envs = setup_for(spec, dist, folder)  # the lock and stored environment, looked up in the store
    envs = {**spec.env, "FINETUNE_RUN_DIR": folder.uri, **node_envs}
    envs.update({n: os.environ[n] for n in (*AWS_PLAIN, PLUGIN_ENV) if n in os.environ and n not in spec.env})
    config: dict[str, Any] = {
        "name": cluster_name(folder.run_id),
        "num_nodes": spec.resources.nodes,
        "resources": resources_config(spec, managed=managed),
        "envs": envs,
        "setup": setup,
        "run": run_script(folder),
    }
    return finish_task(config, spec, dist)


def finish_task(config: dict[str, Any], spec: FineTuneSpec, dist: dict[str, Path] | None) -> dict[str, Any]:
    """Secrets by name, the client's wheel as a file mount, then SkyPilot's schema: every task we write."""
    secrets = forwarded_secrets(spec)
    if secrets:
        config["secrets"] = {name: None for name in secrets}
    if dist:
        # One folder (the wheel and its constraints): one sync per node instead of one per file.
        config["file_mounts"] = {NODE_DIST: str(dist["wheel"].parent)}
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """SkyPilot's own schema, then its Task parser (which checks resources and infra names)."""
    from sky.utils import common_utils, schemas

    try:
        common_utils.validate_schema(config, schemas.get_task_schema(), "Invalid task YAML: ")
    except Exception as exc:  # sky raises its own InvalidSkyPilotConfigError / ValueError types
        raise SpecError(f"the generated SkyPilot task is invalid: {exc}") from None


def build_task(config: dict[str, Any], secret_values: dict[str, str]) -> Any:
    import sky

    config = copy.deepcopy(config)  # from_yaml_config empties the dict it is given
    names = config.pop("secrets", None) or {}  # by name only in the YAML; values go straight to the Task
    try:
        task = sky.Task.from_yaml_config(config)
    except Exception as exc:
        raise SpecError(f"resources: SkyPilot rejects the task: {exc}") from None
    values = {name: secret_values[name] for name in names if name in secret_values}
    if values:
        task.update_secrets(values)
    return task


def to_yaml(config: dict[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "|" if "\n" in value else None  # scripts read as scripts
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(config, Dumper=Dumper, sort_keys=False, width=120)


# ------------------------------------------------------------------------------------- the backend

CANCEL_CONFIRM_S = 20  # how long cancel waits for SkyPilot to report the job stopped


def status_timeout() -> float:
    """Seconds a status query may take (FINETUNE_BACKEND_TIMEOUT, default 15): `finetune status` never hangs."""
    try:
        return float(os.environ.get("FINETUNE_BACKEND_TIMEOUT", "15"))
    except ValueError:
        return 15.0


# SkyPilot's job states → ours. Cluster jobs and managed jobs have different enums; names suffice.
STATES = {
    "INIT": "provisioning", "PENDING": "provisioning", "SETTING_UP": "provisioning", "STARTING": "provisioning",
    "RUNNING": "running", "RECOVERING": "recovering", "SUCCEEDED": "succeeded", "CANCELLING": "running",
    "CANCELLED": "cancelled", "FAILED": "failed", "FAILED_SETUP": "failed", "FAILED_DRIVER": "failed",
    "FAILED_PRECHECKS": "failed", "FAILED_NO_RESOURCE": "failed", "FAILED_CONTROLLER": "failed",
}


class SkyPilotRunInfo(BaseModel):
    """A SkyPilot run: a job on cluster `cluster`, or (managed) a managed job named `cluster`."""

    managed: bool
    cluster: str
    job_id: int | None = None
    autodown: bool = False


class SkyPilotBackend:
    name = "skypilot"
    Info = SkyPilotRunInfo

    def check(self, spec: FineTuneSpec) -> None:
        missing = [name for name in spec.secrets if name not in os.environ]
        if missing:
            raise SpecError(f"secrets: {', '.join(missing)} not set in this environment")
        check_output(spec)

    def submit(self, spec: FineTuneSpec, folder: RunFolder) -> SkyPilotRunInfo:
        import sky

        managed = is_managed(spec)
        config = task_config(spec, folder, build_dist(), managed=managed)
        task = build_task(config, {n: os.environ[n] for n in forwarded_secrets(spec) if n in os.environ})
        cluster = config["name"]
        try:
            if managed:
                job_ids, _ = sky.stream_and_get(sky.jobs.launch(task, name=cluster))
                return SkyPilotRunInfo(managed=True, cluster=cluster, job_id=(job_ids or [None])[0])
            infra = (spec.resources.infra or "").split("/")[0]
            autodown = {} if infra in NO_AUTODOWN else {"down": True, "idle_minutes_to_autostop": 5}
            job_id, _ = sky.stream_and_get(sky.launch(task, cluster_name=cluster, **autodown))
        except Exception as exc:
            raise LaunchError(f"SkyPilot could not launch {cluster}: {type(exc).__name__}: {exc}") from None
        return SkyPilotRunInfo(managed=False, cluster=cluster, job_id=job_id, autodown=bool(autodown))

    def _sky_state(self, info: SkyPilotRunInfo) -> str | None:
        import sky

        def ask() -> Any:
            if info.managed:
                records = sky.get(sky.jobs.queue_v2(refresh=False, job_ids=[info.job_id]))[0]
                return records[0].status if records else None
            return sky.get(sky.job_status(info.cluster, [info.job_id])).get(info.job_id)

        status = bounded(ask, status_timeout(), "the SkyPilot API server")
        return None if status is None else getattr(status, "name", str(status)).split(".")[-1]

    def status(self, folder: RunFolder, info: SkyPilotRunInfo) -> BackendView | None:
        """SkyPilot's view when the store cannot know: provisioning, or a node that died without a word."""
        stored = folder.status().get("state")
        if stored in TERMINAL:
            return None
        try:
            state = STATES.get(self._sky_state(info) or "")
        except TimeoutError as exc:  # a slow API server: the store's view, said to be one
            return BackendView(state=stored or "pending", note=f"{exc}: this is the run folder's view")
        except Exception:  # the cluster is gone (autodown) or the API server is unreachable: trust the store
            return None
        if state in (None, "running") or state == stored:
            return None
        if state == "provisioning" and stored != "pending":
            return None  # the node already reported; SkyPilot's job state lags behind it
        if state in TERMINAL and folder.status().get("state") in TERMINAL:  # the node's own final word landed meanwhile
            return None
        if state in TERMINAL and stored == "cancelling":
            return BackendView(state="cancelled")  # SkyPilot confirms the cancel (the job may end FAILED when killed)
        if state == "succeeded":  # the job exited 0 but the node never wrote its final word: nothing says it trained
            return BackendView(state="failed", error=f"SkyPilot reports the job SUCCEEDED but the node never wrote its "
                               f"final status{'' if folder.adapter_manifest() else ' and no adapter was committed'}; "
                               f"see `finetune logs {folder.run_id}`")
        error = None if state in ("cancelled", "provisioning", "recovering") else \
            f"SkyPilot reports the job {state}; see `finetune logs {folder.run_id}`"
        return BackendView(state=state, error=error)

    def cancel(self, folder: RunFolder, info: SkyPilotRunInfo) -> None:
        import sky

        try:
            if info.managed:
                sky.get(sky.jobs.cancel(job_ids=[info.job_id]))
            else:
                sky.get(sky.cancel(info.cluster, job_ids=[info.job_id]))
        except Exception as exc:
            raise LaunchError(f"SkyPilot could not cancel {folder.run_id} (it reads cancelling until it stops): {exc}") from None
        # Written only once SkyPilot says the job stopped (it passes through CANCELLING for a few seconds);
        # until then the run reads cancelling.
        deadline = time.time() + CANCEL_CONFIRM_S
        stopped = False
        while not stopped and time.time() < deadline:
            try:
                stopped = STATES.get(self._sky_state(info) or "") in TERMINAL
            except Exception:
                break
            if not stopped:
                time.sleep(1)
        if stopped and folder.status().get("state") not in TERMINAL:
            folder.write_status("cancelled")

    def logs(self, folder: RunFolder, info: SkyPilotRunInfo) -> str | None:
        import sky

        buffer = io.StringIO()
        try:
            if info.managed:
                sky.jobs.tail_logs(job_id=info.job_id, follow=False, output_stream=buffer)
            else:
                sky.tail_logs(info.cluster, info.job_id, follow=False, output_stream=buffer)
        except Exception:
            return None  # the cluster is gone: the store's copy of the log is the record
        return buffer.getvalue() or None

    def serial_launch(self, spec: FineTuneSpec) -> bool:
        """Must launches onto this infra go one at a time? On Slurm, SkyPilot installs its runtime for each
        cluster through the user's shared home; two installs at once were seen to leave one cluster's
        job without `sky` (1 of 3 concurrent launches on the test harness). Cloud VMs provision apart."""
        infra = (infra_of(spec) or "").split("/")[0]
        return infra in ("slurm", "ssh")

    def left_up(self, info: SkyPilotRunInfo) -> bool:
        """Does this run's cluster stay up after the job (infra without autodown)?"""
        return not info.managed and not info.autodown

    def billing(self, folder: RunFolder, info: SkyPilotRunInfo, billing: Billing) -> BillingView | None:
        import sky

        from sdk.backends.skypilot_billing import billing_view, run_clusters

        rows = bounded(lambda: sky.get(sky.cost_report(days=30)), status_timeout(), "the SkyPilot API server")
        return billing_view(list(rows or []), run_clusters(info.cluster, info.managed, info.job_id), billing)

    def down(self, info: SkyPilotRunInfo) -> None:
        import sky

        if info.managed:
            raise LaunchError("managed jobs tear down their own clusters")
        try:
            sky.get(sky.down(info.cluster))
        except Exception as exc:
            raise LaunchError(f"SkyPilot could not tear down {info.cluster}: {exc}") from None

    def dry_run(self, spec: FineTuneSpec) -> DryRun:
        """Accelerators, nodes, the planner's memory per process, forwarded secrets, what setup installs, and
        the task YAML as it would be submitted; provisions nothing and needs no cloud credentials."""
        from sdk.backends.torch_index import explain
        from sdk.core.plan import estimate
        from sdk.store import open_store
        from sdk.store.runfolder import new_run_id

        accel = spec.resources.accelerators or {}
        wanted = ", ".join(f"{name}:{count}" for name, count in accel.items()) or "none (CPU nodes)"
        lines = [f"accelerators: {wanted} × {spec.resources.nodes} node(s); infra: {spec.resources.infra or 'any'}"]
        try:
            est = estimate(spec)
        except FinetuneError as exc:
            lines.append(f"estimated memory: unknown ({exc})")
        else:
            lines.append(f"estimated memory per process: {est.required_bytes / 2**30:.1f} GiB "
                         f"(world size {est.world_size}, {est.trainable_params:,} trainable parameters)")
            for fit in (f for f in est.fits if f.gpu in accel):
                price = f", ${fit.hourly_usd:.2f}/h" if fit.hourly_usd is not None else ""
                lines.append(f"  {fit.gpu}: {fit.memory_gb} GB, {'fits' if fit.fits else 'DOES NOT FIT'}{price}")
        secrets = forwarded_secrets(spec)
        if secrets:
            lines.append(f"secrets forwarded by name (values never written): {', '.join(secrets)}")
        pins = dict(line.split("==", 1) for line in constraints().splitlines() if "==" in line)
        lines.append(f"node setup: finetune[{extras_for(spec)}]; {explain(pins.get('torch', TORCH_DEFAULT))}")
        folder = RunFolder(open_store(spec.output), new_run_id(spec.name))
        return DryRun(lines=lines, task_yaml=to_yaml(task_config(spec, folder, build_dist())))
