"""The store: one interface over a local directory and S3 (a real moto server on 127.0.0.1)."""

from __future__ import annotations

import json

import pytest

from sdk.core.errors import IntegrityError, StoreError
from sdk.store import LocalStore, S3Store, commit_dir, fetch_dir, open_store, read_manifest


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    _, bucket = request.getfixturevalue("s3_env")
    return open_store(f"s3://{bucket}/some/prefix")


def _artifact(root):
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (root / "sub").mkdir()
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def test_objects_round_trip(store):
    store.put_bytes("run/a.json", b"{}")
    assert store.exists("run/a.json") and not store.exists("run/b.json")
    assert store.get_bytes("run/a.json") == b"{}"
    store.put_bytes("run/x/y.txt", b"y")
    assert store.list("run") == ["run/a.json", "run/x/y.txt"]
    store.delete_prefix("run/x")
    assert store.list("run") == ["run/a.json"]
    with pytest.raises(StoreError, match="no such object"):
        store.get_bytes("run/missing.json")


def test_commit_then_fetch_is_identical_and_verified(store, tmp_path):
    src = _artifact(tmp_path / "src")
    manifest = commit_dir(store, src, "run/adapter")
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "sub/tokenizer.json"}
    dest = fetch_dir(store, "run/adapter", tmp_path / "dest")
    for rel in manifest["files"]:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert json.loads((dest / "MANIFEST.json").read_text())["files"] == manifest["files"]


def test_uncommitted_directory_is_invisible(store, tmp_path):
    src = _artifact(tmp_path / "src")
    store.upload_file(src / "adapter_config.json", "run/adapter/adapter_config.json")  # files, but no manifest
    assert read_manifest(store, "run/adapter") is None
    with pytest.raises(StoreError, match="not committed"):
        fetch_dir(store, "run/adapter", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_corrupted_object_is_detected_and_nothing_is_left(store, tmp_path):
    src = _artifact(tmp_path / "src")
    commit_dir(store, src, "run/adapter")
    store.put_bytes("run/adapter/adapter_model.safetensors", b"garbage")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors: corrupted"):
        fetch_dir(store, "run/adapter", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest")]


def test_manifest_keys_that_escape_are_refused(store, tmp_path):
    manifest = {"files": {"../../etc/evil": {"sha256": "0" * 64, "size": 1}}}
    store.put_bytes("run/adapter/MANIFEST.json", json.dumps(manifest).encode())
    with pytest.raises(StoreError, match="unsafe key|escape"):
        fetch_dir(store, "run/adapter", tmp_path / "dest")
    assert not (tmp_path / "etc").exists()
    for key in ("/abs/path", "a/../../b", "..", "a\\b"):
        with pytest.raises(StoreError):
            store.put_bytes(key, b"x")


def test_fetch_never_overwrites_unless_asked(store, tmp_path):
    commit_dir(store, _artifact(tmp_path / "src"), "run/adapter")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        fetch_dir(store, "run/adapter", dest)
    assert (dest / "keep.txt").read_text() == "mine"
    fetch_dir(store, "run/adapter", dest, overwrite=True)
    assert not (dest / "keep.txt").exists() and (dest / "adapter_config.json").is_file()


def test_recommit_replaces_atomically(store, tmp_path):
    src = _artifact(tmp_path / "src")
    commit_dir(store, src, "run/adapter")
    (src / "sub" / "tokenizer.json").unlink()
    (src / "adapter_config.json").write_text('{"r": 16}')
    manifest = commit_dir(store, src, "run/adapter")
    assert "sub/tokenizer.json" not in manifest["files"]
    assert not store.exists("run/adapter/sub/tokenizer.json")
    dest = fetch_dir(store, "run/adapter", tmp_path / "dest")
    assert (dest / "adapter_config.json").read_text() == '{"r": 16}'


def test_dead_endpoint_names_the_uri(monkeypatch):
    from helpers import free_port

    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FINETUNE_STORE_ATTEMPTS", "2")
    with pytest.raises(StoreError) as info:
        S3Store("s3://bucket/prefix").put_bytes("k", b"v")
    assert "s3://bucket/prefix/k" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


def test_missing_bucket_is_a_clear_error(s3_env):
    with pytest.raises(StoreError, match=r"s3://no-such-bucket-here/p/k \(endpoint http://127.0.0.1:\d+\): cannot write: NoSuchBucket"):
        open_store("s3://no-such-bucket-here/p").put_bytes("k", b"v")


def test_unsupported_scheme():
    with pytest.raises(StoreError, match="unsupported store"):
        open_store("gs://bucket/x")


def test_a_staged_folder_lands_whole_or_not_at_all(tmp_path):
    """sdk.store.atomic.staged_dir, the one helper every all-or-nothing folder goes through."""
    from sdk.store.atomic import staged_dir

    dest = tmp_path / "out"
    with staged_dir(dest) as staging:
        (staging / "a").write_text("1")
    assert (dest / "a").read_text() == "1"
    with pytest.raises(RuntimeError), staged_dir(dest) as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("half way")
    assert (dest / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left
    with staged_dir(dest) as staging:
        (staging / "b").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]  # replaced
    with staged_dir(dest, keep_existing=True) as staging:  # a cache someone else filled first
        (staging / "c").write_text("4")
    assert sorted(p.name for p in dest.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
