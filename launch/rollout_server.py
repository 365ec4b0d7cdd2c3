"""A vLLM server for a run's rollouts (objective.rollouts: vllm_server): `trl vllm-serve` on the node's last GPU, the
training on the others. The launcher (launch.launcher.rollout_server) builds both commands from the spec with the pure
functions here, then execs `python -m launch.rollout_server` (a fresh process: the GPU check's CUDA context goes with
the old one), which starts the server, waits for its /health within SERVER_START_TIMEOUT_S, runs the training as its
child, forwards SIGTERM/SIGINT to it, and stops the server by its PID when the training ends, fails or is cancelled.
The server runs in a session of its own so that stopping its process group also stops vLLM's engine processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sdk.core.modelref import names_a_file, tiny_arch
from sdk.objectives import objective_of

PLAN_ENV = "FINETUNE_ROLLOUT_SERVER_PLAN"  # the launcher hands this process its commands as JSON
# A cold start downloads the model, loads it and captures CUDA graphs: minutes for a big model (trl itself waits 240 s
# for a server the user started by hand).
SERVER_START_TIMEOUT_S = 900
STOP_GRACE_S = 30  # SIGTERM, then this long, then SIGKILL


@dataclass(frozen=True)
class ServerPlan:
    """The server's command, what it adds to the environment, and where the trainer finds it."""

    argv: list[str]
    env: dict[str, str]
    url: str  # the trainer's vllm_server_base_url (launch.gpu.VLLM_SERVER_URL)

    @property
    def health_url(self) -> str:
        return f"{self.url}/health"


def split_gpus(gpus: int, visible: str | None) -> tuple[str, str]:
    """(the training GPUs, the serving GPU) as CUDA_VISIBLE_DEVICES values: the last GPU the node shows serves."""
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    if len(ids) < 2:
        raise ValueError(f"objective.rollouts: vllm_server needs 2+ GPUs on the node (one serves, the others train); "
                         f"this node shows {len(ids)}")
    return ",".join(ids[:-1]), ids[-1]


def vllm_server_command(spec: Any, *, port: int, gpu: str, python: str = sys.executable) -> ServerPlan:
    """`trl vllm-serve` for the spec's base model on GPU `gpu`, on 127.0.0.1:port (the trainer is on this node; nothing
    else should reach the server), its context long enough for a prompt and an answer (data.max_length +
    max_completion_length). vLLM reads a Hub id or a model directory, so a tiny model or a single checkpoint file
    (pkg://, .gguf) is refused: vllm_colocate serves what the trainer loaded."""
    model = spec.model
    if tiny_arch(model.id) is not None or names_a_file(model):
        raise ValueError(f"objective.rollouts: vllm_server starts vLLM on model.id {model.id!r}, which vLLM cannot "
                         "read (a Hub id or a model directory can be): use vllm_colocate")
    rollouts = objective_of(spec).plan.rollouts
    completion = rollouts(spec.objective)[1] if rollouts else 0
    argv = [python, "-m", "trl.cli.main", "vllm-serve", "--model", model.id, "--host", "127.0.0.1", "--port", str(port),
            "--max_model_len", str(spec.data.max_length + completion)]
    if model.revision:
        argv += ["--revision", model.revision]
    if model.trust_remote_code:
        argv += ["--trust_remote_code", "true"]
    return ServerPlan(argv=argv, env={"CUDA_VISIBLE_DEVICES": gpu}, url=f"http://127.0.0.1:{port}")


def wait_healthy(url: str, server: Any, *, timeout_s: float, poll_s: float = 2.0,
                 get: Callable[[str], int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once GET url answers 200; RuntimeError when the server exits first or the time is up."""
    get = get or _status_of
    deadline = clock() + timeout_s
    while True:
        code = server.poll()
        if code is not None:
            raise RuntimeError(f"the vLLM server for objective.rollouts exited with code {code} before it was ready "
                               "(its log is above)")
        if get(url) == 200:
            return
        if clock() >= deadline:
            raise RuntimeError(f"the vLLM server for objective.rollouts did not answer {url} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def _status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (our own server on 127.0.0.1)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def stop(server: subprocess.Popen) -> None:
    """Stop the server and its engine processes: SIGTERM to its process group (its PID: it leads its session), then
    SIGKILL after STOP_GRACE_S."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10)):
        if not _signal_group(server, sig):
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _signal_group(server: subprocess.Popen, sig: int) -> bool:
    """Signal the server's process group (its PID leads it); False once it is gone."""
    if server.poll() is not None:
        return False
    try:
        os.killpg(server.pid, sig)
    except ProcessLookupError:
        return False
    return True


def supervise(server: ServerPlan, train_argv: list[str], train_env: dict[str, str], *,
              failed: Callable[[str], None] = lambda error: None) -> int:
    """Start the server, wait until it answers, train, stop the server; the training's exit code. `failed` records
    a server that never became ready (the run folder's status)."""
    child: subprocess.Popen | None = None
    print(f"[finetune] rollouts: starting a vLLM server on GPU {server.env['CUDA_VISIBLE_DEVICES']}: "
          f"{' '.join(server.argv)}", flush=True)
    proc = subprocess.Popen(server.argv, env={**os.environ, **server.env}, start_new_session=True)

    def forward(signum: int, _frame: Any) -> None:
        # The server starts stopping at once: a backend that cancels SIGKILLs this process after its own grace
        # (sdk.machine.processes.stop_group), maybe before `finally` is done with it.
        _signal_group(proc, signal.SIGTERM)
        if child is None:
            raise SystemExit(128 + signum)  # still starting the server: `finally` stops it
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        wait_healthy(server.health_url, proc, timeout_s=SERVER_START_TIMEOUT_S)
        print(f"[finetune] rollouts: vLLM server ready at {server.url} (pid {proc.pid})", flush=True)
        child = subprocess.Popen(train_argv, env=train_env)
        return child.wait()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        failed(str(exc))
        return 2
    finally:
        stop(proc)


def handoff(server: ServerPlan, train_argv: list[str], run_dir: str) -> dict[str, str]:
    """The environment entry that hands this module's main its commands (the launcher execs it)."""
    return {PLAN_ENV: json.dumps({"server": asdict(server), "train": train_argv, "run_dir": run_dir})}


def main() -> int:
    from sdk.store.runfolder import RunFolder

    plan = json.loads(os.environ[PLAN_ENV])
    env = {k: v for k, v in os.environ.items() if k != PLAN_ENV}

    def failed(error: str) -> None:
        RunFolder.from_uri(plan["run_dir"]).write_status("failed", error=error, phase="starting the vLLM server")

    return supervise(ServerPlan(**plan["server"]), plan["train"], env, failed=failed)


if __name__ == "__main__":
    sys.exit(main())
