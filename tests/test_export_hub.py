"""`finetune export --format hub` on the node (launch.exports.hub, launch.exports.model_card), over a run folder
built by hand (spec, succeeded status, summary, data.json and a committed adapter): no model is loaded and nothing
trains. The upload path runs huggingface_hub's own calls against a recording fake up to the network, and once
against a local HTTP server that refuses every request, through the real HfApi."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import ROOT

from launch.exports import ExportContext
from launch.exports import hub as hub_module
from launch.exports.__main__ import main as export_main
from launch.exports.__main__ import run_export
from launch.exports.model_card import model_card
from sdk.core.errors import FinetuneError
from sdk.core.exports import ExportOptions
from sdk.core.spec import FineTuneSpec
from sdk.store import open_store
from sdk.store.manifest import commit_dir
from sdk.store.runfolder import RunFolder

RUN_ID = "news-20260101-000000-abcd"
SHA = "6c16dc3bc5c6efb704d92651997d61c19f04a86da30dc85fc10cafa4bcd1b8fb"
SOURCES = [
    {"field": "data.sources[0]", "source": "fancyzhx/ag_news", "format": "alpaca", "rows": 2000, "eval_rows": 100,
     "train_rows": 800, "weight": 0.5, "sha256": SHA},
    {"field": "data.sources[1]", "source": "/home/alice/private-project/news.jsonl", "format": "alpaca", "rows": 300,
     "eval_rows": 10, "train_rows": 290, "weight": 0.5, "sha256": "ab" * 32},
]
SUMMARY = {
    "run_id": RUN_ID, "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "method": "qlora", "objective": "sft",
    "precision": "bf16", "trainable_params": 4_884_480, "total_params": 139_400_000, "trainable_percent": 3.5,
    "resident_memory_bytes": 1, "peak_memory_bytes": 1, "peak_memory_kind": "cuda_max_memory_allocated",
    "hardware": {"device": "cuda", "name": "NVIDIA L4", "count": 1},
    "steps": 40, "first_loss": 3.21, "last_loss": 0.42, "eval_loss": 0.51, "train_rows": 1090, "eval_rows": 110,
    "data_sources": SOURCES, "template": "instruction",
    "instruction": "Classify this news text as World, Sports, Business or Sci/Tech.",
    "label_accuracy": {"before": {"accuracy": 0.31, "correct": 34, "total": 110},
                       "after": {"accuracy": 0.87, "correct": 96, "total": 110}},
    "generation_metrics": {"before": {"means": {"exact_match": 0.3}, "counts": {"exact_match": 110}},
                           "after": {"means": {"exact_match": 0.86}, "counts": {"exact_match": 110}}},
    "forgetting": {"before_loss": 2.5, "after_loss": 2.6, "ratio": 1.04},
    "adapter_bytes": 19_000_000, "runtime_s": {"total_s": 95.0, "train_s": 61.0},
    "versions": {"torch": "2.13.0", "transformers": "5.17.0", "peft": "0.21.2"},
}
ADAPTER_FILES = {"adapter_config.json": json.dumps({"base_model_name_or_path": "/root/.cache/finetune/base", "r": 8}),
                 "adapter_model.safetensors": "weights" * 100, "tokenizer.json": "{}",
                 "README.md": "peft's default card"}
SECRET = "s3cr3t-value-never-shown"


def spec_data(**changes) -> dict:
    data = {"name": "news", "description": "SmolLM2 learns four news topics.",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "method": {"name": "qlora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
            "data": {"sources": [{"source": s["source"], "weight": 0.5} for s in SOURCES], "template": "instruction",
                     "instruction": SUMMARY["instruction"]},
            "train": {"max_steps": 40, "batch_size": 8, "grad_accum": 2, "lr": 5e-4, "scheduler": "constant",
                      "seed": 7},
            "eval": {"labels": ["World", "Sports", "Business", "Sci/Tech"]},
            "env": {"SOME_SETTING": SECRET}, "secrets": ["HF_TOKEN"]}
    return {**data, **changes}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache: the card reads the base's license from it, never from the network."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "finetune-cache"))
    return cache


def make_run(tmp_path: Path, summary: dict | None = None, **spec_changes) -> RunFolder:
    store = open_store(str(tmp_path / "runs"))
    folder = RunFolder(store, RUN_ID)
    folder.write_json("spec.json", FineTuneSpec.model_validate(spec_data(**spec_changes)).model_dump(mode="json"))
    folder.write_status("succeeded")
    folder.write_json("summary.json", {**SUMMARY, **(summary or {})})
    folder.write_json("data.json", {"sources": SOURCES})
    adapter = tmp_path / "adapter-src"
    adapter.mkdir()
    for name, text in ADAPTER_FILES.items():
        (adapter / name).write_text(text)
    commit_dir(store, adapter, folder.key("adapter"))
    return folder


def context(tmp_path: Path, run: RunFolder, *, force: bool = False, **options) -> ExportContext:
    opts = ExportOptions(format="hub", **{"repo": "alice/news-lora", **options})
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    return ExportContext(run=run, spec=run.spec(), options=opts, out=work / "out", work=work, force=force)


def split_card(text: str) -> tuple[dict, str]:
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def python_block(body: str) -> str:
    return body.split("```python\n", 1)[1].split("```", 1)[0]


# --------------------------------------------------------------------------------------------- the card


def test_card_front_matter_and_body(tmp_path, hub_cache):
    run = make_run(tmp_path)
    front, body = split_card(model_card(context(tmp_path, run)))
    assert front == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "peft",
                     "datasets": ["fancyzhx/ag_news"], "tags": ["finetune", "qlora", "sft"],
                     "pipeline_tag": "text-generation"}  # no license: the base's card is not in the cache
    for fact in ("| r | 8 |", "| alpha | 16 |", "q_proj, v_proj", "| quant_type | nf4 |", "4 bits (bitsandbytes)",
                 "**sft**", "4,884,480 of 139,400,000", SHA, "| 2000 | 100 | 800 | 0.5 |",
                 "`news.jsonl` (a local file)",
                 "| learning rate | 0.0005 |", "| gradient accumulation | 2 |", "| effective batch | 16 |",
                 "| scheduler | constant |", "| seed | 7 |", "| steps run | 40 |", "| precision | auto → bf16 |",
                 "| label accuracy | 0.310 (34/110) | 0.870 (96/110) |", "| exact_match | 0.3 | 0.86 |",
                 "| eval loss | — | 0.51 |", "| general-text loss | 2.5 | 2.6 |", "On 110 held-out rows",
                 "1 × NVIDIA L4", "95 s in all", "SmolLM2 learns four news topics."):
        assert fact in body, fact
    assert SECRET not in body and "SOME_SETTING" not in body and "/home/alice" not in body
    code = python_block(body)
    assert 'PeftModel.from_pretrained(model, "alice/news-lora")' in code
    assert 'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in code
    assert "### Instruction:\\nClassify this news text" in code  # the prompt as the run trained on it
    compile(code, "usage", "exec")  # the snippet is Python


def test_card_license_from_the_cached_base_card_and_merged_kind(tmp_path, hub_cache):
    snapshot = hub_cache / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# SmolLM2\n")
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    run = make_run(tmp_path, data={"source": "./local/news.jsonl", "template": "auto", "system_prompt": "Be brief."},
                   summary={"template": "chat", "instruction": None})  # the summary says what auto became
    ctx = context(tmp_path, run, merged=True)
    ctx.report["merge"] = {"merged_into": "dequantized bf16 base", "max_logit_diff": 0.02, "tolerance": 0.5,
                           "top1_agreement": 0.99}
    front, body = split_card(model_card(ctx))
    assert front["license"] == "apache-2.0" and front["library_name"] == "transformers"
    assert "datasets" in front  # data.json (what the run read) names the sources, not today's spec
    assert "max logit difference 0.02" in body and "standalone transformers model" in body
    code = python_block(body)
    assert 'AutoModelForCausalLM.from_pretrained("alice/news-lora")' in code and "PeftModel" not in code
    assert '"role": "system", "content": "Be brief."' in code and "apply_chat_template" in code
    compile(code, "usage", "exec")


def test_card_without_a_hub_base_names_no_base_model(tmp_path, hub_cache):
    run = make_run(tmp_path, model="tiny:llama",
                   method={"name": "lora", "r": 4, "target_modules": r".*(q_proj|v_proj)"})
    front, body = split_card(model_card(context(tmp_path, run)))
    assert "base_model" not in front and front["tags"] == ["finetune", "lora", "sft"]
    assert "`tiny:llama`" in body and "bits (bitsandbytes)" not in body
    assert r"| target_modules | .*(q_proj\|v_proj) |" in body  # a regex's | does not split the table row
    compile(python_block(body), "usage", "exec")


# ------------------------------------------------------------------------------------------------ dry run


def test_dry_run_lists_files_and_card_and_commits_nothing(tmp_path, hub_cache, monkeypatch, capsys):
    run = make_run(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token
    monkeypatch.setattr(hub_module, "hub_api", lambda token: pytest.fail("a dry run made a Hub client"))
    options = ExportOptions(format="hub", repo="alice/news-lora", dry_run=True, private=True).model_dump_json()
    assert export_main(["--run", run.uri, "--options", options]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    listed = {f["path"]: f for f in report["hub"]["files"]}
    assert sorted(listed) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert listed["adapter_model.safetensors"]["size"] == len(ADAPTER_FILES["adapter_model.safetensors"])
    assert all(len(f["sha256"]) == 64 for f in listed.values())
    card = report["hub"]["card"]
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n") and SHA in card
    assert listed["README.md"]["size"] == len(card.encode())  # the card listed is the card that would go up
    listing = report["dry_run_listing"]
    assert "would go to alice/news-lora (private); nothing uploaded" in listing and card.rstrip() in listing
    assert "adapter_model.safetensors" in listing and "MANIFEST.json" not in listing
    assert not run.store.exists(run.key("exports/hub/MANIFEST.json")) and not run.store.list(run.key("exports"))
    assert not list((tmp_path / "finetune-cache").rglob("adapter_model.safetensors"))  # the work folder is gone


def test_dry_run_through_run_export_rewrites_the_local_base_path(tmp_path, hub_cache):
    run = make_run(tmp_path)
    options = ExportOptions(format="hub", repo="alice/news-lora", dry_run=True).model_dump_json()
    report = run_export(run.uri, options, force=False)
    assert report["sizes"].keys() == {"README.md", "hub.json"}  # exports/hub keeps the card and the record only
    assert report["files"]["repo"] == "alice/news-lora" and "commit_url" not in report["files"]


# ------------------------------------------------------------------------------------------------- upload


class FakeApi:
    """HfApi's calls as export makes them, recorded; nothing leaves the machine."""

    def __init__(self, token: str, *, public_repo: bool = False, fail: Exception | None = None,
                 held: tuple[str, ...] = (".gitattributes",)):
        self.token, self.public_repo, self.fail, self.calls = token, public_repo, fail, []
        self.endpoint = "https://huggingface.co"
        self.held = list(held)

    def list_repo_files(self, repo_id, **kwargs):  # read-only: not recorded among the calls that change the Hub
        return self.held

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail is not None:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", repo_id, kwargs))
        return SimpleNamespace(private=not self.public_repo)

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", kwargs, files))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd", oid="0123abcd")


