"""`finetune export`: every bad request is one line, exit 2, and leaves nothing in the run folder (fast tier, run
folders written by hand); the exports themselves, checked in llama.cpp, are in test_export_gguf.py."""

from __future__ import annotations

import json

import pytest

from sdk.core.recipes import load_recipe
from sdk.store import open_store
from sdk.store.manifest import commit_dir
from sdk.store.runfolder import RunFolder


def hand_made_run(tmp_path, overrides=(), *, state="succeeded", run_id="run-1"):
    """A run folder as a finished run leaves it (spec, status, a committed adapter), without training."""
    store_dir = tmp_path / "store"
    spec = load_recipe("tiny", [f"output={store_dir}", *overrides])
    folder = RunFolder(open_store(str(store_dir)), run_id)
    folder.write_json("spec.json", spec.model_dump(mode="json"))
    folder.write_status(state)
    adapter = tmp_path / f"{run_id}-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    commit_dir(folder.store, adapter, folder.key("adapter"))
    return folder


@pytest.fixture
def run(tmp_path):
    return hand_made_run(tmp_path)


def refused(cli_here, *args, env=None):
    result = cli_here("export", *args, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "says"), [
    (["--format", "onnx"], "--format: 'onnx' is not an export format; use one of gguf, ollama, merged, hub"),
    (["--format", "gguf", "--quant", "q9_9"], "--quant: q9_9: not a llama.cpp file type"),
    (["--format", "merged", "--quant", "q8_0"], "--quant: not an option of --format merged (it takes no options)"),
    (["--format", "gguf", "--repo", "me/x"], "--repo: not an option of --format gguf"),
    (["--format", "hub"], "--repo: name the Hub repo to upload to (owner/name)"),
    (["--format", "hub", "--repo", "not a repo"], "--repo: 'not a repo' is not a Hub repo id (owner/name)"),
    (["--format", "hub", "--repo", "me/x", "--token-env", "MY-TOKEN"], "--token-env: 'MY-TOKEN' is not an environment"),
    (["--format", "hub", "--repo", "me/x", "--token-env", "FT_TEST_NO_SUCH_TOKEN"],
     "--token-env: FT_TEST_NO_SUCH_TOKEN is not set in this environment"),
    (["--format", "gguf", "--tolerance", "-1"], "--tolerance: Input should be greater than or equal to 0"),
])
def test_a_bad_request_is_one_line_naming_the_option(cli_here, run, args, says):
    assert says in refused(cli_here, run.uri, *args)
    assert not run.store.list(run.key("exports"))


@pytest.mark.parametrize(("method", "args", "says"), [
    ("prompt_tuning", ["--format", "gguf"], "method.name: prompt_tuning"),
    ("prefix_tuning", ["--format", "merged"], "method.name: prefix_tuning"),
    ("ia3", ["--format", "gguf", "--adapter-only"],
     "--adapter-only: method.name ia3 trains no LoRA matrices llama.cpp can apply to a base GGUF; export it merged"),
    ("dora", ["--format", "ollama", "--adapter-only"], "--adapter-only: method.name dora trains no LoRA matrices"),
    ("prompt_tuning", ["--format", "gguf", "--adapter-only"], "method.name: prompt_tuning"),
])
def test_a_method_the_format_cannot_carry_is_refused_by_name(cli_here, tmp_path, method, args, says):
    folder = hand_made_run(tmp_path, [f"method={{name: {method}}}"])
    assert says in refused(cli_here, folder.uri, *args)
    assert not folder.store.list(folder.key("exports"))


def test_a_run_that_did_not_succeed_has_nothing_to_export(cli_here, tmp_path):
    folder = hand_made_run(tmp_path, state="failed")
    assert "is failed" in refused(cli_here, folder.uri, "--format", "gguf")


def test_an_export_is_not_replaced_without_force_nor_a_folder_that_is_not_one(cli_here, run, tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "model.gguf").write_text("x")
    commit_dir(run.store, done, run.key("exports/gguf"))
    assert "exports/gguf: already exported (pass --force" in refused(cli_here, run.uri, "--format", "gguf")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert "exists and is not empty" in refused(cli_here, run.uri, "--format", "merged", "-o", str(mine))
    forced = refused(cli_here, run.uri, "--format", "merged", "-o", str(mine), "--force")
    assert "not a previous fetch or merge" in forced
    assert (mine / "notes.txt").read_text() == "keep me"


