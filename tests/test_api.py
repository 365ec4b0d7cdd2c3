"""`finetune api` without training: the official `openai` client against the real HTTP server (uvicorn on
127.0.0.1, in a thread), the request → spec table, job statuses, events / checkpoints / the metrics CSV, keys, the
zero adapter. Jobs that train are in tests/test_api_jobs.py."""

from __future__ import annotations

import contextlib
import json
import stat
import threading
import time
import typing

import openai
import pytest

import sdk

CHAT = [{"messages": [{"role": "user", "content": f"What is {i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
        for i in range(8)]


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def api(tmp_path, finetune_home):
    """The API on a free port: (openai client with a key, config path, store path)."""
    with serving(tmp_path, str(tmp_path / "store")) as (client, config):
        yield client, config, tmp_path / "store"


@contextlib.contextmanager
def serving(tmp_path, store: str):
    import uvicorn
    from helpers import free_port, wait_for_port

    from sdk.api import build
    from sdk.api.keys import create_key

    config = tmp_path / "api.yaml"
    config.write_text(f"store: {store}\nmodels:\n  tiny-chat: {{model: 'tiny:llama'}}\n"
                      "  gpt-4o-mini-2024-07-18: {model: 'tiny:llama', method: lora}\n"
                      "  on-skypilot: {model: 'tiny:llama', backend: skypilot, accelerators: 'H100:1'}\n")
    app, service, inference = build(config=str(config))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=create_key()[1], max_retries=0)
    try:
        yield client, config
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


def test_files_are_uploaded_listed_read_and_deleted(api, tmp_path):
    client, _, store = api
    uploaded = client.files.create(file=jsonl(tmp_path / "train.jsonl", CHAT).open("rb"), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed" and uploaded.filename == "train.jsonl"
    assert uploaded.bytes == (tmp_path / "train.jsonl").stat().st_size
    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    assert client.files.content(uploaded.id).text == (tmp_path / "train.jsonl").read_text()
    assert (store / "api" / "files" / f"{uploaded.id}.jsonl").is_file()  # the store holds it
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError, match=uploaded.id):
        client.files.retrieve(uploaded.id)


@pytest.mark.parametrize(("row", "line", "says"), [
    ("{not json", 2, "not valid JSON"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
                   {"role": "assistant", "content": "a cat"}]}, 2, "images"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]}, 2,
     "audio"),
    ({"text": "a corpus line"}, 2, "no fine-tuning example"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": []}, 2, "non_preferred_output"),
])
def test_a_bad_line_is_refused_on_upload_naming_it(api, tmp_path, row, line, says):
    client = api[0]
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=jsonl(tmp_path / "bad.jsonl", [CHAT[0], row, CHAT[1]]).open("rb"), purpose="fine-tune")
    error = caught.value.body
    assert f"line {line}" in error["message"] and says in error["message"], error
    assert error["param"] == "file" and error["type"] == "invalid_request_error"
    assert list(client.files.list()) == []


def test_a_line_without_an_answer_refuses_the_job_naming_line_3(api, tmp_path):
    client = api[0]
    rows = [CHAT[0], CHAT[1], {"messages": [{"role": "user", "content": "no answer"}]}, CHAT[2]]
    uploaded = client.files.create(file=jsonl(tmp_path / "t.jsonl", rows).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id)
    error = caught.value.body
    assert error["message"].startswith(f"training_file {uploaded.id}: line 3: "), error
    assert "assistant" in error["message"] and error["param"] == "training_file"
    assert list(client.fine_tuning.jobs.list()) == []  # no job


