"""Launcher builder (rendered commands, DeepSpeed configs) and real multi-process training on CPU."""

from __future__ import annotations

import socket

import pytest
from helpers import run_node

from launch.launcher import Topology, build_plan, deepspeed_config, interface_for
from sdk.core.recipes import load_recipe

FAST = ["train.max_steps=6", "train.logging_steps=1", "data.max_samples=48", "eval.num_samples=4", "eval.max_new_tokens=4"]


def skypilot_env(node_rank: int, ips: list[str], gpus: int) -> dict[str, str]:
    return {
        "SKYPILOT_NODE_RANK": str(node_rank),
        "SKYPILOT_NODE_IPS": "\n".join(ips) + "\n",
        "SKYPILOT_NUM_NODES": str(len(ips)),
        "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus),
    }


def a_local_ipv4() -> str:
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


def test_two_nodes_of_eight_gpus_render_one_torchrun_rendezvous():
    spec = load_recipe("qwen7b-2node-zero3")
    run_dir = "s3://my-bucket/finetune-runs/qwen7b-2node-zero3-x"
    for rank in (0, 1):
        topology = Topology.from_env(skypilot_env(rank, ["10.0.0.1", "10.0.0.2"], 8))
        plan = build_plan(spec, run_dir, topology, python="python", env={})
        assert plan.launcher == "torchrun" and plan.world_size == 16 and plan.nproc_per_node == 8
        assert plan.argv == [
            "python", "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "8",
            "--master-addr", "10.0.0.1", "--master-port", "29500", "--max-restarts", "0",
            "-m", "launch", "--run-dir", run_dir,
        ]
    assert "--master-port 29500" in plan.render()


def test_socket_interface_is_pinned_to_the_one_carrying_the_node_ip():
    spec = load_recipe("tiny", ["distributed.strategy=ddp"])
    ip = a_local_ipv4()
    interface = interface_for(ip)
    assert interface
    plan = build_plan(spec, "/tmp/r", Topology.from_env(skypilot_env(1, ["10.9.9.9", ip], 1)), env={})
    assert plan.env == {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface}
    assert plan.argv[plan.argv.index("--master-addr") + 1] == "10.9.9.9"  # head = first line
    # a user's own choice wins
    plan = build_plan(spec, "/tmp/r", Topology.from_env(skypilot_env(1, ["10.9.9.9", ip], 1)), env={"NCCL_SOCKET_IFNAME": "ib0"})
    assert "NCCL_SOCKET_IFNAME" not in plan.env and plan.env["GLOO_SOCKET_IFNAME"] == interface


def test_single_node_plans():
    assert Topology.from_env({}).num_nodes == 1
    one = build_plan(load_recipe("tiny"), "/tmp/r", Topology(), python="py")
    assert one.argv == ["py", "-m", "launch", "--run-dir", "/tmp/r"] and one.launcher == "python"
    # DeepSpeed needs a rendezvous even for one process
    ds = build_plan(load_recipe("tiny", ["distributed=deepspeed"]), "/tmp/r", Topology(), python="py")
    assert ds.launcher == "torchrun" and "127.0.0.1" in ds.argv
    two = build_plan(load_recipe("tiny", ["distributed.nproc_per_node=2"]), "/tmp/r", Topology(), python="py")
    assert two.world_size == 2 and two.argv[two.argv.index("--nproc-per-node") + 1] == "2"
    # GPUs per node default the process count
    eight = build_plan(load_recipe("tiny"), "/tmp/r", Topology(gpus_per_node=8), python="py")
    assert eight.nproc_per_node == 8


def test_inconsistent_skypilot_environment_is_named():
    with pytest.raises(ValueError, match="SKYPILOT_NUM_NODES=3"):
        Topology.from_env(skypilot_env(0, ["10.0.0.1", "10.0.0.2"], 8) | {"SKYPILOT_NUM_NODES": "3"})


def test_deepspeed_configs_come_from_the_spec():
    z2 = deepspeed_config(load_recipe("tiny", ["distributed=deepspeed"]))
    assert z2["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in z2["zero_optimization"]
    assert z2["train_micro_batch_size_per_gpu"] == "auto" and z2["gradient_accumulation_steps"] == "auto"
    z3 = deepspeed_config(load_recipe("tiny", ["distributed.strategy=deepspeed", "distributed.zero_stage=3", "distributed.offload=true"]))
    zero = z3["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


def train_two_processes(path, strategy: list[str]):
    spec = load_recipe("tiny", [*FAST, *strategy, "distributed.nproc_per_node=2", f"output={path}"])
    return run_node(spec, path)


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    """The plain DDP run every other strategy is compared with, trained once whichever test asks first."""
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("ddp")
    result, folder = train_two_processes(path, ["distributed.strategy=ddp"])
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = load_file(str(path / "r1" / "adapter" / "adapter_model.safetensors"))
    return result, folder, adapter, [g["base"] for g in folder.read_json("summary.json")["generations"]]


@pytest.mark.parametrize(
    "strategy",
    [
        ["distributed.strategy=ddp"],
        ["distributed.strategy=deepspeed", "distributed.zero_stage=2"],
        ["distributed.strategy=deepspeed", "distributed.zero_stage=3"],
        ["distributed.strategy=deepspeed", "distributed.zero_stage=2", "distributed.offload=true"],
    ],
    ids=["ddp", "zero2", "zero3", "zero2-offload"],
)
def test_two_processes_train_the_tiny_model(tmp_path, strategy, ddp_reference):
    from safetensors.torch import load_file

    if strategy == ["distributed.strategy=ddp"]:
        result, folder = ddp_reference[:2]
    else:
        result, folder = train_two_processes(tmp_path, strategy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.distributed.run" in result.stdout and "--nproc-per-node 2" in result.stdout
    summary = folder.read_json("summary.json")
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert summary["strategy"] == strategy[0].split("=")[1]
    # rank 0 alone writes: one progress line per step, one final line
    assert result.stdout.count("[finetune] step 6/6 loss") == 1 and result.stdout.count("succeeded:") == 1
    rows = folder.metrics()
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    adapter = load_file(str(folder.store.url(folder.key("adapter/adapter_model.safetensors"))))
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)  # trained, not empty shards
    if "distributed.zero_stage=3" in strategy:  # the model was never whole on a rank: loaded partitioned
        assert "ZeRO-3: loaded under zero.Init, 21 parameters partitioned over 2 ranks" in result.stdout
        assert (summary["trainable_params"], summary["total_params"]) == (17_408, 165_184)  # shards counted whole
    if "offload=true" in strategy[-1]:
        assert "DeepSpeedCPUAdam" in result.stdout + result.stderr  # offloaded states updated by DeepSpeed's CPU Adam
    base_answers = [g["base"] for g in summary["generations"]]
    assert base_answers  # the base model evaluated before training (under ZeRO-3: gathered module by module)
    # the same data, seed and global batch give the same adapter whatever the strategy, and the same base answers
    _, _, ddp, ddp_answers = ddp_reference
    assert max(float((adapter[k] - ddp[k]).abs().max()) for k in ddp) < 1e-4, strategy
    assert base_answers == ddp_answers, strategy


def test_fsdp_on_cpu_is_refused_instead_of_silently_running_ddp(tmp_path):
    spec = load_recipe("tiny", [*FAST, "distributed.strategy=fsdp", "distributed.nproc_per_node=2", f"output={tmp_path}"])
    result, folder = run_node(spec, tmp_path)
    assert result.returncode != 0
    status = folder.status()
    assert status["state"] == "failed" and "fsdp needs GPUs" in status["error"]
