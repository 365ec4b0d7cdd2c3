"""Fault tests against a real object store: OpenStack Swift + s3api from Debian, started here.

Signatures are checked, data survives a restart, multipart uploads are real — which moto cannot show.
"""

from __future__ import annotations

import threading
import time

import pytest
import swift_harness
from helpers import needs_service

from sdk.core.errors import IntegrityError, StoreError
from sdk.store import MANIFEST, S3Store, commit_dir, fetch_dir, read_manifest

pytestmark = [
    pytest.mark.swift,
    needs_service("OpenStack Swift", None if swift_harness.available() else "Debian's swift packages (.ci/run installs them)"),
]


@pytest.fixture(scope="module")
def swift(tmp_path_factory):
    server = swift_harness.SwiftServer(tmp_path_factory.mktemp("swift")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def swift_env(swift, monkeypatch):
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", swift.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", swift_harness.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", swift_harness.SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"ft-{uuid.uuid4().hex[:10]}"
    boto3.session.Session().client("s3", endpoint_url=swift.endpoint).create_bucket(Bucket=bucket)
    return bucket


def _artifact(root, mb: int):
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 16}')
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (4096 * mb))
    return root


def test_wrong_credentials_name_the_endpoint(swift, swift_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreError) as info:
        S3Store(f"s3://{swift_env}/runs").put_bytes("x/spec.json", b"{}")
    message = str(info.value)
    assert swift.endpoint in message and f"s3://{swift_env}/runs/x/spec.json" in message
    assert "SignatureDoesNotMatch" in message and "credentials" in message


def test_commit_survives_a_server_killed_mid_upload(swift, swift_env, tmp_path, monkeypatch):
    """Kill the proxy while the multipart upload runs, restart it: the retried commit succeeds, and a
    reader polling all along never sees a manifest whose adapter does not verify."""
    monkeypatch.setenv("FINETUNE_STORE_ATTEMPTS", "8")
    src = _artifact(tmp_path / "src", mb=128)  # 128 MiB: eight 16 MiB parts
    store = S3Store(f"s3://{swift_env}/runs")
    outcome: dict = {}

    def commit() -> None:
        try:
            outcome["manifest"] = commit_dir(store, src, "run-1/adapter")
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        reader_store = S3Store(f"s3://{swift_env}/runs")
        n = 0
        while n < 2000 and not (stop.is_set() and "error" in outcome):  # until it has read the committed adapter
            n += 1
            try:
                if read_manifest(reader_store, "run-1/adapter") is not None:
                    fetch_dir(reader_store, "run-1/adapter", tmp_path / f"read-{n}")
                    seen.append("verified")
                    return
                seen.append("absent")
            except IntegrityError as exc:
                seen.append(f"CORRUPT {exc}")
                return
            except StoreError:
                seen.append("unreachable")
            time.sleep(0.05)

    writer = threading.Thread(target=commit)
    watcher = threading.Thread(target=reader)
    writer.start()
    watcher.start()
    time.sleep(0.5)  # hashing done, the multipart upload under way
    alive_at_kill = writer.is_alive()
    swift.kill_proxy()
    time.sleep(1.0)
    swift.restart_proxy()
    writer.join(timeout=120)
    stop.set()
    watcher.join(timeout=60)
    assert alive_at_kill, "the commit finished before the server was killed; the test proved nothing"
    assert "error" not in outcome, outcome.get("error")
    assert not [s for s in seen if s.startswith("CORRUPT")], seen
    assert seen[0] == "absent" and seen[-1] == "verified", seen  # no adapter until committed, then a verified one
    dest = fetch_dir(store, "run-1/adapter", tmp_path / "final")
    assert (dest / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()


def test_partial_upload_without_manifest_is_never_an_adapter(swift, swift_env, tmp_path):
    store = S3Store(f"s3://{swift_env}/runs")
    src = _artifact(tmp_path / "src", mb=1)
    store.upload_file(src / "adapter_model.safetensors", "run-2/adapter/adapter_model.safetensors")
    assert read_manifest(store, "run-2/adapter") is None
    with pytest.raises(StoreError, match=f"not committed \\(no {MANIFEST}\\)"):
        fetch_dir(store, "run-2/adapter", tmp_path / "dest")


def test_corrupted_object_is_detected_on_fetch(swift, swift_env, tmp_path):
    import boto3

    store = S3Store(f"s3://{swift_env}/runs")
    commit_dir(store, _artifact(tmp_path / "src", mb=1), "run-3/adapter")
    body = bytearray(boto3.session.Session().client("s3").get_object(Bucket=swift_env, Key="runs/run-3/adapter/adapter_model.safetensors")["Body"].read())
    body[1000] ^= 0xFF  # one flipped byte, same size
    boto3.session.Session().client("s3").put_object(Bucket=swift_env, Key="runs/run-3/adapter/adapter_model.safetensors", Body=bytes(body))
    with pytest.raises(IntegrityError, match="corrupted"):
        fetch_dir(store, "run-3/adapter", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_data_survives_a_full_restart(swift, swift_env, tmp_path):
    store = S3Store(f"s3://{swift_env}/runs")
    commit_dir(store, _artifact(tmp_path / "src", mb=1), "run-4/adapter")
    swift.stop()
    swift.start()
    assert read_manifest(store, "run-4/adapter") is not None
    fetch_dir(store, "run-4/adapter", tmp_path / "dest")
