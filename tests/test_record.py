"""The run record (sdk.core.record), `finetune rerun` and `finetune diff` (issue 36 items 3-5).

One tiny-model run from a local data file, launched as a user would, is shared by the slow tests: its record, its
rerun (the same loss curve, exactly), and a rerun refused after one byte of its data changes. Two trials of a sweep
over train.lr are diffed. The rest (S3 ETags, lock.json, refusals) trains nothing."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from helpers import losses

import sdk
import sdk.runs.diff
import sdk.runs.rerun
from sdk.core.errors import LaunchError
from sdk.core.lockfile import installed_packages
from sdk.core.recipes import load_recipe
from sdk.core.record import CLIENT_RECORD, LOCK, NODE_RECORD, DataFile
from sdk.data.fingerprint import fingerprint, recheck
from sdk.runs.diff import METRICS, differing, flatten
from sdk.store.runfolder import RunFolder

FAST = ["train.max_steps=6", "train.logging_steps=1", "data.max_samples=48", "eval.num_samples=4",
        "eval.max_new_tokens=4", "eval.generations=0", "eval.before=false"]


def write_rows(path, n: int = 64) -> None:
    from sdk.data.builtin import load_builtin

    rows = load_builtin("builtin:news-topics")[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`finetune launch tiny --local` on a local jsonl file: (run, data file, store, env)."""
    import os
    import subprocess
    import sys

    from helpers import ROOT

    root = tmp_path_factory.mktemp("record")
    data = root / "train.jsonl"
    write_rows(data)
    env = {**os.environ, "FINETUNE_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1"}
    args = ["launch", "tiny", "--local", *[f"--set={o}" for o in FAST], f"--set=data.source={data}",
            f"--set=output={root / 'store'}"]
    result = subprocess.run([sys.executable, "-m", "sdk.cli", *args], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "store").iterdir()
    return sdk.get_run(str(run_dir)), data, root / "store", {"FINETUNE_HOME": str(root / "home")}, args


