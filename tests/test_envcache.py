"""The node environment cache, end to end on this machine: the setup script that setup_for generates runs for
real with bash against a moto S3 server and a folder of stand-in wheels (uv offline through a PATH shim that
records every call). A cold build installs and saves once; a second node with a fresh VENV path restores the
stored environment without installing anything; a foreign interpreter or a corrupt archive falls back to
installing the lock with --no-deps; a rerun's lock.json installs exactly its versions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_node_setup import stand_in_wheel

ROOT = Path(__file__).resolve().parents[1]


def make_wheel(folder: Path, name: str, version: str, *, requires: tuple[str, ...] = (),
               files: dict[str, str] | None = None, entry_points: str = "") -> Path:
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Provides-Extra: {r.split('extra == ')[1].strip(chr(34))}\n" for r in requires if "extra ==" in r)
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    content = {**(files or {f"{name}/__init__.py": f"VERSION = '{version}'\n"}), f"{info}/METADATA": meta,
               f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if entry_points:
        content[f"{info}/entry_points.txt"] = entry_points
    content[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in content) + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for key, text in content.items():
            zf.writestr(key, text)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, moto_server):
    """Wheels (torch stand-in, alpha -> beta, a finetune whose .pth reaches this checkout and this Python's
    packages so the venv can run launch.envcache), a uv shim, a bucket, the client's AWS env."""
    import boto3

    root = tmp_path_factory.mktemp("envcache")
    wheels = root / "wheels"
    stand_in_wheel(wheels, "2.13.0", "cpu")
    make_wheel(wheels, "alpha", "1.0", requires=("beta>=1.0",),
               entry_points="[console_scripts]\nalpha-hello = alpha:hello\n",
               files={"alpha/__init__.py": "def hello():\n    print('hello from alpha')\n"})
    make_wheel(wheels, "beta", "1.5")
    make_wheel(wheels, "beta", "2.0")
    dist = root / "dist"
    pth = f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n"
    wheel = make_wheel(dist, "finetune", "0.1.0", requires=('alpha ; extra == "train"',),
                       files={"finetune_dev.pth": pth})
    (dist / "constraints.txt").write_text("torch==2.13.0\n")
    shim = root / "shim"
    shim.mkdir()
    calls = root / "calls"
    uv = shutil.which("uv")
    (shim / "uv").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                             f"if [ \"$1\" = pip ] && [ \"$2\" = install ]; then shift 2; exec {uv} pip install "
                             f"--offline --no-index --find-links {wheels} \"$@\"; fi\nexec {uv} \"$@\"\n")
    (shim / "uv").chmod(0o755)
    bucket = "envcache"
    env = {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        boto3.session.Session().client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
        yield {"root": root, "dist": {"wheel": wheel, "constraints": dist / "constraints.txt"}, "shim": shim,
               "calls": calls, "bucket": bucket, "env": env, "n": [0]}


def setup(world, prefix: str, *, lock_json: dict | None = None, meta_edit: dict | None = None):
    """setup_for against s3://bucket/<prefix> for a new run folder, then its script run by bash on a new node
    (a new HOME and VENV path). Returns (process, the uv calls it made, the venv)."""
    from sdk.backends.node_setup import setup_for
    from sdk.core.recipes import load_recipe
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder

    world["n"][0] += 1
    n = world["n"][0]
    output = f"s3://{world['bucket']}/{prefix}"
    spec = load_recipe("tiny", [f"output={output}"])
    folder = RunFolder(open_store(output), f"run-{n}")
    folder.write_json("spec.json", {"name": "tiny"})
    if lock_json:
        folder.write_json("lock.json", lock_json)
    script, envs = setup_for(spec, world["dist"], folder)
    home = world["root"] / f"node-{n}"
    (home / ".finetune" / "dist").mkdir(parents=True)
    for path in world["dist"].values():
        shutil.copy(path, home / ".finetune" / "dist")
    venv = home / "envs" / "venv"
    world["calls"].write_text("")
    env = {**world["env"], **envs, "PATH": f"{world['shim']}:/usr/bin:/bin", "HOME": str(home),
           "FINETUNE_VENV": str(venv), "FINETUNE_NODE_PYTHON": sys.executable, "FINETUNE_INSTALLER": "uv"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=240)
    return done, world["calls"].read_text().splitlines(), venv


def venv_python(venv: Path, code: str) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def envs_of(bucket: str, prefix: str) -> list[str]:
    from sdk.store import open_store

    return open_store(f"s3://{bucket}/{prefix}").list(".envs")


def copy_prefix(bucket: str, source: str, target: str) -> None:
    from sdk.store import open_store

    src, dst = open_store(f"s3://{bucket}/{source}"), open_store(f"s3://{bucket}/{target}")
    for key in src.list(".envs"):
        dst.put_bytes(key, src.get_bytes(key))


@pytest.fixture(scope="module")
def cold(world):
    done, calls, venv = setup(world, "runs")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, calls, venv


def test_a_cold_build_installs_and_saves_its_environment_once(world, cold):
    done, calls, venv = cold
    assert any("pip install" in c and "finetune-0.1.0-py3-none-any.whl[train]" in c for c in calls)  # resolved
    assert "saved the environment" in done.stdout
    keys = envs_of(world["bucket"], "runs")
    stacks = [k for k in keys if k.startswith(".envs/stacks/")]
    assert len(stacks) == 1
    from sdk.store import open_store

    store = open_store(f"s3://{world['bucket']}/runs")
    lock_hash = json.loads(store.get_bytes(stacks[0]))["lock_hash"]
    meta = json.loads(store.get_bytes(f".envs/{lock_hash}/meta.json"))
    assert {k for k in keys if k.startswith(f".envs/{lock_hash}/")} == {
        f".envs/{lock_hash}/{n}" for n in ("lock.txt", "meta.json", meta["archive"])}
    lock = store.get_bytes(f".envs/{lock_hash}/lock.txt").decode()
    assert lock == "alpha==1.0\nbeta==2.0\ntorch==2.13.0+cpu\n"  # the venv's own packages; pip and finetune left out
    assert meta["python"] == sys.version.split()[0] and meta["venv"] == str(venv) and meta["format"] == "tar.zst"


def test_a_second_node_restores_the_stored_environment_without_installing(world, cold, tmp_path):
    _, _, built = cold
    aside = tmp_path / "aside"
    shutil.move(built, aside)  # the first node's path is gone: nothing may still point into it
    try:
        done, calls, venv = setup(world, "runs")
    finally:
        shutil.move(aside, built)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert calls == [], calls  # no uv (FINETUNE_INSTALLER=uv sends every install through the shim)
    assert "restored the environment" in done.stdout and "keeping the environment's torch 2.13.0+cpu" in done.stdout
    assert "saved the environment" not in done.stdout  # a restore is not saved again
    assert venv_python(venv, "import alpha, beta, torch; print(beta.VERSION, torch.__version__)") == "2.0 2.13.0+cpu"
    hello = subprocess.run([str(venv / "bin" / "alpha-hello")], capture_output=True, text=True, timeout=60)
    assert hello.stdout.strip() == "hello from alpha", hello.stderr  # its shebang names the new venv
    assert str(built) not in (venv / "bin" / "alpha-hello").read_text()
    assert not list(venv.parent.glob("venv.restore-*")) and not list(venv.parent.glob("venv.old-*"))


def test_another_interpreter_installs_the_lock_without_resolving(world, cold):
    copy_prefix(world["bucket"], "runs", "foreign")
    from sdk.store import open_store

    store = open_store(f"s3://{world['bucket']}/foreign")
    meta_key = next(k for k in store.list(".envs") if k.endswith("/meta.json"))
    meta = json.loads(store.get_bytes(meta_key))
    store.put_bytes(meta_key, json.dumps({**meta, "python": "3.99.0"}).encode())
    done, calls, venv = setup(world, "foreign")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Python is " in done.stdout and "the stored environment's 3.99.0; installing from its lock" in done.stdout
    installs = [c for c in calls if c.startswith("pip install")]
    assert any("--no-deps -r" in c for c in installs) and not any("[train]" in c for c in installs), installs
    assert venv_python(venv, "import alpha, beta; print(beta.VERSION)") == "2.0"


def test_a_corrupt_archive_falls_back_to_the_lock(world, cold):
    copy_prefix(world["bucket"], "runs", "corrupt")
    from sdk.store import open_store

    store = open_store(f"s3://{world['bucket']}/corrupt")
    archive = next(k for k in store.list(".envs") if "/env-" in k)
    data = bytearray(store.get_bytes(archive))
    store.put_bytes(archive, bytes(data[: len(data) // 2]))  # a partial object where the archive was
    done, calls, venv = setup(world, "corrupt")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if "not restoring the stored environment" in line]
    assert len(said) == 1 and ("corrupt or partial" in said[0] or "tar could not extract" in said[0]), done.stdout
    assert any("--no-deps -r" in c for c in calls)
    assert not list(venv.parent.glob("venv.restore-*"))
    assert venv_python(venv, "import alpha, beta; print(beta.VERSION)") == "2.0"


def test_a_rerun_lock_json_installs_exactly_its_versions_with_no_deps(world):
    lock = {"packages": {"alpha": "1.0", "beta": "1.5", "torch": "2.13.0+cpu"}, "torch": "2.13.0+cpu",
            "from_run": "run-old"}
    done, calls, venv = setup(world, "rerun", lock_json=lock)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lock.json, from run run-old" in done.stdout
    installs = [c for c in calls if c.startswith("pip install")]
    assert any("--no-deps -r" in c for c in installs) and not any("[train]" in c for c in installs), installs
    assert venv_python(venv, "import beta, torch; print(beta.VERSION, torch.__version__)") == "1.5 2.13.0+cpu"
    keys = envs_of(world["bucket"], "rerun")
    assert not any(k.startswith(".envs/stacks/") for k in keys)  # a rerun's old lock is not what the stack builds now
    assert any(k.endswith("/meta.json") for k in keys)  # its environment is kept for the next rerun of that run
    again, calls, venv = setup(world, "rerun", lock_json=lock)  # a second rerun of that run restores it
    assert again.returncode == 0 and calls == [] and "restored the environment" in again.stdout, again.stdout[-2000:]
    assert venv_python(venv, "import beta; print(beta.VERSION)") == "1.5"


def test_save_writes_meta_last_and_skips_a_stored_lock(tmp_path, monkeypatch):
    """launch.envcache.save in process, against a local store that records the order of its writes."""
    from launch import envcache
    from sdk.store.local import LocalStore

    venv = tmp_path / "venv"
    subprocess.run([shutil.which("uv"), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=60)
    writes: list[str] = []

    class Recording(LocalStore):
        def put_bytes(self, key, data):
            writes.append(key)
            super().put_bytes(key, data)

        def upload_file(self, path, key):
            writes.append(key)
            super().upload_file(path, key)

    monkeypatch.setattr("sdk.store.open_store", lambda uri: Recording(uri))
    said = envcache.save(venv, str(tmp_path / "store"), "stack1")
    assert said.startswith("saved the environment")
    assert [w.rsplit("/", 1)[1].split(".")[0] for w in writes[:3]] == [writes[0].rsplit("/", 1)[1].split(".")[0],
                                                                        "lock", "meta"]
    assert writes[0].split("/")[-1].startswith("env-") and writes[3] == ".envs/stacks/stack1.json"
    writes.clear()
    assert "already in the store" in envcache.save(venv, str(tmp_path / "store"), "stack1")
    assert writes == []  # nothing uploaded, the stack record already names this lock


def test_a_save_that_fails_warns_and_exits_zero(tmp_path, capsys):
    from launch import envcache

    assert envcache.main(["save", "--venv", str(tmp_path / "nothing"), "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "warning: the environment was not saved" in out


def test_run_listing_ignores_the_environment_cache(tmp_path):
    import sdk
    from sdk.store.local import LocalStore

    store = LocalStore(str(tmp_path))
    store.put_bytes(".envs/abc/meta.json", b"{}")
    store.put_bytes(".envs/stacks/k.json", b"{}")
    assert sdk.list_runs(store=str(tmp_path)) == []


def test_a_venv_is_restored_only_under_the_interpreter_it_was_made_with(tmp_path):
    from sdk.backends.env_restore import interpreter_mismatch

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    home = next(line.split("=", 1)[1].strip() for line in (venv / "pyvenv.cfg").read_text().splitlines()
                if line.startswith("home"))
    here = sys.version.split()[0]
    assert interpreter_mismatch(here, home) is None
    assert "the stored environment's in /opt/python" in interpreter_mismatch(here, "/opt/python/bin")
    assert "the stored environment's 3.9.1" in interpreter_mismatch("3.9.1", home)


def test_the_archive_url_is_sigv4_in_the_bucket_s_own_region(s3_env, monkeypatch):
    """SigV2 on the global endpoint is refused by SigV4-only regions and new buckets: the client signs SigV4 in the
    region S3 says the bucket is in, at AWS_ENDPOINT_URL when one is set (an S3-compatible server)."""
    import urllib.request

    import boto3

    from sdk.backends.envcache import stored_env
    from sdk.store import open_store

    env, _ = s3_env
    bucket = f"{s3_env[1]}-eu"
    boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    store = open_store(f"s3://{bucket}/runs")
    store.put_bytes(".envs/abc/meta.json", json.dumps({"archive": "env.tar.gz"}).encode())
    store.put_bytes(".envs/abc/env.tar.gz", b"the archive")
    meta, url = stored_env(store, "abc", sign=True)
    assert url.startswith(f"{env['AWS_ENDPOINT_URL']}/{bucket}/runs/.envs/abc/env.tar.gz?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "%2Feu-central-1%2Fs3%2F" in url
    assert "AWSAccessKeyId" not in url
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.read() == b"the archive"
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # on AWS itself: the region's own endpoint, not s3.amazonaws.com
    url = store.presign_get("k", 60)
    assert url.startswith(f"https://{bucket}.s3.eu-central-1.amazonaws.com/runs/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&")