def test_fetch_export_brings_back_verified_files_and_refuses_a_corrupt_one(cli_here, run, tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "model-q8_0.gguf").write_bytes(b"GGUF" + bytes(100))
    (done / "export_report.json").write_text(json.dumps({"format": "gguf"}))
    commit_dir(run.store, done, run.key("exports/gguf"))
    fetched = cli_here("fetch", run.uri, str(tmp_path / "back"), "--export", "gguf")
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "back" / "model-q8_0.gguf").read_bytes() == b"GGUF" + bytes(100)
    missing = cli_here("fetch", run.uri, str(tmp_path / "none"), "--export", "gguf-adapter")
    assert missing.returncode == 2 and "--format gguf --adapter-only" in missing.stderr
    (tmp_path / "store" / run.run_id / "exports" / "gguf" / "model-q8_0.gguf").write_bytes(b"GGUF" + bytes(99))
    corrupt = cli_here("fetch", run.uri, str(tmp_path / "bad"), "--export", "gguf")
    assert corrupt.returncode == 2 and "corrupted" in corrupt.stderr and not (tmp_path / "bad").exists()


def test_an_architecture_llama_cpp_cannot_convert_is_named(tmp_path):
    pytest.importorskip("llama_cpp")
    from launch.exports.llamacpp import architecture_refusal

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"}))
    assert architecture_refusal(tmp_path) == ("model.id: architecture NoSuchForCausalLM (model_type nosuch) cannot be "
                                              "converted by llama.cpp 0.3.36's convert_hf_to_gguf.py")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    assert architecture_refusal(tmp_path) is None


def test_a_check_that_fails_commits_nothing_and_keeps_the_files_here_or_beside_the_exports(tmp_path, monkeypatch):
    """The driver's contract with every format, shown with a format whose check fails: exit 1 with the numbers,
    nothing under exports/<name>/; the files stay in the work folder (here) or under exports/<name>.failed/ (a node,
    whose disk goes with its cluster)."""
    import sys

    from launch.exports.__main__ import main
    from sdk.core.exports import FORMATS, ExportFormat, ExportOptions

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "always_off.py").write_text(
        "def build(ctx):\n"
        "    (ctx.out / 'model.gguf').write_bytes(b'GGUF')\n"
        "    ctx.report['check'] = {'passed': False, 'tolerance_points': 5.0, 'files': {'q8_0': {\n"
        "        'metric': 'label_accuracy', 'llama_cpp': 0.5, 'transformers': 0.9, 'difference_points': -40.0,\n"
        "        'rows': 10, 'passed': False}}}\n"
        "    return {'model': {'q8_0': 'model.gguf'}}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setitem(FORMATS, "off", ExportFormat("off", "a format whose check fails", "always_off", (),
                                                     lambda spec, options: None))
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    folder = hand_made_run(tmp_path)
    options = ExportOptions(format="off").model_dump_json()
    monkeypatch.setattr(sys, "argv", ["x"])
    assert main(["--run", folder.uri, "--options", options]) == 1
    kept = next((tmp_path / "cache" / "exports").iterdir()) / "out"
    assert (kept / "model.gguf").read_bytes() == b"GGUF" and json.loads((kept / "export_report.json").read_text())
    assert not folder.store.list(folder.key("exports"))
    assert main(["--run", folder.uri, "--options", options, "--outcome", "exports/.off.outcome.json"]) == 1
    outcome = folder.read_json("exports/.off.outcome.json")
    assert outcome["exit"] == 1
    assert "label_accuracy 0.500 vs 0.900 in transformers (-40.0 points on 10 rows, tolerance 5.0)" \
        in outcome["error"] and outcome["error"].endswith(f"files kept in {folder.uri}/exports/off.failed")
    assert folder.store.exists(folder.key("exports/off.failed/model.gguf"))
    assert not folder.store.exists(folder.key("exports/off/MANIFEST.json"))


def test_the_node_export_task_runs_the_same_driver_and_reports_through_the_run_folder(tmp_path):
    from sdk.exports.remote import export_cluster, export_run_script

    folder = hand_made_run(tmp_path)
    script = export_run_script(folder, '{"format": "gguf"}', name="gguf-adapter", force=True)
    assert '-m launch.exports.llamacpp >&2 || exit 3' in script
    assert f"-m launch.exports --run {folder.uri} --options '{{\"format\": \"gguf\"}}' --outcome " \
           "exports/.gguf-adapter.outcome.json --force" in script
    assert export_cluster("run-1", "gguf") != export_cluster("run-1", "gguf-adapter")
    assert len(export_cluster("a" * 200, "gguf")) <= 48


def test_too_few_rows_to_measure_the_tolerance_are_refused_naming_both_ways_out():
    from launch.exports.check import enough_rows

    assert enough_rows(20, 5.0) is None and enough_rows(1, 0.0) is None and enough_rows(4, 25.0) is None
    assert enough_rows(16, 5.0) == ("the check has 16 held-out rows: one row is 6.2 points, more than --tolerance 5; "
                                    "give --rows 20 or more (eval.num_samples, more eval data) or --tolerance 6.2")