@pytest.mark.slow
def test_the_record_holds_the_data_bytes_the_packages_the_torch_build_and_the_recipe(first_run, run_cli):
    run, data, _, env, args = first_run
    record = run.record()
    client, node = record.client, record.node
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert client.recipe.name == "tiny" and client.recipe.text.startswith("description: Tiny")
    assert client.recipe.overrides == [a.removeprefix("--set=") for a in args if a.startswith("--set=")]
    assert client.backend == "local" and client.product.version == sdk.__version__
    (source,) = [f for f in record.data_files() if f.field == "data.source"]
    assert (source.kind, source.sha256, source.size) == ("file", digest, data.stat().st_size)
    assert [f.kind for f in client.data if f.field == "data.eval_source"] == ["builtin"]
    import importlib.metadata as md

    assert node.packages == installed_packages() and node.packages["torch"] == md.version("torch")
    assert node.torch.version.startswith(md.version("torch").split("+")[0]) and node.torch.gpu_count == 0
    assert node.python and node.platform and node.image.spec is None and node.world_size == 1
    shown = run_cli("status", run.uri, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["record"] == json.loads(record.model_dump_json())


@pytest.fixture(scope="module")
def rerun_result(first_run):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    run, _, store, env, _ = first_run
    result = subprocess.run([sys.executable, "-m", "sdk.cli", "rerun", run.uri], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    (new_dir,) = [p for p in store.iterdir() if p.name != run.id]
    return result, sdk.get_run(str(new_dir))


@pytest.mark.slow
def test_a_rerun_on_this_cpu_reproduces_the_loss_curve_exactly(first_run, rerun_result):
    run, _, _, _, _ = first_run
    result, new = rerun_result
    assert "1 data file(s) unchanged" in result.stdout
    assert f"packages: this machine has the {len(run.record().node.packages)} packages run {run.id} ran with" \
        in result.stdout
    before, after = losses(run.folder), losses(new.folder)
    assert len(before) == 6 and after == before  # step by step, bit for bit (float equality)
    assert new.record().rerun_of == run.id and new.summary().rerun_of == run.id
    assert new.record().client.rerun_of.package_differences == {"added": {}, "removed": {}, "changed": {}}
    assert new.spec().model_dump(exclude={"name"}) == run.spec().model_dump(exclude={"name"})
    found = sdk.runs.diff.diff_runs(run.uri, new.uri)
    assert (found.spec, found.data, found.packages, found.hardware) == ({}, {}, {}, {})
    assert set(found.metrics) <= {"runtime_s.train_s", "runtime_s.total_s"}, found.metrics


@pytest.mark.slow
def test_a_rerun_refuses_data_that_changed_by_one_byte_naming_the_file_and_both_hashes(first_run, rerun_result,
                                                                                        run_cli):
    run, data, store, env, _ = first_run
    was = hashlib.sha256(data.read_bytes()).hexdigest()
    body = bytearray(data.read_bytes())
    body[body.index(b"Classify")] = ord("c")
    data.write_bytes(bytes(body))
    now = hashlib.sha256(data.read_bytes()).hexdigest()
    try:
        folders = sorted(p.name for p in store.iterdir())
        refused = run_cli("rerun", run.uri, env=env)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert str(data) in line and f"sha256 {was} then" in line and f"sha256 {now} now" in line, line
        assert sorted(p.name for p in store.iterdir()) == folders  # nothing launched
        allowed = sdk.runs.rerun.plan_rerun(run.uri, allow_data_change=True)
        assert allowed.rerun.allow_data_change and allowed.rerun.data_changes == [line.removeprefix("error: ")
                                                                                  .split(" (--allow")[0]]
    finally:
        body[body.index(b"classify")] = ord("C")
        data.write_bytes(bytes(body))


@pytest.mark.slow
def test_a_rerun_onto_a_cluster_gets_the_lock_and_a_run_without_a_record_or_unfinished_is_told_why(
        first_run, rerun_result, tmp_path, cli_here):
    run, _, _, env, _ = first_run
    plan = sdk.runs.rerun.plan_rerun(run.uri, backend="skypilot")
    node = run.record().node
    assert plan.lock == {"packages": node.packages, "torch": node.torch.version, "from_run": run.id}
    assert plan.rerun.lock and plan.rerun.package_differences is None
    old = tmp_path / "store" / run.id
    shutil.copytree(run.folder.store.url(run.id), old)
    shutil.rmtree(old / "record")
    refused = cli_here("rerun", str(old), env=env)
    assert refused.returncode == 2 and "no run record (it ran before records were kept)" in refused.stderr
    assert "data it read and its packages cannot be checked" in refused.stderr
    RunFolder.from_uri(str(old)).write_status("running", heartbeat=__import__("time").time())
    with pytest.raises(LaunchError, match="is running: its data and packages could be checked"):
        sdk.runs.rerun.plan_rerun(str(old))


def test_the_client_record_and_the_lock_land_in_the_run_folder(tmp_path):
    from sdk.runs.record import Provenance, read_record, recipe_given, write_client_record
    from sdk.store import open_store

    data = tmp_path / "rows.jsonl"
    write_rows(data, 8)
    spec = load_recipe("tiny", [f"data.source={data}", f"output={tmp_path}"])
    folder = RunFolder(open_store(str(tmp_path)), "r1")
    lock = {"packages": {"torch": "2.5.1+cu124"}, "torch": "2.5.1+cu124", "from_run": "r0"}
    write_client_record(spec, folder, backend="skypilot",
                        given=Provenance(recipe=recipe_given("tiny", ["train.lr=1e-4"]), lock=lock))
    assert folder.read_json(LOCK) == lock and folder.read_json(NODE_RECORD) is None
    record = read_record(folder)
    assert record.node is None and record.client.recipe.overrides == ["train.lr=1e-4"]
    assert record.client.recipe.path.endswith("recipes/tiny.yaml")
    assert record.data_files()[0].sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    assert read_record(RunFolder(open_store(str(tmp_path)), "none")) is None
    assert folder.read_json(CLIENT_RECORD)["backend"] == "skypilot"


def test_an_s3_object_is_known_by_its_etag_and_its_bytes(s3_env):
    import boto3

    env, bucket = s3_env
    s3 = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    uri = f"s3://{bucket}/data/rows.jsonl"
    s3.put_object(Bucket=bucket, Key="data/rows.jsonl", Body=b'{"text": "a"}\n')
    copies = []

    def download(source: str):
        from pathlib import Path

        from sdk.store import open_store

        target = Path(__import__("tempfile").mkdtemp()) / "copy"
        open_store(source.rpartition("/")[0]).download_file("rows.jsonl", target)
        copies.append(source)
        return target

    (item,) = fingerprint("data.source", uri, s3_copy=download)
    assert copies == [uri] and item.kind == "s3" and item.size == 14
    assert item.sha256 == hashlib.sha256(b'{"text": "a"}\n').hexdigest()
    assert item.etag == hashlib.md5(b'{"text": "a"}\n').hexdigest()  # one part: the MD5 of the bytes
    assert recheck(item).state == "same"
    (headed,) = fingerprint("data.source", uri)  # the client heads it only
    assert headed.sha256 is None and headed.etag == item.etag
    second = b'{"text": "b"}\n'
    s3.put_object(Bucket=bucket, Key="data/rows.jsonl", Body=second)
    changed = recheck(item)
    assert changed.state == "changed" and changed.now == f"sha256 {hashlib.sha256(second).hexdigest()}"
    assert recheck(item.model_copy(update={"sha256": None})).line("r0").endswith(
        f"ETag {item.etag} then, ETag {hashlib.md5(second).hexdigest()} now")
    # a multipart ETag that still matches is not trusted alone: the bytes are hashed
    multipart = DataFile(field="data.source", source=uri, kind="s3", etag="abc-2",
                         sha256=hashlib.sha256(second).hexdigest())
    assert recheck(multipart).state == "same"
    unread = DataFile(field="data.source", source=uri, kind="s3")
    assert recheck(unread).state == "unchecked" and "no hash of it" in recheck(unread).line("r0")


def test_diff_flattens_to_dotted_paths_and_lists_only_what_differs():
    a = {"train": {"lr": 2e-4, "seed": 1}, "data": {"sources": [{"weight": 1}, {"weight": 2}]}, "labels": ["x", "y"]}
    b = {"train": {"lr": 1e-4, "seed": 1}, "data": {"sources": [{"weight": 1}, {"weight": 3}]}, "labels": ["x", "y"]}
    assert differing(flatten(a), flatten(b)) == {"train.lr": [2e-4, 1e-4], "data.sources.1.weight": [2, 3]}
    assert differing(flatten(a), flatten(a)) == {}


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_HOME", str(root / "home"))
        spec = load_recipe("tiny", [*FAST, f"output={root / 'store'}"])
        handle = sdk.sweep(spec, grid={"train.lr": [1e-3, 5e-3]}, backend="local", max_parallel=2)
        status = handle.wait(progress=False, timeout=600)
        assert status.state == "succeeded", status
        yield sorted(handle.runs(), key=lambda r: r.spec().train.lr)


@pytest.mark.slow
def test_diff_of_two_sweep_trials_names_exactly_the_fields_that_differ(sweep_runs, cli_here):
    a, b = sweep_runs
    found = sdk.runs.diff.diff_runs(a.uri, b.uri)
    assert found.spec == {"train.lr": [1e-3, 5e-3]}  # the trial's name and output are ignored, and say so
    assert (found.data, found.packages, found.hardware, found.not_compared) == ({}, {}, {}, [])
    # every final metric that differs is listed, and nothing equal
    metrics = [{p: v for p, v in flatten(r.summary().model_dump(mode="json")).items()
                if any(p == m or p.startswith(f"{m}.") for m in METRICS)} for r in (a, b)]
    expected = {p: [metrics[0].get(p), metrics[1].get(p)] for p in {*metrics[0], *metrics[1]}
                if metrics[0].get(p) != metrics[1].get(p)}
    assert found.metrics == expected and {"last_loss", "train_loss"} <= set(found.metrics)
    shown = cli_here("diff", a.uri, b.uri, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["spec"] == {"train.lr": [1e-3, 5e-3]}
    text = cli_here("diff", a.uri, b.uri).stdout
    assert "  train.lr: 0.001 → 0.005" in text and "spec.name, spec.output" in text.splitlines()[-1]


def test_rerun_and_diff_are_commands_sharing_their_defaults_with_python():
    from test_cli_defaults import command_defaults, function_defaults

    shell, python = command_defaults("rerun"), function_defaults("sdk.runs.rerun:rerun")
    assert {k: shell[k] for k in ("overrides", "allow_data_change", "backend")} == python
    assert sdk.rerun is sdk.runs.rerun.rerun and "diff" in __import__("typer").main.get_command(
        __import__("sdk.cli", fromlist=["app"]).app).commands


def test_the_node_records_the_s3_object_it_downloads_and_keeps_earlier_starts(s3_env, tmp_path, monkeypatch):
    """launch.record on its own (no training): the node hashes the copy of an s3:// source the data phase then reads,
    beside its ETag; a second start keeps the first's facts under `previous`; a rerun's summary names its origin."""
    import boto3

    from launch.record import keep_rerun_of, write_node_record
    from sdk.core.summary import RunSummary
    from sdk.store import open_store

    env, bucket = s3_env
    body = b'{"instruction": "Classify.", "input": "a", "output": "World"}\n' * 4
    boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).put_object(
        Bucket=bucket, Key="d/rows.jsonl", Body=body)
    monkeypatch.setenv("FINETUNE_WORKDIR", str(tmp_path / "scratch"))
    spec = load_recipe("tiny", [f"data.source=s3://{bucket}/d/rows.jsonl", f"output=s3://{bucket}/runs"])
    folder = RunFolder(open_store(f"s3://{bucket}/runs"), "r1")
    first = write_node_record(spec, folder)
    (item, _) = first.data
    assert (item.kind, item.sha256) == ("s3", hashlib.sha256(body).hexdigest())
    assert item.etag == hashlib.md5(body).hexdigest()
    assert list((tmp_path / "scratch" / "data").rglob("rows.jsonl"))  # the copy the data phase reads, not a second one
    assert first.packages == installed_packages() and first.torch.version
    second = write_node_record(spec, folder)
    assert [p["packages_hash"] for p in second.previous] == [first.packages_hash]
    assert second.previous[0]["data"] == [f.model_dump(mode="json") for f in first.data]  # a recovered node
    folder.write_json(CLIENT_RECORD, {"rerun_of": {"run_id": "r0", "uri": "s3://x/r0"}})
    summary = RunSummary(run_id="r1", model="tiny:llama", method="lora", objective="sft", precision="fp32",
                         trainable_params=1, total_params=2, trainable_percent=50.0, resident_memory_bytes=1,
                         peak_memory_bytes=1, peak_memory_kind="cpu_peak_rss", steps=1, train_rows=1, eval_rows=0,
                         adapter_bytes=1)
    folder.write_json("summary.json", summary.model_dump(mode="json"))
    keep_rerun_of(folder, summary)
    assert folder.summary().rerun_of == "r0"


def hand_run(store, run_id: str, source, *, record: bool = True):
    """A finished run folder built by hand (no training): spec.json, status, and the client record of `source`."""
    from sdk.runs.record import write_client_record
    from sdk.store import open_store

    spec = load_recipe("tiny", [f"data.source={source}", f"output={store}"])
    folder = RunFolder(open_store(str(store)), run_id)
    folder.write_json("spec.json", spec.model_dump(mode="json"))
    folder.write_status("succeeded")
    if record:
        write_client_record(spec, folder, backend="local")
    return folder


def test_a_file_added_to_or_removed_from_a_folder_source_is_a_change(tmp_path, finetune_home):
    from sdk.runs.rerun import DataChanged, DataMissing, plan_rerun

    data = tmp_path / "folder"
    data.mkdir()
    for name in ("a", "b"):
        write_rows(data / f"{name}.jsonl", 8)
    folder = hand_run(tmp_path / "store", "r0", data)
    assert [(f.source, f.files) for f in folder.read_model(CLIENT_RECORD, sdk.core.record.ClientRecord).folders] \
        == [(str(data), ["a.jsonl", "b.jsonl"])]
    assert plan_rerun(folder.uri).checked == 2
    write_rows(data / "c.jsonl", 8)
    with pytest.raises(DataChanged) as refused:
        plan_rerun(folder.uri)
    (line,) = str(refused.value).splitlines()
    assert f"data.source: folder {data}: files changed since run r0: added c.jsonl (--allow" in line, line
    (data / "c.jsonl").rename(data / "b.jsonl.bak")
    (data / "b.jsonl").unlink()
    allowed = plan_rerun(folder.uri, allow_data_change=True)  # the folder still reads: the rerun can run on it
    assert allowed.checked == 1 and allowed.rerun.data_changes == [
        f"data.source: folder {data}: files changed since run r0: removed b.jsonl"]
    shutil.rmtree(data)
    with pytest.raises(DataMissing, match=f"{data}: no such folder now .*the rerun cannot read it$"):
        plan_rerun(folder.uri, allow_data_change=True)


def test_a_missing_data_file_is_said_to_be_missing_with_no_flag_to_suggest(tmp_path, finetune_home, cli_here):
    data = tmp_path / "rows.jsonl"
    write_rows(data, 8)
    folder = hand_run(tmp_path / "store", "r0", data)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    data.unlink()
    refused = cli_here("rerun", folder.uri, "--allow-data-change")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line == f"error: data.source: {data}: no such file now (run r0 read sha256 {digest}): the rerun cannot " \
                   "read it", line


def test_diff_never_says_no_differences_for_what_it_could_not_compare(tmp_path, finetune_home, cli_here):
    data = tmp_path / "rows.jsonl"
    write_rows(data, 8)
    with_record, without = (hand_run(tmp_path / "store", r, data, record=r == "a") for r in ("a", "b"))
    found = sdk.runs.diff.diff_runs(with_record.uri, without.uri)
    assert found.same and found.compared == ["spec"]
    text = cli_here("diff", with_record.uri, without.uri).stdout.splitlines()
    assert "no differences in the spec" in text
    assert "data, packages, hardware, environment: not compared (b has no record: launched before records)" in text
    assert not [line for line in text if "no differences" in line and "data" in line]


@pytest.mark.parametrize("name,body,field", [
    (NODE_RECORD, {"started": "abc", "product": {"version": "1"}, "python": "3", "platform": "x"}, "started"),
    (CLIENT_RECORD, {"submitted": 1.0, "backend": "local", "product": {"version": "1"}, "python": "3",
                     "platform": "x", "data": [{"field": "data.source", "source": "x", "kind": "nope"}]},
     "data.0.kind"),
    ("cost.json", {"backend": "local", "hourly_usd": "abc"}, "hourly_usd"),
])
def test_a_record_or_cost_file_with_a_wrong_field_is_one_line_naming_it(tmp_path, finetune_home, cli_here, name,
                                                                        body, field):
    from sdk.core.errors import StoreError
    from sdk.runs.cost import read_billing
    from sdk.runs.record import read_record

    data = tmp_path / "rows.jsonl"
    write_rows(data, 8)
    folder = hand_run(tmp_path / "store", "r0", data)
    other = hand_run(tmp_path / "store", "r1", data)
    folder.write_json(name, body)
    read = read_billing if name == "cost.json" else read_record
    with pytest.raises(StoreError, match=f"^{folder.uri}/{name}: {field}: "):
        read(folder)
    for args in (("status", folder.uri, "--json"), *([("diff", folder.uri, other.uri)] if read is read_record else [])):
        shown = cli_here(*args)
        assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
        (line,) = shown.stderr.strip().splitlines()
        assert line.startswith(f"error: {folder.uri}/{name}: {field}: "), line
