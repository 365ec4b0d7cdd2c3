"""A server that does not become ready: the engine's log is kept (<servers>/<id>.failed.log, its owner's alone) before
anything is stopped, and the error quotes its last lines; an engine that exits is seen as exited on every backend
(a SkyPilot cluster whose job failed is still UP). Fast: fake backends and a dead process, no engine."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest
from helpers import free_port

from sdk.core.errors import LaunchError
from sdk.core.serveplan import ServedAdapter, ServePlan
from sdk.serving.record import ServerRecord

LOG = "".join(f"\x1b[36m(serve, pid=7)\x1b[0m line {i}\n" for i in range(30))  # coloured, as SkyPilot's logs are


class FakeBackend:
    """Alive until stopped; writes nothing the probe could reach. Records the order of what it was asked."""

    name = "local"
    poll_every = 1

    def __init__(self, calls: list[str], exited: str | None = None):
        self.calls, self.why = calls, exited

    def start(self, plan, *, folder, api_key, replicas=None, tls=None):
        self.calls.append("start")
        return {"url": f"http://127.0.0.1:{plan.port}", "cluster": "c-1"}

    def alive(self, record):
        return "stop" not in self.calls

    def exited(self, record):
        return None if "stop" not in self.calls and self.why is None else self.why or "stopped"

    def stop(self, record, *, timeout):
        self.calls.append("stop")

    def logs(self, record):
        self.calls.append("logs")
        return "" if "stop" in self.calls else LOG  # a cluster's log goes with its teardown


def quoted_tail(message: str) -> None:
    assert "line 29" in message and "line 10" in message and "line 9\n" not in message  # the last 20 lines
    assert "\x1b[" not in message


def kept(home, server_id: str):
    path = home / "servers" / f"{server_id}.failed.log"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().count("line ") == 30
    return path


def test_a_local_engine_that_exits_keeps_its_log(finetune_home, tmp_path):
    log = tmp_path / "engine.log"
    log.write_text(LOG)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    from sdk.serving import Server

    server = Server(ServerRecord(id="s-exit", url=f"http://127.0.0.1:{free_port()}", models=["a"], base="b",
                                 backend="local", pid=proc.pid, log=str(log)))
    with pytest.raises(LaunchError) as caught:
        server.wait_ready(30)
    message = str(caught.value)
    assert message.startswith(f"server s-exit exited before it was ready (process {proc.pid} exited)")
    path = kept(finetune_home, "s-exit")
    assert str(path) in message
    quoted_tail(message)


def test_a_timeout_keeps_the_log_and_quotes_the_last_probe(finetune_home, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("sdk.serving.server.serving_backend", lambda name: FakeBackend(calls))
    from sdk.serving import Server

    server = Server(ServerRecord(id="s-slow", url=f"http://127.0.0.1:{free_port()}", models=["a"], base="b"))
    with pytest.raises(LaunchError) as caught:
        server.wait_ready(1)
    message = str(caught.value)
    assert message.startswith("server s-slow not ready after 1 s (last readiness probe: URLError")
    assert str(kept(finetune_home, "s-slow")) in message
    quoted_tail(message)


@pytest.mark.parametrize("exited", [None, "job 1 on c-1 is FAILED"])
def test_serve_keeps_the_log_before_it_stops_the_server(finetune_home, monkeypatch, exited):
    """The caller: `serve` stops what did not become ready, after the log was fetched, and the kept log stays."""
    import sdk.serving as serving

    calls: list[str] = []
    backend = FakeBackend(calls, exited=exited)
    plan = ServePlan(server_id="s-serve", base_name="base", base_spec={}, port=free_port(),
                     adapters=[ServedAdapter(name="news", run_id="r-1", run_uri="/runs/r-1", rank=8)])
    monkeypatch.setattr(serving, "plan_serving", lambda *args, **kwargs: plan)
    monkeypatch.setattr(serving, "serving_backend", lambda name: backend)
    monkeypatch.setattr("sdk.serving.server.serving_backend", lambda name: backend)
    with pytest.raises(LaunchError) as caught:
        serving.serve(["news=r-1"], backend="local", timeout=2)
    assert calls == ["start", "logs", "stop"]
    message = str(caught.value)
    assert ("exited before it was ready (job 1 on c-1 is FAILED)" if exited else "not ready after 2 s") in message
    quoted_tail(message)
    kept(finetune_home, "s-serve")
    assert not (finetune_home / "servers" / "s-serve.json").exists()  # the record went with the stop


@pytest.fixture
def fake_sky(monkeypatch):
    """SkyPilot's client answering from a dict: clusters (name -> status), jobs (cluster -> {id: JobStatus})."""
    import sky
    from sky.skylet.job_lib import JobStatus

    state = {"clusters": {"c-1": "UP"}, "jobs": {"c-1": {1: JobStatus.RUNNING}}, "services": {}}

    def job_status(cluster, job_ids):
        if state["jobs"] is None:
            raise ConnectionError("API server unreachable")
        return state["jobs"][cluster]

    monkeypatch.setattr(sky, "get", lambda request: request)
    monkeypatch.setattr(sky, "status", lambda cluster_names: [{"status": state["clusters"][n]} for n in cluster_names
                                                             if n in state["clusters"]])
    monkeypatch.setattr(sky, "job_status", job_status)
    monkeypatch.setattr(sky.serve, "status", lambda names: [{"status": state["services"][n]} for n in names
                                                          if n in state["services"]])
    return state, JobStatus


def test_a_skypilot_engine_whose_job_ended_is_seen_as_exited(fake_sky):
    from sdk.serving.skypilot import SkyPilotServing

    state, JobStatus = fake_sky
    where = SkyPilotServing()
    record = ServerRecord(id="s", url="http://10.0.0.1:8000", models=["a"], base="b", backend="skypilot", cluster="c-1")
    assert where.exited(record) is None and where.alive(record)
    for status in (JobStatus.SETTING_UP, JobStatus.PENDING):
        state["jobs"]["c-1"] = {1: status}
        assert where.exited(record) is None
    state["jobs"]["c-1"] = {1: JobStatus.FAILED}
    assert where.exited(record) == "job 1 on c-1 is FAILED"
    assert where.alive(record)  # the cluster is still there, and still to be taken down
    state["jobs"]["c-1"] = {1: JobStatus.FAILED_SETUP}
    assert where.exited(record) == "job 1 on c-1 is FAILED_SETUP"
    state["jobs"] = None
    assert where.exited(record) is None  # SkyPilot cannot be asked: keep waiting, as before
    state["clusters"] = {}
    assert where.exited(record) == "cluster c-1 is gone"


def test_a_failed_skypilot_service_is_seen_as_exited(fake_sky):
    from sdk.serving.skypilot import SkyPilotServing

    state, _ = fake_sky
    record = ServerRecord(id="s", url="http://10.0.0.1:8000", models=["a"], base="b", backend="skypilot", service="svc")
    state["services"]["svc"] = "REPLICA_INIT"
    assert SkyPilotServing().exited(record) is None
    state["services"]["svc"] = "FAILED"
    assert SkyPilotServing().exited(record) == "service svc is FAILED"
    state["services"] = {}
    assert SkyPilotServing().exited(record) == "service svc is gone"