def test_files_and_job_records_live_in_an_s3_store(tmp_path, finetune_home, s3_env):
    """The same API on a real S3 server (moto): uploads land in the bucket, and the job check reads the rows there."""
    _, bucket = s3_env
    with serving(tmp_path, f"s3://{bucket}/ft-api") as (client, _):
        uploaded = client.files.create(file=jsonl(tmp_path / "t.jsonl", [*CHAT[:3], {"messages": [
            {"role": "user", "content": "?"}]}]).open("rb"), purpose="fine-tune")
        with pytest.raises(openai.BadRequestError, match=f"training_file {uploaded.id}: line 4: "):
            client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id)
        assert client.files.content(uploaded.id).text.count("\n") == 4
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == [f"ft-api/api/files/{uploaded.id}.json", f"ft-api/api/files/{uploaded.id}.jsonl"]
    with serving(tmp_path, f"s3://{bucket}/ft-api") as (client, _):  # a restarted API reads its files back
        assert [f.id for f in client.files.list()] == [uploaded.id]


def test_keys_and_unknown_things_answer_as_openai_does(api):
    client, _, _ = api
    url = str(client.base_url)
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=url, api_key="ft-wrong", max_retries=0).fine_tuning.jobs.list()
    assert caught.value.body == {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                 "param": None, "code": "invalid_api_key"}
    import httpx

    bare = httpx.get(f"{url}fine_tuning/jobs")  # no Authorization header at all
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert bare.json()["error"]["message"].startswith("You didn't provide an API key")
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.retrieve("ftjob-unknown")
    assert caught.value.body == {"message": "No such fine-tuning job: ftjob-unknown", "type": "invalid_request_error",
                                 "param": "fine_tuning_job_id", "code": "fine_tuning_job_not_found"}
    for call in (lambda: client.fine_tuning.jobs.cancel("ftjob-unknown"),
                 lambda: client.fine_tuning.jobs.list_events("ftjob-unknown"),
                 lambda: client.fine_tuning.jobs.checkpoints.list("ftjob-unknown"),
                 lambda: client.models.retrieve("ft:tiny-chat::ftjob-unknown")):
        with pytest.raises(openai.NotFoundError):
            call()
    reply = httpx.get(url.replace("/v1/", "/v2/nothing"), headers={"Authorization": f"Bearer {client.api_key}"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_url"


def test_an_unmapped_openai_model_names_the_map(api, tmp_path):
    client, config, _ = api
    uploaded = client.files.create(file=jsonl(tmp_path / "t.jsonl", CHAT).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="gpt-4.1-2025-04-14", training_file=uploaded.id)
    assert caught.value.body["code"] == "model_not_available" and str(config) in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id,
                                       method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}})
    assert caught.value.body["param"] == "method.supervised.hyperparameters.beta"
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file="file-missing")
    assert caught.value.body["param"] == "training_file"
    assert [m.id for m in client.models.list()] == ["tiny-chat", "gpt-4o-mini-2024-07-18", "on-skypilot"]


# -- the request → spec table (sdk.api.jobs)

def spec_for(body, *, config=None, eval_data=None):
    from sdk.api.config import ApiConfig, ModelEntry
    from sdk.api.jobs import build_spec

    config = config or ApiConfig(store="/tmp/s", models={"m": ModelEntry(model="tiny:llama")})
    return build_spec(config, {"model": "m", "training_file": "file-x", **body}, data="/d/t.jsonl", eval_data=eval_data)


def test_hyperparameters_map_to_the_spec_as_the_table_says():
    spec, _, resolved = spec_for({"hyperparameters": {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 2.0},
                                  "seed": 7})
    default = sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl").train.lr
    assert (spec.train.epochs, spec.train.max_steps, spec.train.batch_size, spec.train.seed) == (3, None, 2, 7)
    assert spec.train.lr == pytest.approx(2 * default)
    assert resolved == {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 2.0}
    assert spec.data.source == "/d/t.jsonl" and spec.data.eval_split == 0 and spec.output == "/tmp/s"
    spec, _, resolved = spec_for({}, eval_data="/d/v.jsonl")
    assert spec.data.eval_source == "/d/v.jsonl" and resolved["learning_rate_multiplier"] == 1.0
    assert resolved["n_epochs"] == "auto" and spec.objective.name == "sft"