@pytest.fixture
def fake_hub(monkeypatch):
    made: list[FakeApi] = []

    def install(**behaviour):
        monkeypatch.setattr(hub_module, "hub_api", lambda token: made.append(FakeApi(token, **behaviour)) or made[-1])
        return made

    return install


def test_upload_sends_the_adapter_and_card_with_the_named_token(tmp_path, hub_cache, fake_hub, monkeypatch):
    made = fake_hub()
    monkeypatch.setenv("HF_TOKEN", "the-default-variable")  # not the one named: must not be used
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_named")
    ctx = context(tmp_path, make_run(tmp_path), token_env="MY_HUB_TOKEN", private=True)
    record = hub_module.build(ctx)
    (api,) = made
    assert api.token == "hf_named"
    create, info, upload = api.calls
    assert create == ("create_repo", "alice/news-lora", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert info[0] == "repo_info"  # --private checked against an existing repo's visibility
    kwargs, files = upload[1], upload[2]
    assert kwargs["repo_id"] == "alice/news-lora" and kwargs["repo_type"] == "model"
    assert kwargs["commit_message"] == f"finetune export of run {RUN_ID}"
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert files["adapter_model.safetensors"] == ADAPTER_FILES["adapter_model.safetensors"].encode()
    assert files["README.md"].decode().startswith("---\nbase_model:")  # ours, not peft's default card
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert sorted(p.name for p in ctx.out.iterdir()) == ["README.md", "hub.json"]  # no weights in the run folder
    saved = json.loads((ctx.out / "hub.json").read_text())
    assert saved == record and saved["commit_url"].endswith("/commit/0123abcd") and saved["revision"] == "0123abcd"
    assert {f["path"]: f["size"] for f in saved["files"]} == {k: len(v) for k, v in files.items()}
    assert ctx.report["uploaded"] == saved["commit_url"]


def test_merged_upload_sends_the_merged_folder(tmp_path, hub_cache, fake_hub, monkeypatch):
    made = fake_hub()
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    ctx = context(tmp_path, make_run(tmp_path), merged=True)
    merged = ctx.work / "merged"
    merged.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "merge_report.json"):
        (merged / name).write_text("{}")
    ctx.merged_folder = lambda: merged  # the merge itself is launch.tools.merge's, tested in test_merge
    ctx.report["merge"] = {"merged_into": "dequantized bf16 base", "max_logit_diff": 0.01}
    hub_module.build(ctx)
    files = made[0].calls[-1][2]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert "library_name: transformers" in files["README.md"].decode()


