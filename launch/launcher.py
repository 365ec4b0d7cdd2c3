"""Launcher builder: the command that starts `python -m launch` on every rank of every node.

`python -m launch.launcher --run-dir URI` reads the spec from the run folder and the node's
environment, then execs that command. SkyPilot sets SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS
(newline-separated, head first), SKYPILOT_NUM_NODES and SKYPILOT_NUM_GPUS_PER_NODE; without them
the run is a single node (this machine).

Every multi-process run goes through torchrun, DeepSpeed included: the Trainer initialises DeepSpeed
from the generated config, and torchrun needs no ssh/pdsh between nodes (the `deepspeed` launcher
does). accelerate is not used as a launcher: `accelerate launch --cpu --num_processes 2` silently
runs a single process.

A run whose rollouts are a vLLM server (objective.rollouts: vllm_server) trains on all but the node's last GPU, and
the launcher execs launch.rollout_server instead, which serves on that GPU while the training runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.core.spec import FineTuneSpec

if TYPE_CHECKING:
    from launch.rollout_server import ServerPlan

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Topology:
    """Where this process sits: node count and rank, node IPs (head first), accelerators per node."""

    num_nodes: int = 1
    node_rank: int = 0
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    gpus_per_node: int = 0

    @property
    def head_ip(self) -> str:
        return self.node_ips[0]

    @property
    def node_ip(self) -> str:
        return self.node_ips[self.node_rank] if self.node_rank < len(self.node_ips) else self.node_ips[0]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Topology:
        env = os.environ if env is None else env
        ips = tuple(line.strip() for line in env.get("SKYPILOT_NODE_IPS", "").splitlines() if line.strip())
        if not ips:
            return cls(gpus_per_node=local_gpu_count(env))
        num_nodes = int(env.get("SKYPILOT_NUM_NODES") or len(ips))
        node_rank = int(env.get("SKYPILOT_NODE_RANK") or 0)
        if len(ips) != num_nodes or not 0 <= node_rank < num_nodes:
            raise ValueError(
                f"inconsistent SkyPilot environment: SKYPILOT_NUM_NODES={num_nodes}, SKYPILOT_NODE_RANK={node_rank}, "
                f"{len(ips)} line(s) in SKYPILOT_NODE_IPS"
            )
        gpus = int(env.get("SKYPILOT_NUM_GPUS_PER_NODE") or 0)
        return cls(num_nodes=num_nodes, node_rank=node_rank, node_ips=ips, gpus_per_node=gpus)


def local_gpu_count(env: Mapping[str, str]) -> int:
    """GPUs visible here, without importing torch: CUDA_VISIBLE_DEVICES, else /dev/nvidiaN."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def interface_for(ip: str) -> str | None:
    """The network interface that carries `ip` (gloo would otherwise resolve the hostname, often to
    127.0.1.1, and fail to connect across nodes)."""
    try:
        import psutil
    except ImportError:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LaunchPlan:
    """The command for this node and the environment it adds. `launcher` is 'python' or 'torchrun'."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    launcher: str = "python"
    world_size: int = 1
    nproc_per_node: int = 1

    def render(self) -> str:
        assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*assignments, shlex.join(self.argv)])


def processes_per_node(spec: FineTuneSpec, topology: Topology, *, serving: int = 0) -> int:
    """One per GPU, less the `serving` GPUs a rollout server takes (launch.rollout_server), unless the spec says."""
    nproc = spec.distributed.nproc_per_node or max(topology.gpus_per_node - serving, 1)
    if serving and nproc > topology.gpus_per_node - serving:
        raise ValueError(f"distributed.nproc_per_node: {nproc} processes, but {serving} of this node's "
                         f"{topology.gpus_per_node} GPUs serve rollouts (objective.rollouts: vllm_server)")
    return nproc


def rollout_server(spec: FineTuneSpec, topology: Topology, env: Mapping[str, str], *, python: str = sys.executable,
                   port: int | None = None) -> tuple[ServerPlan, dict[str, str]] | None:
    """(the vLLM server, the training's added environment) for a run whose rollouts are vllm_server, else None; a
    ValueError naming objective.rollouts where this node cannot serve (launch.gpu.rollout_choice)."""
    if getattr(spec.objective, "rollouts", None) != "vllm_server":
        return None
    from launch.gpu import VLLM_PORT, VLLM_SERVER_URL, rollout_choice, vllm_installed
    from launch.rollout_server import split_gpus, vllm_server_command

    gpus = topology.gpus_per_node
    rollout_choice("vllm_server", cuda=gpus > 0, vllm_installed=vllm_installed(), gpus_on_node=gpus,
                   nodes=topology.num_nodes)
    train, serve = split_gpus(gpus, env.get("CUDA_VISIBLE_DEVICES"))
    # trl's default port where it is free: a trainer that was not told the URL still finds the server
    server = vllm_server_command(spec, port=port or (VLLM_PORT if port_free(VLLM_PORT) else free_port()), gpu=serve,
                                 python=python)
    return server, {"CUDA_VISIBLE_DEVICES": train, VLLM_SERVER_URL: server.url}


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def build_plan(
    spec: FineTuneSpec,
    run_dir: str,
    topology: Topology,
    *,
    python: str = sys.executable,
    master_port: int | None = None,
    env: Mapping[str, str] | None = None,
    serving: dict[str, str] | None = None,
) -> LaunchPlan:
    """The command that starts the node entrypoint on every rank of this node; `serving`: the training's environment
    beside a rollout server on one of the node's GPUs (rollout_server)."""
    env = os.environ if env is None else env
    nproc = processes_per_node(spec, topology, serving=1 if serving else 0)
    world = nproc * topology.num_nodes
    node_args = ["-m", "launch", "--run-dir", run_dir]
    # DeepSpeed needs a launcher's rendezvous even for one process (else it asks for mpi4py), and so does
    # accelerate's FSDP (a process group of one).
    if world == 1 and spec.distributed.strategy not in ("deepspeed", "fsdp"):
        return LaunchPlan(argv=[python, *node_args], env=dict(serving or {}))
    added: dict[str, str] = dict(serving or {})
    interface = interface_for(topology.node_ip)
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if interface and var not in env:
            added[var] = interface
    if topology.num_nodes == 1:
        master, port = "127.0.0.1", master_port or free_port()
    else:
        master, port = topology.head_ip, master_port or int(env.get("FINETUNE_MASTER_PORT") or DEFAULT_MASTER_PORT)
    argv = [
        python, "-m", "torch.distributed.run",
        "--nnodes", str(topology.num_nodes),
        "--node-rank", str(topology.node_rank),
        "--nproc-per-node", str(nproc),
        "--master-addr", master,
        "--master-port", str(port),
        "--max-restarts", "0",  # a failed rank fails the run; resuming is the store's job, not torchrun's
        *node_args,
    ]
    return LaunchPlan(argv=argv, env=added, launcher="torchrun", world_size=world, nproc_per_node=nproc)


# ------------------------------------------------------------------------------- DeepSpeed config


def deepspeed_config(spec: FineTuneSpec) -> dict[str, Any]:
    """A DeepSpeed config from the spec. "auto" values are filled in by the Trainer from its arguments,
    so batch size, accumulation, clipping and precision have one source of truth: the spec."""
    dist = spec.distributed
    zero: dict[str, Any] = {
        "stage": dist.zero_stage or 2,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if zero["stage"] == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            # Without this a ZeRO-3 save writes no weights, only the sharded optimizer checkpoint.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    config: dict[str, Any] = {}
    if dist.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if offloadable_parameters(spec):
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # Offloaded optimizer states are updated on the CPU by DeepSpeed's own CPU Adam (the cpu_adam op,
        # built at install): DeepSpeed creates it from this section, the Trainer fills the "auto" values.
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
    return {
        **config,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def offloadable_parameters(spec: FineTuneSpec) -> bool:
    """Can ZeRO-3 move the parameters themselves to the CPU? Not a 4-bit base's: bitsandbytes computes
    on the packed weights where they live, and DeepSpeed's CPU copies drop their quantization state. There
    `offload` moves what can move, the optimizer states (the adapter's fp32 Adam moments)."""
    from sdk.core.methods import method_of

    return spec.distributed.zero_stage == 3 and not method_of(spec).quantized_base


def load_time_deepspeed_config(spec: FineTuneSpec, *, precision: str) -> dict[str, Any]:
    """The config zero.Init partitions the model with while `from_pretrained` loads it (before the Trainer
    exists): the spec's values where the Trainer would fill "auto", DeepSpeed's defaults for the bucket
    sizes the Trainer derives from the model."""
    t = spec.train
    config = deepspeed_config(spec)
    config.update(train_micro_batch_size_per_gpu=t.batch_size, gradient_accumulation_steps=t.grad_accum,
                  gradient_clipping=t.max_grad_norm, bf16={"enabled": precision == "bf16"}, fp16={"enabled": precision == "fp16"})
    config.pop("train_batch_size")  # DeepSpeed derives it (its world size is not known before its engine)
    config.pop("optimizer", None)
    config["zero_optimization"] = {k: v for k, v in config["zero_optimization"].items() if v != "auto"}
    return config


# ------------------------------------------------------------------------------------ entrypoint


def gpu_check(spec: FineTuneSpec, env: Mapping[str, str] | None = None, facts: Any = None) -> str | None:
    """The fail-fast error when this node cannot train as asked, else None: it expects GPUs and torch finds
    none, or a GPU it finds cannot run the job (no kernels for it, bf16 without Ampere, too few GPUs for the
    processes asked, free memory far below the planner's estimate). Before any rank loads the model."""
    from launch.gpu import (
        arch_error,
        bf16_error,
        expected_gpus,
        gpu_count_error,
        memory_error,
        missing_gpu_error,
        read_cuda_facts,
    )

    env = os.environ if env is None else env
    expected, why = expected_gpus(spec, env)
    if expected < 1:
        return None
    facts = facts or read_cuda_facts()
    return (missing_gpu_error(expected, why, facts, env) or arch_error(facts) or bf16_error(spec.train.precision, facts)
            or gpu_count_error(spec.distributed.nproc_per_node, facts) or memory_error(planned_bytes(spec), facts))


def planned_bytes(spec: FineTuneSpec) -> int | None:
    """The planner's per-GPU estimate, None where it cannot tell: an architecture it does not know, or memory it
    does not model (DeepSpeed's optimizer or parameter offload, Liger's fused loss, activation offloading), where it
    would refuse runs that fit. FSDP's offload it models (sdk.core.offload_plan)."""
    from sdk.core.errors import FinetuneError
    from sdk.core.plan import estimate

    deepspeed_offload = spec.distributed.offload and spec.distributed.strategy == "deepspeed"
    if deepspeed_offload or spec.train.liger_kernels or spec.train.activation_offloading:
        return None

    try:
        return int(estimate(spec, device="gpu").allocated_bytes)
    except (FinetuneError, KeyError, ValueError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.launcher", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="the run folder: <store URI>/<run_id>")
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError
    from sdk.core.spec import parse_spec
    from sdk.store.runfolder import SPEC, RunFolder

    try:
        folder = RunFolder.from_uri(args.run_dir)
        stored = folder.read_json(SPEC)
        if stored is None:
            raise FinetuneError(f"{folder.uri}/{SPEC}: no spec in the run folder")
        spec = parse_spec(stored, source=f"{folder.uri}/{SPEC}")
        topology = Topology.from_env()
        server = rollout_server(spec, topology, os.environ)
        plan = build_plan(spec, folder.uri, topology, serving=server[1] if server else None)
    except (FinetuneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"[finetune] launch: {plan.render()}", flush=True)
    if server:
        print(f"[finetune] launch: rollouts served on GPU {server[0].env['CUDA_VISIBLE_DEVICES']} by "
              f"{shlex.join(server[0].argv)}", flush=True)
    if args.print or os.environ.get("FINETUNE_LAUNCHER_PRINT") == "1":  # the env form reaches a cluster's run script
        return 0
    error = gpu_check(spec)
    if error:
        # Before any rank starts: a GPU VM whose torch cannot see its GPUs must not train on the CPU.
        if topology.node_rank == 0:
            folder.write_status("failed", error=error, phase="checking GPUs")
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    env = {**os.environ, **plan.env}
    # Ranks on one node share a scratch folder, so a checkpoint written by all of them is one folder.
    env.setdefault("FINETUNE_WORKDIR", tempfile.mkdtemp(prefix=f"finetune-{folder.run_id}-"))
    sys.stdout.flush()
    if server:  # a process that starts the server, trains beside it and stops it (same PID, as below)
        from launch.rollout_server import handoff

        os.execvpe(sys.executable, [sys.executable, "-m", "launch.rollout_server"],
                   {**env, **handoff(server[0], plan.argv, folder.uri)})
    os.execvpe(plan.argv[0], plan.argv, env)  # same PID: signals from the backend reach the launcher
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main())


def zero3_load_config(spec: FineTuneSpec, precision: str) -> Any:
    """Under ZeRO-3 the model loads partitioned (zero.Init): transformers reads this config while it lives, so the
    node keeps it until the end. None for any other strategy."""
    dist = spec.distributed
    if dist.strategy != "deepspeed" or dist.zero_stage != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(load_time_deepspeed_config(spec, precision=precision))