def test_dpo_and_reinforcement_methods_become_their_objectives():
    spec, _, _ = spec_for({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 1}}}})
    assert spec.objective.name == "dpo" and spec.objective.beta == 0.25 and spec.train.epochs == 1
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "eq"}
    spec, _, _ = spec_for({"method": {"type": "reinforcement", "reinforcement": {"grader": grader}}})
    assert spec.objective.name == "grpo" and spec.objective.rewards[0].model_dump(exclude_none=True)["type"] == \
        "string_check"
    from sdk.api.errors import ApiError

    with pytest.raises(ApiError, match="only 'auto'"):
        spec_for({"method": {"type": "reinforcement", "reinforcement": {
            "grader": grader, "hyperparameters": {"reasoning_effort": "high"}}}})
    with pytest.raises(ApiError, match="use one of dpo, reinforcement, supervised"):
        spec_for({"method": {"type": "unsupervised"}})


def test_the_operators_settings_apply_and_the_request_wins_over_them(tmp_path):
    from sdk.api.config import ApiConfig, ModelEntry

    config = ApiConfig(store="/tmp/s", models={"m": ModelEntry(
        model="tiny:llama", method="qlora", accelerators="H100:1", backend="skypilot",
        set=["train.max_steps=50", "train.batch_size=8", "data.max_length=256"])})
    spec, entry, _ = spec_for({}, config=config)
    assert (spec.method.name, spec.resources.accelerators, spec.train.max_steps, spec.train.batch_size) == \
        ("qlora", {"H100": 1}, 50, 8)
    assert spec.data.max_length == 256 and entry.backend == "skypilot"
    spec, _, _ = spec_for({"hyperparameters": {"n_epochs": 2, "batch_size": 1}}, config=config)
    assert (spec.train.epochs, spec.train.max_steps, spec.train.batch_size) == (2, None, 1)


def test_every_run_state_reads_as_a_job_status():
    from sdk.api.jobs import JOB_STATUS
    from sdk.api.objects import JobStatus
    from sdk.store.runfolder import RunState

    assert set(JOB_STATUS) == set(typing.get_args(RunState))
    assert set(JOB_STATUS.values()) <= set(typing.get_args(JobStatus))


# -- what a run folder says, as events, checkpoints and the metrics CSV

ROWS = [{"step": 1, "time": 100.0, "loss": 2.0, "mean_token_accuracy": 0.5, "tokens_seen": 40},
        {"step": 2, "time": 110.0, "loss": 1.5, "mean_token_accuracy": 0.6, "tokens_seen": 80},
        {"step": 2, "time": 111.0, "eval_loss": 1.7}]


def a_job(**update):
    from sdk.api.state import JobRecord

    fields = dict(id="ftjob-x", created_at=90, model="m", base="tiny:llama", fine_tuned_model="ft:m::ftjob-x",
                  training_file="file-t", seed=42, hyperparameters={}, method={"type": "supervised"}, spec={},
                  backend="local", launched=True)
    return JobRecord(**{**fields, **update})


def test_events_checkpoints_and_results_come_from_the_run_folder():
    from sdk.api import progress

    events = progress.events(a_job(final="succeeded", finished_at=120), ROWS, {"total_steps": 4}, [1])
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith("Created fine-tuning job")
    steps = [e for e in events if e.type == "metrics"]
    assert [e.message for e in steps] == ["Step 2/4: training loss=1.5000, validation loss=1.7000",
                                          "Step 1/4: training loss=2.0000"]
    assert steps[0].data == {"step": 2, "train_loss": 1.5, "train_mean_token_accuracy": 0.6, "valid_loss": 1.7,
                             "total_steps": 4}
    assert len({e.id for e in events}) == len(events)
    assert [e.id for e in progress.events(a_job(), ROWS, {}, [1])][-3:] == [e.id for e in events][-3:]  # stable ids
    checkpoints = progress.checkpoints(a_job(final="succeeded"), ROWS, [1], 2)
    assert [(c.step_number, c.fine_tuned_model_checkpoint) for c in checkpoints] == [
        (2, "ft:m::ftjob-x"), (1, "ft:m::ftjob-x:ckpt-step-1")]
    assert checkpoints[0].metrics == {"step": 2, "train_loss": 1.5, "train_mean_token_accuracy": 0.6, "valid_loss": 1.7}
    assert progress.results_csv(ROWS, ["mean_token_accuracy", "reward"]).splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy", "1,2.0,0.5,,", "2,1.5,0.6,1.7,"]
    assert progress.trained_tokens(ROWS) == 80
    assert progress.estimated_finish(ROWS, {"total_steps": 4}) == 130


