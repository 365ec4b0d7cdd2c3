"""The SkyPilot backend's compiler: every recipe becomes a task that SkyPilot's own schema accepts, the
run script renders one rendezvous per node, and no secret value is ever written anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from sdk.backends.skypilot import build_dist, build_task, cluster_name, setup_script, task_config, to_yaml
from sdk.core.errors import SpecError
from sdk.core.recipes import load_recipe, shipped_recipes
from sdk.store import open_store
from sdk.store.runfolder import SPEC, RunFolder


def folder_for(spec, run_id="r-1"):
    return RunFolder(open_store(spec.output), run_id)


@pytest.fixture(scope="module")
def dist():
    return build_dist()


@pytest.mark.parametrize("recipe", [name for name, _ in shipped_recipes()])
def test_every_recipe_compiles_to_a_valid_task(recipe, dist):
    spec = load_recipe(recipe)
    if not spec.output.startswith("s3://"):
        spec = spec.model_copy(update={"output": "s3://bucket/runs"})
    folder = folder_for(spec)
    config = task_config(spec, folder, dist)  # validates with SkyPilot's schema
    task = build_task(config, {})
    assert task.num_nodes == spec.resources.nodes
    assert f"-m launch.launcher --run-dir {folder.uri} " in config["run"] and folder.uri.startswith(spec.output + "/")
    if spec.resources.spot:
        assert config["resources"]["job_recovery"]["strategy"] == "FAILOVER"
    accel = spec.resources.accelerators or {}
    if len(accel) > 1:
        assert config["resources"]["any_of"] == [{"accelerators": {k: v}} for k, v in accel.items()]


def test_the_wheel_is_this_source_tree(dist):
    import zipfile

    names = zipfile.ZipFile(dist["wheel"]).namelist()
    assert "launch/launcher.py" in names and "sdk/core/spec.py" in names
    pins = dist["constraints"].read_text()
    assert "torch==2.13.0" in pins and "transformers==" in pins


def test_spot_on_slurm_and_local_outputs_are_refused_by_field(dist):
    with pytest.raises(SpecError, match="output: .* cloud nodes cannot reach"):
        task_config(load_recipe("tiny", ["resources.infra=slurm"]), folder_for(load_recipe("tiny")), dist)
    with pytest.raises(SpecError, match="spot instances do not exist on infra 'slurm'"):
        load_recipe("tiny", ["resources.infra=slurm", "resources.spot=true"])
    with pytest.raises(SpecError, match="resources.region: name the cloud too"):
        spec = load_recipe("tiny", ["resources.region=us-east-1", "resources.accelerators=L4:1", "output=s3://b/r"])
        task_config(spec, folder_for(spec), dist)


def test_cluster_names_are_valid():
    assert cluster_name("My_Run.v2-20261122-101010-ab12") == "ft-my-run-v2-20261122-101010-ab12"
    assert len(cluster_name("x" * 200)) <= 48


@pytest.mark.slow
def test_no_secret_value_in_any_rendered_artifact(tmp_path, dist, s3_env, monkeypatch, finetune_home):
    env, bucket = s3_env
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_token_value_123")
    spec = load_recipe("tiny", ["resources.infra=slurm", f"output=s3://{bucket}/runs", "secrets=[HF_TOKEN]"])
    folder = folder_for(spec)
    config = task_config(spec, folder, dist)
    assert config["secrets"] == {"HF_TOKEN": None, "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    assert config["envs"]["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]  # not secret: forwarded as a plain env
    rendered = to_yaml(config) + json.dumps(spec.model_dump(mode="json"))
    task = build_task(config, {"HF_TOKEN": os.environ["HF_TOKEN"]})
    value = task.secrets["HF_TOKEN"]
    assert getattr(value, "get_secret_value", lambda: value)() == "hf_SECRET_token_value_123"  # to SkyPilot only
    for value in ("hf_SECRET_token_value_123", env["AWS_SECRET_ACCESS_KEY"]):
        assert value not in rendered
    # the CLI's dry run prints the same, provisions nothing
    result = subprocess.run(
        [sys.executable, "-m", "sdk.cli", "launch", "tiny", "--dry-run", "--set", "resources.infra=slurm",
         "--set", f"output=s3://{bucket}/runs", "--set", "secrets=[HF_TOKEN]", "--set", "resources.nodes=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "num_nodes: 2" in result.stdout and "hf_SECRET" not in result.stdout + result.stderr
    assert "secrets forwarded by name" in result.stdout
    written = [p for p in finetune_home.rglob("*") if p.is_file()]  # the wheel cache, a registry if any
    assert not [p for p in written if b"hf_SECRET" in p.read_bytes()]


def test_the_run_script_renders_one_rendezvous_per_node(tmp_path, dist, s3_env):
    """Run the task's own run script, as SkyPilot would on each node of a 2-node x 8-GPU cluster."""
    env, bucket = s3_env
    spec = load_recipe("qwen7b-2node-zero3", [f"output=s3://{bucket}/runs", "secrets=[]"])
    folder = folder_for(spec, "qwen-2node")
    folder.write_json(SPEC, spec.model_dump(mode="json"))
    config = task_config(spec, folder, dist)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    commands = []
    for rank in (0, 1):
        node_env = {
            **os.environ, **config["envs"], "HOME": str(tmp_path), "FINETUNE_VENV": str(venv), "FINETUNE_LAUNCHER_PRINT": "1",
            "SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NODE_IPS": "10.1.0.5\n10.1.0.6\n", "SKYPILOT_NUM_NODES": "2",
            "SKYPILOT_NUM_GPUS_PER_NODE": "8", "PYTHONPATH": str(ROOT),
        }
        done = subprocess.run(["bash", "-c", config["run"]], env=node_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        commands.append(next(line for line in done.stdout.splitlines() if line.startswith("[finetune] launch:")))
        assert (Path(tmp_path) / ".finetune" / "logs" / f"qwen-2node-node{rank}.log").is_file()
    for rank, line in enumerate(commands):
        assert (f"--nnodes 2 --node-rank {rank} --nproc-per-node 8 --master-addr 10.1.0.5 --master-port 29500 "
                f"--max-restarts 0 -m launch --run-dir s3://{bucket}/runs/qwen-2node") in line


def test_the_node_venv_is_keyed_on_the_training_stack_not_the_source(tmp_path, dist):
    """A source edit builds a new wheel: the same venv is reused and only the package is reinstalled."""
    spec = load_recipe("tiny")
    edited = {**dist, "wheel": tmp_path / "other-build" / dist["wheel"].name}
    first, second = setup_script(spec, dist), setup_script(spec, edited)
    venv = next(line for line in first.splitlines() if line.startswith("VENV="))
    assert venv == next(line for line in second.splitlines() if line.startswith("VENV="))
    assert f".finetune-{dist['wheel'].parent.name}" in first and ".finetune-other-build" in second
    deepspeed = setup_script(load_recipe("tiny", ["distributed=deepspeed"]), dist)
    assert next(line for line in deepspeed.splitlines() if line.startswith("VENV=")) != venv  # another stack