def test_missing_token_is_one_line_naming_the_variable(tmp_path, hub_cache, fake_hub, monkeypatch):
    made = fake_hub()
    monkeypatch.delenv("MY_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "present-but-not-named")
    ctx = context(tmp_path, make_run(tmp_path), token_env="MY_HUB_TOKEN")
    with pytest.raises(FinetuneError, match=r"^--token-env: MY_HUB_TOKEN is not set") as caught:
        hub_module.build(ctx)
    assert "\n" not in str(caught.value) and made == [] and not (ctx.work / "upload").exists()


def http_error(status: int, message: str):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    response = httpx.Response(status, request=request, json={"error": message})
    return HfHubHTTPError(f"{status} Client Error\n\n{message}", response=response, server_message=message)


def connect_error():
    import httpx

    return httpx.ConnectError("[Errno 111] Connection refused")


@pytest.mark.parametrize(("fail", "expected"), [
    (lambda: http_error(401, "Invalid credentials in Authorization header"),
     "the token in $MY_HUB_TOKEN was refused by the Hub (401: Invalid credentials in Authorization header)"),
    (lambda: http_error(403, "You don't have the rights to create a model under the namespace \"alice\""),
     "the token in $MY_HUB_TOKEN may not write to alice/news-lora (403: "),
    (lambda: http_error(503, "Service Unavailable"), "the Hub failed to take the upload to alice/news-lora (503"),
    (connect_error, "could not reach https://huggingface.co to upload to alice/news-lora ([Errno 111]"),
])
def test_hub_errors_become_one_line(tmp_path, hub_cache, fake_hub, monkeypatch, fail, expected):
    fake_hub(fail=fail())
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_secret_token")
    ctx = context(tmp_path, make_run(tmp_path), token_env="MY_HUB_TOKEN")
    with pytest.raises(hub_module.HubError) as caught:
        hub_module.build(ctx)
    line = str(caught.value)
    assert line.startswith(expected) and "\n" not in line and "hf_secret_token" not in line
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no traceback chain to print
    assert not (ctx.out / "hub.json").exists()


def test_private_is_refused_for_an_existing_public_repo(tmp_path, hub_cache, fake_hub, monkeypatch):
    made = fake_hub(public_repo=True)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(hub_module.HubError, match="already exists on the Hub and is public"):
        hub_module.build(context(tmp_path, make_run(tmp_path), private=True))
    assert [c[0] for c in made[0].calls] == ["create_repo", "repo_info"]  # nothing uploaded


def test_a_repo_that_already_holds_a_model_is_uploaded_over_only_with_force(tmp_path, hub_cache, fake_hub,
                                                                           monkeypatch):
    made = fake_hub(held=(".gitattributes", "README.md", "adapter_model.safetensors"))
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(hub_module.HubError, match=r"alice/news-lora already holds 2 files \(README.md, adapter_model"):
        hub_module.build(context(tmp_path, make_run(tmp_path)))
    assert [c[0] for c in made[0].calls] == ["create_repo"]  # nothing uploaded
    hub_module.build(context(tmp_path / "again", make_run(tmp_path / "again"), force=True))
    assert [c[0] for c in made[1].calls] == ["create_repo", "upload_folder"]


# ---------------------------------------------------------------------------- the real HfApi, a local server


class Refuse401(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]] = []

    def _refuse(self) -> None:
        Refuse401.seen.append((self.command, self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args) -> None:
        pass


def test_the_real_hfapi_maps_a_401_to_the_one_line_refusal(tmp_path, hub_cache):
    """`python -m launch.exports` with HfApi pointed at a local server that answers 401: exit 2, the refusal as
    the last stdout line, the token sent from the named variable, nothing committed to the run folder."""
    run = make_run(tmp_path)
    Refuse401.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse401)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_OFFLINE": "0",
               "MY_HUB_TOKEN": "hf_local_test", "HF_TOKEN": "not-this-one", "NO_PROXY": "127.0.0.1"}
        options = ExportOptions(format="hub", repo="alice/news-lora", token_env="MY_HUB_TOKEN").model_dump_json()
        process = subprocess.run([sys.executable, "-m", "launch.exports", "--run", run.uri, "--options", options],
                                 capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert process.returncode == 2, process.stderr
    error = json.loads(process.stdout.strip().splitlines()[-1])["error"]
    assert error.startswith("the token in $MY_HUB_TOKEN was refused by the Hub (401"), error
    assert "Traceback" not in process.stderr and "hf_local_test" not in process.stdout + process.stderr
    assert Refuse401.seen and Refuse401.seen[0][:2] == ("POST", "/api/repos/create")
    assert Refuse401.seen[0][2] == "Bearer hf_local_test"
    assert not run.store.list(run.key("exports"))