def test_keys_are_kept_owner_only_as_hashes_and_a_revoked_key_stops_working(finetune_home, run_cli):
    from sdk.api.keys import KeyCheck, first_key, keys_file

    first = first_key()
    assert first and first_key() is None  # made at the first start only
    made = run_cli("api", "keys", "--create", env={"FINETUNE_HOME": str(finetune_home)})
    ident, key = made.stdout.split()
    assert stat.S_IMODE(keys_file().stat().st_mode) == 0o600 and key not in keys_file().read_text()
    listed = run_cli("api", "keys", env={"FINETUNE_HOME": str(finetune_home)}).stdout
    assert ident in listed and key[-4:] in listed and key not in listed
    check = KeyCheck()
    assert check.valid(key) and check.valid(first) and not check.valid("ft-nope") and not check.valid(None)
    time.sleep(0.01)
    assert run_cli("api", "keys", "--revoke", ident, env={"FINETUNE_HOME": str(finetune_home)}).returncode == 0
    assert not check.valid(key) and check.valid(first)
    refused = run_cli("api", "keys", "--revoke", "key_nope", env={"FINETUNE_HOME": str(finetune_home)})
    assert refused.returncode == 2 and "no such key" in refused.stderr and "Traceback" not in refused.stderr


def test_the_zero_adapter_keeps_every_tensor_and_zeroes_it(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from sdk.api.inference import zero_adapter

    source = tmp_path / "a"
    source.mkdir()
    (source / "adapter_config.json").write_text('{"r": 4}')
    weights = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.randn(8, 4, dtype=torch.bfloat16)}
    save_file(weights, str(source / "adapter_model.safetensors"), metadata={"format": "pt"})
    zeroed = load_file(str(zero_adapter(source, tmp_path / "z") / "adapter_model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in zeroed.items()} == {k: (v.shape, v.dtype) for k, v in weights.items()}
    assert all(not v.any() for v in zeroed.values())


def test_a_job_that_succeeds_as_a_client_asks_for_it_is_loaded_into_the_engine_once():
    """The job watcher (the job just succeeded) and the client's first request load the same adapter at once;
    vLLM refuses a name loaded twice (CI saw the 500), so the second waits for the first and posts nothing."""
    from types import SimpleNamespace

    from sdk.api.inference import Engine, Inference

    posted: list[str] = []

    class Refusing(Engine):  # vLLM's answer to a second load of one name
        def post(self, route, body):
            posted.append(body["lora_name"])
            time.sleep(0.3)

    engine = Refusing(SimpleNamespace(alive=lambda: True), zero=True, loaded=set())
    inference = Inference.__new__(Inference)
    inference._load_once = lambda engine, job: (engine.post("/v1/load_lora_adapter", {"lora_name": job.id}),
                                                engine.loaded.add(job.id))
    job = SimpleNamespace(id="ftjob-1")
    threads = [threading.Thread(target=inference._load, args=(engine, job)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert posted == ["ftjob-1"] and engine.loaded == {"ftjob-1"}


def test_a_method_vllm_cannot_serve_as_lora_trains_but_says_how_to_serve_it():
    from sdk.api.inference import unservable

    assert unservable(a_job(spec={"model": "tiny:llama", "data": "d.jsonl"})) is None
    assert "DoRA" in unservable(a_job(spec={"model": "tiny:llama", "data": "d.jsonl", "method": {"name": "dora"}}))


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"unknown_field": 1}, "unknown_field", "Unrecognized request argument"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations", "tracking"),
    ({"seed": 8589934592}, "seed", "0 to 2147483647"),
    ({"hyperparameters": "auto"}, "hyperparameters", "an object"),
    ({"hyperparameters": {"n_epochs": 2.5}}, "method.supervised.hyperparameters.n_epochs", "an integer"),
    ({"hyperparameters": {"n_epochs": True}}, "method.supervised.hyperparameters.n_epochs", "an integer"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": [1]}}}, "method.supervised.hyperparameters",
     "an object"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}}, "method.dpo.hyperparameters.beta",
     "a number"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": {
        "type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0"}}}},
     "method.reinforcement.grader", "runs the request's code"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": {
        "type": "multi", "calculate_output": "a", "graders": {"a": {
            "type": "score_model", "name": "s", "model": "m", "input": [], "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": "AWS_SECRET_ACCESS_KEY"}}}}}},
     "method.reinforcement.grader.graders.a.api_key_env", "grader_keys"),
    ({"model": "/etc"}, "model", "a Hub model id"),
    ({"model": "on-skypilot"}, "model", "use an s3:// store for SkyPilot runs"),
    ({"model": "pkg://../../../etc/passwd"}, "model", "a Hub model id"),
])
def test_what_openai_refuses_at_create_is_refused_by_name(api, tmp_path, body, param, says):
    client = api[0]
    uploaded = client.files.create(file=jsonl(tmp_path / "t.jsonl", CHAT).open("rb"), purpose="fine-tune")
    request = {"model": "tiny-chat", "training_file": uploaded.id, **body}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/fine_tuning/jobs", body=request, cast_to=object)
    assert caught.value.body["param"] == param and says in caught.value.body["message"], caught.value.body
    assert list(client.fine_tuning.jobs.list()) == []


def test_odd_but_valid_files_upload_and_bad_query_values_answer_400(api, tmp_path):
    client = api[0]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in CHAT[:2])
    tricky = json.dumps({"messages": [{"role": "user", "content": "a\u2028b\x85c"},
                                      {"role": "assistant", "content": "ok"}]}, ensure_ascii=False)
    (tmp_path / "odd.jsonl").write_bytes(b"\xef\xbb\xbf" + (text + "\n" + tricky + "\n").encode())
    assert client.files.create(file=(tmp_path / "odd.jsonl").open("rb"), purpose="fine-tune").status == "processed"
    with pytest.raises(openai.BadRequestError) as caught:
        client.get("/fine_tuning/jobs", options={"params": {"limit": "abc"}}, cast_to=object)
    assert caught.value.body["param"] == "limit"


def test_a_cancel_that_lands_while_a_job_launches_stays_cancelled(tmp_path, finetune_home):
    """_launch adopts a run folder started before it looked (the launch that raced the cancel): the job stays
    cancelled, and its run is asked to stop."""
    from sdk.api.config import ApiConfig
    from sdk.api.service import JobService
    from sdk.api.state import ApiState
    from sdk.store.runfolder import LAUNCH, SPEC, RunFolder

    state = ApiState(str(tmp_path / "store"))
    service = JobService(ApiConfig(store=str(tmp_path / "store")), state)
    spec = sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl")
    job = a_job(spec=spec.model_dump(mode="json"), launched=False)
    state.save_job(job)
    folder = RunFolder(state.store, job.id)
    folder.write_json(SPEC, spec.model_dump(mode="json"))
    folder.write_json(LAUNCH, {"backend": "local", "info": {"pid": 999999, "log": "x", "host": "elsewhere"}})
    service._starting.add(job.id)
    state.save_job(job.model_copy(update={"final": "cancelled"}))  # the cancel, while submit ran
    service._launch(job.id)
    assert state.job(job.id).final == "cancelled" and state.job(job.id).launched and folder.cancel_requested()
    assert service.view(state.job(job.id)).status == "cancelled"


# -- jobs created for real, none trained: the one local slot is held by a job that runs on another machine

def hold_the_local_slot(store):
    """A job of this store that trains on another machine (its node's host is not this one): it holds the API's one
    local slot (max_local_jobs: 1), so the jobs a test creates wait `queued` and nothing trains here."""
    from sdk.api.state import ApiState
    from sdk.store.runfolder import LAUNCH, SPEC, RunFolder

    state = ApiState(str(store))
    spec = sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl").model_dump(mode="json")
    job = a_job(id="ftjob-elsewhere", created_at=1, spec=spec)
    state.save_job(job)
    folder = RunFolder(state.store, job.id)
    folder.write_json(SPEC, spec)
    folder.write_json(LAUNCH, {"backend": "local", "info": {"pid": 999999, "log": "x", "host": "elsewhere"}})
    folder.write_status("running")
    return state


@pytest.fixture
def queued_api(tmp_path, finetune_home):
    hold_the_local_slot(tmp_path / "store")
    with serving(tmp_path, str(tmp_path / "store")) as (client, _):
        assert client.fine_tuning.jobs.retrieve("ftjob-elsewhere").status == "running"
        yield client


def upload(client, path, rows):
    return client.files.create(file=jsonl(path, rows).open("rb"), purpose="fine-tune")


CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": CITY}}]


def tool_row(cities, *, parallel=None):
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": json.dumps({"city": c})}}
             for i, c in enumerate(cities)]
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in calls]
    row = {"messages": [{"role": "user", "content": f"Weather in {' and '.join(cities)}?"},
                        {"role": "assistant", "tool_calls": calls}, *results,
                        {"role": "assistant", "content": "Sunny."}], "tools": TOOLS}
    return row if parallel is None else {**row, "parallel_tool_calls": parallel}


def test_tools_rows_take_a_job_and_parallel_tool_calls_false_allows_one_call_per_message(queued_api, tmp_path):
    client = queued_api
    rows = [tool_row(["Paris"], parallel=False), tool_row(["Rome", "Oslo"]), tool_row(["Lima", "Cairo"], parallel=True)]
    uploaded = upload(client, tmp_path / "tools.jsonl", rows)
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id)
    assert job.status == "validating_files" and client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    for bad, says in ((tool_row(["Rome", "Oslo"], parallel=False), "messages[1].tool_calls: 2 calls"),
                      (tool_row(["Rome"], parallel="no"), "parallel_tool_calls: true or false")):
        with pytest.raises(openai.BadRequestError) as caught:
            upload(client, tmp_path / "bad.jsonl", [rows[0], rows[1], bad])
        assert caught.value.body["message"].startswith("bad.jsonl, line 3: ") and says in caught.value.body["message"]
    dpo = {"input": {"messages": [{"role": "user", "content": "Weather in Rome and Oslo?"}], "tools": TOOLS,
                     "parallel_tool_calls": False},
           "preferred_output": tool_row(["Rome", "Oslo"])["messages"][1:2],
           "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}
    with pytest.raises(openai.BadRequestError, match=r"line 1: preferred_output\[0\].tool_calls: 2 calls"):
        upload(client, tmp_path / "dpo.jsonl", [dpo])
    assert [f.id for f in client.files.list()] == [uploaded.id]


def test_jobs_and_files_page_with_after_and_jobs_filter_by_metadata(queued_api, tmp_path):
    client = queued_api
    files = [upload(client, tmp_path / f"t{i}.jsonl", CHAT) for i in range(3)]
    listed = client.files.list(limit=100).data
    assert {f.id for f in listed} == {f.id for f in files}
    first = client.files.list(limit=2)
    assert first.data == listed[:2] and first.has_more
    rest = client.files.list(limit=2, after=first.data[-1].id)
    assert rest.data == listed[2:] and not rest.has_more
    assert [f.id for f in client.files.list(limit=100, order="asc").data] == [f.id for f in reversed(listed)]
    made = [client.fine_tuning.jobs.create(model="tiny-chat", training_file=files[0].id, metadata={"team": team})
            for team in ("a", "b", "a")]
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    assert sorted(everything) == sorted([j.id for j in made] + ["ftjob-elsewhere"])
    assert everything[-1] == "ftjob-elsewhere"  # newest first
    page = client.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in page.data] == everything[:3] and page.has_more
    page = client.fine_tuning.jobs.list(limit=3, after=everything[2])
    assert [j.id for j in page.data] == everything[3:] and not page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == everything  # the client follows `after` itself
    team_a = client.fine_tuning.jobs.list(metadata={"team": "a"}).data
    assert sorted(j.id for j in team_a) == sorted([made[0].id, made[2].id])
    assert all(j.metadata == {"team": "a"} for j in team_a)
    assert client.fine_tuning.jobs.list(metadata={"team": "c"}).data == []


def test_a_retried_create_returns_its_job_and_a_reused_key_with_another_body_is_a_409(queued_api, tmp_path):
    client = queued_api
    uploaded = upload(client, tmp_path / "t.jsonl", CHAT)
    key = {"Idempotency-Key": "retry-1"}
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id, seed=3, extra_headers=key)
    again = client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id, seed=3, extra_headers=key)
    assert again.id == job.id
    with pytest.raises(openai.ConflictError) as caught:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id, seed=4, extra_headers=key)
    assert caught.value.status_code == 409 and caught.value.body == {
        "message": "Idempotency-Key was used with a different request", "type": "invalid_request_error",
        "param": "Idempotency-Key", "code": "idempotency_key_reused"}
    assert sorted(j.id for j in client.fine_tuning.jobs.list()) == sorted([job.id, "ftjob-elsewhere"])


def test_a_failed_job_says_why_in_openais_error_shape(tmp_path, finetune_home):
    """A job whose launch a stopped API cut short (its run folder, no launch record) fails when the API comes back
    and launches what waits: `error` is {code, message, param}, as OpenAI's job object has it."""
    import httpx

    from sdk.store.runfolder import SPEC, RunFolder

    state = hold_the_local_slot(tmp_path / "store")
    spec = sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl").model_dump(mode="json")
    cut = a_job(id="ftjob-cutshort", created_at=2, spec=spec, launched=False, backend="skypilot")
    state.save_job(cut)
    RunFolder(state.store, cut.id).write_json(SPEC, spec)
    with serving(tmp_path, str(tmp_path / "store")) as (client, _):
        assert client.fine_tuning.jobs.retrieve(cut.id).status == "queued"
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=upload(client, tmp_path / "t.jsonl", CHAT).id)
        deadline = time.time() + 30  # the create launches what waits, in the background
        while client.fine_tuning.jobs.retrieve(cut.id).status != "failed" and time.time() < deadline:
            time.sleep(0.1)
        job = client.fine_tuning.jobs.retrieve(cut.id)
        assert job.status == "failed" and job.fine_tuned_model is None and job.finished_at is not None
        assert job.error.code == "launch_failed" and "create the job again" in job.error.message
        raw = httpx.get(f"{client.base_url}fine_tuning/jobs/{cut.id}",
                        headers={"Authorization": f"Bearer {client.api_key}"}).json()
        assert set(raw["error"]) == {"code", "message", "param"} and raw["error"]["param"] is None


def test_a_reinforcement_row_without_the_field_its_grader_reads_is_refused_naming_it(queued_api, tmp_path):
    client = queued_api
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "eq"}
    method = {"type": "reinforcement", "reinforcement": {"grader": grader}}
    rows = [{"messages": [{"role": "user", "content": f"What is {i}+1?"}], "answer": str(i + 1)} for i in range(3)]
    uploaded = upload(client, tmp_path / "rl.jsonl", [rows[0], {"messages": rows[1]["messages"]}, rows[2]])
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=uploaded.id, method=method)
    assert caught.value.body["param"] == "training_file" and caught.value.body["message"] == (
        f"training_file {uploaded.id}: line 2: no field 'answer', which method.reinforcement.grader reads "
        "({{item.answer}})")
    good = upload(client, tmp_path / "rl-good.jsonl", rows)
    with pytest.raises(openai.BadRequestError, match=f"validation_file {uploaded.id}: line 2: no field 'answer'"):
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=good.id, validation_file=uploaded.id,
                                       method=method)
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=good.id, method=method)
    assert client.fine_tuning.jobs.retrieve(job.id).method.type == "reinforcement"
