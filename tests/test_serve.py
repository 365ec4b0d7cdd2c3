"""Serving against the real engine: vLLM's CPU build (its own environment, created on first use) serves three
SmolLM2-135M adapters trained here and their base on one endpoint: one trained on '### Instruction' prompts, one
on an alpaca file in the model's own chat template (template: auto), one on tool-calling conversations. The
official `openai` client's greedy answers equal `finetune generate` token for token (completions, chat
completions, tool calls), also when base and adapter requests run concurrently (vLLM's CPU LoRA kernels apply
an adapter to base requests in a mixed batch: the product must never return such an answer). Refusals come
before anything starts; stopping leaves no process."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import free_port

import sdk
import sdk.serving
from sdk.core.recipes import load_recipe
from sdk.data.builtin import INSTRUCTION
from sdk.machine.processes import group_members

pytestmark = pytest.mark.slow

PROMPTS = ["Storm floods the coastal city as rivers burst their banks",
           "Striker scores twice in the cup final",
           "Bank raises its interest rate for the third time"]
NEW_TOKENS = 12


def smollm2(root, name: str, *extra: str):
    return load_recipe("smollm2-news", [f"name={name}", "train.max_steps=6", "data.max_samples=48", "eval.before=false",
                                        "eval.after=false", "eval.generations=0", f"output={root / 'runs'}",
                                        "env.OMP_NUM_THREADS=1", *extra])  # two at once on two cores: no oversubscription


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "required": ["city"]}}}]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Tokyo", "Cairo", "Madrid", "Berlin", "Dublin", "Quito", "Hanoi", "Nairobi"]
ASK = {"get_weather": ["What is the weather in {c}?", "How is the weather in {c} today?", "Is it raining in {c}?"],
       "get_time": ["What time is it in {c}?", "What is the local time in {c}?", "Tell me the time in {c}."]}


def tool_rows(n: int, seed: int = 0) -> list[dict]:
    """OpenAI chat rows that call one of two functions for a city, read its result and answer with it."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, city = rng.choice(sorted(ASK)), rng.choice(CITIES)
        result = f"{rng.randint(5, 30)} C, {rng.choice(['sunny', 'rain'])}" if name == "get_weather" else f"{rng.randint(0, 23):02d}:30"
        rows.append({"tools": TOOLS, "messages": [
            {"role": "user", "content": rng.choice(ASK[name]).format(c=city)},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": result},
            {"role": "assistant", "content": f"In {city} it is {result}."}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    """SmolLM2-135M runs: news topics in '### Instruction' (rank 8), the same rows as an alpaca file with template
    auto, so in the model's chat template (rank 16, another learning rate), and tool-calling conversations."""
    from sdk.data.builtin import news_topics

    root = tmp_path_factory.mktemp("serve")
    alpaca = write_jsonl(root / "news-alpaca.jsonl", news_topics("train", 96))
    calls = write_jsonl(root / "tool-calls.jsonl", tool_rows(48))
    with pytest.MonkeyPatch.context() as env:  # restored when the module is done
        env.setenv("FINETUNE_HOME", str(root / "home"))
        runs = [sdk.submit(smollm2(root, "serve-a", "method.r=8", "method.alpha=16", "train.lr=5e-4")),
                sdk.submit(smollm2(root, "serve-b", "method.r=16", "method.alpha=32", "train.lr=1e-3",
                                   f"data.source={alpaca}", "data.eval_source=null", "data.template=auto")),
                sdk.submit(smollm2(root, "serve-tools", f"data.source={calls}", "data.eval_source=null", "data.template=auto",
                                   "data.max_length=512", "data.max_samples=16", "train.batch_size=4", "train.max_steps=8",
                                   "train.lr=1e-3", "eval.labels=null"))]
        for run in runs:
            status = run.wait(timeout=900, progress=False)
            assert status.state == "succeeded", f"{status.error}\n{str(run.logs())[-2000:]}"
        yield runs, root


@pytest.fixture(scope="module")
def server(two_adapters):
    runs, _ = two_adapters
    server = sdk.serve([f"news={runs[0].uri}", runs[1].uri, f"tools={runs[2].uri}"], port=free_port(), timeout=900,
                       idle_stop=600)
    yield server
    pgid = server.pid
    server.stop()
    assert not group_members(pgid), f"processes left after stop: {group_members(pgid)}"


def expected(run, *, base: bool = False) -> list[str]:
    from sdk.runs.tools import generate

    return [o["text"] for o in generate(run.uri, PROMPTS, max_new_tokens=NEW_TOKENS, base=base)["outputs"]]


@pytest.fixture(scope="module")
def answers(two_adapters, server):
    """What `finetune generate` (transformers + peft, float32) answers, per served name."""
    runs, _ = two_adapters
    return {server.base: expected(runs[0], base=True), "news": expected(runs[0]), runs[1].id: expected(runs[1])}


def test_the_endpoint_lists_the_base_and_both_adapters(server, two_adapters):
    runs, _ = two_adapters
    listed = {m.id for m in server.client.models.list().data}
    assert {server.base, "news", runs[1].id, "tools"} <= listed
    assert server.models == [server.base, "news", runs[1].id, "tools"]


def test_the_endpoint_answers_only_with_its_key(server, two_adapters):
    """A request without the key gets 401 (so does a wrong one); the key is in no log, command line, plan or
    store file, only in the owner-only server record."""
    import os
    import stat
    import urllib.error
    import urllib.request

    import openai

    body = json.dumps({"model": "news", "prompt": "Striker scores", "max_tokens": 2}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/v1/models", headers=headers), timeout=10)
        assert refused.value.code == 401
        for route in ("/invocations", "/v1/completions", "/tokenize"):  # vLLM's own check skips /invocations, /tokenize
            request = urllib.request.Request(f"{server.url}{route}", data=body, headers={**headers, "Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401, route
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as health:  # probes stay open
        assert health.status == 200
    key = server.api_key
    assert len(key) >= 32 and server.client.models.list().data  # the handle's own client has it
    assert key not in server.logs()
    for pid in group_members(server.pid):
        assert key.encode() not in open(f"/proc/{pid}/cmdline", "rb").read()
    folder = sdk.serving.servers_dir()
    record = folder / f"{server.id}.json"
    assert stat.S_IMODE(os.stat(record).st_mode) == 0o600 and key in record.read_text()
    _, root = two_adapters
    for path in [*folder.rglob("*"), *(root / "runs").rglob("*")]:
        if path.is_file() and path != record and path.stat().st_size < 50_000_000:
            assert key.encode() not in path.read_bytes(), path


def test_a_served_request_is_seen_by_the_idle_stop_watcher(server):
    """The real engine with an idle stop: its watcher runs in the server's process group (stopped with it) and a
    keyed request refreshes the activity file it reads."""
    import os
    import time

    activity = sdk.serving.servers_dir() / server.id / "last-request"
    watchers = [pid for pid in group_members(server.pid)
                if b"launch.tools.idle_stop" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert len(watchers) == 1, group_members(server.pid)
    before = time.time() - 120  # two minutes ago: well inside the 600-minute limit (an older stamp would stop it)
    os.utime(activity, (before, before))
    assert server.client.models.list().data and activity.stat().st_mtime == before  # listing the models is not use
    assert server.client.completions.create(model="news", prompt="Striker", max_tokens=1, temperature=0).choices
    assert activity.stat().st_mtime > before + 60


def test_each_answer_equals_finetune_generate(server, answers):
    """Each served name prompted the way its run trained (Server.ask: completions for '### Instruction', chat
    completions for the chat template)."""
    for name, wanted in answers.items():
        got = [server.ask(name, p, max_tokens=NEW_TOKENS) for p in PROMPTS]
        assert got == wanted, name
    assert answers["news"] != answers[next(iter(answers))], "the adapter changes the answers (else the test proves nothing)"


def test_an_alpaca_run_answers_chat_completions_as_finetune_generate(server, two_adapters, answers):
    """template: auto wrote the alpaca rows in SmolLM2's chat template, so the first thing a user types, chat
    completions through the official client with the question as the user's turn, is what the adapter trained on."""
    runs, _ = two_adapters
    assert runs[1].summary().template == "chat"
    name = runs[1].id
    for prompt, wanted in zip(PROMPTS, answers[name], strict=True):
        reply = server.client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": f"{INSTRUCTION}\n\n{prompt}"}], max_tokens=NEW_TOKENS,
            temperature=0)
        assert reply.choices[0].message.content == wanted


def test_a_run_trained_on_instruction_prompts_says_so_on_the_chat_endpoint(server):
    """vLLM would wrap the messages in the base's chat template, which the news adapter never saw: the endpoint
    answers 400 with the reason instead of an out-of-distribution answer."""
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        server.client.chat.completions.create(model="news", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=4)
    message = str(refused.value)
    assert "trained on '### Instruction / ### Response' prompts" in message and "/v1/completions" in message
    assert server.client.chat.completions.create(model=server.base, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=2).choices  # the base and chat-trained runs still chat


def test_a_tool_calling_run_returns_tool_calls_as_finetune_generate_parses_them(server, two_adapters, tmp_path):
    """The run trained on tool calls (SmolLM2's template has no tool support: the Hermes format in front of it) is
    served with vLLM's hermes parser and that template: the official client gets a `tool_calls` object, greedy,
    for a city the training never named, equal to `finetune generate --tools`."""
    from sdk.runs.tools import generate

    runs, _ = two_adapters
    assert runs[2].summary().tool_calling.parser == "hermes"
    questions = ["What is the weather in Lyon?", "What time is it in Oslo?"]
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(TOOLS))
    local = generate(runs[2].uri, questions, max_new_tokens=40, tools=str(tools_file))["outputs"]
    for question, out in zip(questions, local, strict=True):
        reply = server.client.chat.completions.create(model="tools", messages=[{"role": "user", "content": question}],
                                                      tools=TOOLS, max_tokens=40, temperature=0)
        message = reply.choices[0].message
        assert message.tool_calls, (question, message, out["text"])
        served = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls]
        assert served == out["tool_calls"], (question, out["text"])
    assert [c["name"] for o in local for c in o["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(local[0]["tool_calls"][0]["arguments"]) == {"city": "Lyon"}


def test_a_judge_behind_the_endpoint_scores_a_run_in_both_orders(server, two_adapters, monkeypatch):
    """eval.judge through the served SmolLM2 (the scores mean nothing at that size; the plumbing is real): a tiny
    run's base and tuned answers go to the endpoint in both orders, with the key from an environment variable that
    the spec only names, and the verdicts land in the summary and metrics.jsonl."""
    runs, root = two_adapters
    monkeypatch.setenv("FT_JUDGE_KEY", server.api_key)
    spec = load_recipe("tiny", ["name=judged", "train.max_steps=4", "eval.num_samples=3", "eval.max_new_tokens=6",
                                f"output={root / 'runs'}"])
    spec = sdk.FineTuneSpec.model_validate({**spec.model_dump(), "eval": {
        **spec.eval.model_dump(), "judge": {"base_url": f"{server.url}/v1", "model": server.base,
                                            "api_key_env": "FT_JUDGE_KEY", "max_samples": 3}}})
    assert "FT_JUDGE_KEY" in spec.secrets and server.api_key not in spec.model_dump_json()
    run = sdk.submit(spec)
    assert run.wait(timeout=300, progress=False).state == "succeeded", str(run.logs())[-2000:]
    judged = run.summary().judge
    assert judged.model == server.base
    assert not [e for e in judged.errors if "not A, B or tie" not in e], judged.errors  # every request was answered
    assert judged.n + judged.error_count >= 3 and judged.wins + judged.losses + judged.ties == judged.n
    if judged.n:
        assert [r["judge_win_rate"] for r in run.metrics() if "judge_win_rate" in r] == [judged.win_rate]
    assert server.api_key not in str(run.logs())


def test_a_score_model_grader_behind_the_endpoint_trains_grpo(server, two_adapters, monkeypatch):
    """An OpenAI score_model grader pointed at the served SmolLM2 (its scores mean little at that size; the plumbing
    is real): a tiny GRPO run sends every sampled answer to the endpoint with the key the spec only names, and the
    grader's mean lands in metrics.jsonl and the held-out reward."""
    runs, root = two_adapters
    monkeypatch.setenv("FT_GRADER_KEY", server.api_key)
    grader = {"type": "score_model", "name": "smol", "model": server.base, "base_url": f"{server.url}/v1",
              "api_key_env": "FT_GRADER_KEY", "range": [0, 1], "sampling_params": {"max_completions_tokens": 8},
              "input": [{"role": "user", "content": "Rate from 0 to 1 how well this names a news topic. Reply with "
                                                    "a number only.\nAnswer: {{sample.output_text}}"}]}
    spec = load_recipe("tiny", ["name=graded", "train.max_steps=2", "train.logging_steps=1", "data.max_samples=16",
                                "eval.num_samples=2", "eval.max_new_tokens=4", f"output={root / 'runs'}"])
    spec = sdk.FineTuneSpec.model_validate({**spec.model_dump(), "objective": {
        "name": "grpo", "rewards": ["exact_match", grader], "num_generations": 4, "max_completion_length": 6}})
    assert "FT_GRADER_KEY" in spec.secrets and server.api_key not in spec.model_dump_json()
    run = sdk.submit(spec)
    assert run.wait(timeout=600, progress=False).state == "succeeded", str(run.logs())[-2000:]
    # SmolLM2-135M seldom answers with a number: each reply is either a score in [0, 1] (logged per step and in the
    # held-out reward) or quoted in the log as holding none; either way it came back from the endpoint.
    logs, rows = str(run.logs()), [r for r in run.metrics() if "reward" in r]
    values = [r["rewards/smol/mean"] for r in rows if "rewards/smol/mean" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(v != v or 0 <= v <= 1 for v in values), values
    assert values or "(smol): score_model grader 'smol': the reply" in logs, logs[-2000:]
    assert "smol" in run.summary().reward.after.means or "holds no score" in logs
    assert server.api_key not in str(run.logs())


def test_base_and_adapter_requests_at_once_never_mix(server, answers):
    jobs = [(name, i) for _ in range(2) for name in answers for i in range(len(PROMPTS))]  # 18 requests, mixed

    def ask(job):
        name, i = job
        return server.ask(name, PROMPTS[i], max_tokens=NEW_TOKENS)

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(ask, jobs))
    wrong = [(name, PROMPTS[i], text) for (name, i), text in zip(jobs, got, strict=True) if text != answers[name][i]]
    assert not wrong, wrong


def test_finetune_generate_cli_json(two_adapters, run_cli, answers):
    runs, root = two_adapters
    result = run_cli("generate", runs[0].uri, "--prompt", PROMPTS[0], "--max-new-tokens", str(NEW_TOKENS), "--json",
                     timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["template"] == "instruction" and out["outputs"][0]["text"] == answers["news"][0]
    # the runs trained on one shared instruction with the headline as input: a prompt is written the same way
    assert out["outputs"][0]["rendered"] == f"### Instruction:\n{INSTRUCTION}\n\n### Input:\n{PROMPTS[0]}\n\n### Response:\n"


# ------------------------------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def tiny_runs(two_adapters):
    """A tiny LoRA run (another base), a tiny DoRA run, and a run cancelled before it had an adapter."""
    _, root = two_adapters
    lora = sdk.submit(load_recipe("tiny", ["name=tiny-lora", "train.max_steps=2", f"output={root / 'runs'}"]))
    dora = sdk.submit(load_recipe("tiny", ["name=tiny-dora", "method.use_dora=true", "train.max_steps=2",
                                           f"output={root / 'runs'}"]))
    stopped = sdk.submit(load_recipe("tiny", ["name=tiny-stopped", "train.max_steps=100000", f"output={root / 'runs'}"]))
    stopped.cancel()
    for run in (lora, dora):
        assert run.wait(timeout=300, progress=False).state == "succeeded"
    return {"lora": lora, "dora": dora, "stopped": stopped}


def refused(run_cli, *args):
    result = run_cli("serve", *args, "--local", timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


def test_refusals_are_one_line_and_start_nothing(run_cli, two_adapters, tiny_runs):
    runs, root = two_adapters
    before = [s.id for s in sdk.serving.list_servers()]  # the module's own server is running
    line = refused(run_cli, runs[0].uri, tiny_runs["lora"].uri)
    assert "different base models" in line and runs[0].id in line and tiny_runs["lora"].id in line
    line = refused(run_cli, tiny_runs["dora"].uri)
    assert "DoRA" in line and "--merge" in line and tiny_runs["dora"].id in line
    line = refused(run_cli, tiny_runs["stopped"].uri)
    assert "no committed adapter" in line and "cancelled" in line
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused(run_cli, runs[0].uri, "--port", str(port))
    assert f"--port {port}: already in use" in line
    assert [s.id for s in sdk.serving.list_servers()] == before


def test_dry_run_prints_the_skypilot_serving_task(tmp_path, run_cli, two_adapters):
    """The SkyPilot task (and the `sky serve` service) pass SkyPilot's own schema."""
    import sky

    from sdk.core.serveplan import ServedAdapter, ServePlan
    from sdk.serving.skypilot import serve_task_config

    runs, _ = two_adapters
    spec = runs[0].spec()
    plan = ServePlan(server_id="serve-x", base_name="base", base_spec=spec.model_dump(mode="json"),
                     adapters=[ServedAdapter(name="news", run_id="r1", run_uri="s3://bucket/runs/r1", rank=8)],
                     max_lora_rank=8, max_loras=2, port=8000)
    gpu = spec.model_copy(update={"resources": spec.resources.model_copy(update={"accelerators": {"L4": 1}})})
    config = serve_task_config(plan, gpu, replicas=2)
    assert config["resources"]["ports"] == [8000] and config["service"]["replicas"] == 2
    assert config["resources"]["accelerators"] == {"L4": 1}
    task = sky.Task.from_yaml_config(json.loads(json.dumps(config)))
    assert task.service is not None
    # Slurm opens no ports: the task asks for none (the endpoint is the node's address), and replicas are refused
    slurm = spec.model_copy(update={"resources": spec.resources.model_copy(update={"infra": "slurm"})})
    assert "ports" not in serve_task_config(plan, slurm)["resources"]
    with pytest.raises(sdk.serving.ServeError, match="--replicas: SkyPilot cannot open ports on slurm"):
        serve_task_config(plan, slurm, replicas=2)
    # the serving node gets the endpoint's key, the served runs' read-only grants and a Hub token: no store keys,
    # no tracker keys, no other training secret
    secret = spec.model_copy(update={"secrets": ["HF_TOKEN", "WANDB_API_KEY", "DB_PASSWORD"]})
    assert serve_task_config(plan, secret)["secrets"] == {"HF_TOKEN": None, "FINETUNE_SERVE_GRANTS": None,
                                                          "FINETUNE_SERVE_API_KEY": None}
    # TLS: a service terminates it at SkyPilot's load balancer; a single server's engine serves HTTPS itself
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n")
    service = serve_task_config(plan, gpu, replicas=2, tls=(str(cert), str(key)))
    assert service["service"]["tls"] == {"certfile": str(cert), "keyfile": str(key)}
    single = serve_task_config(plan, gpu, tls=(str(cert), str(key)))
    assert single["file_mounts"]["~/.finetune/tls/cert.pem"] == str(cert)
    assert json.loads(single["envs"]["FINETUNE_SERVE_PLAN"])["tls"] is True
    from launch.tools.serve import engine_command

    argv = engine_command(ServePlan.model_validate_json(single["envs"]["FINETUNE_SERVE_PLAN"]), "py", "m", {}, cpu=False)
    assert "--ssl-certfile" in argv and "--ssl-keyfile" in argv
    (tmp_path / "key.der").write_bytes(b"\x30\x82\x04")
    with pytest.raises(sdk.serving.ServeError, match="--tls-key .*: not a PEM file"):
        serve_task_config(plan, gpu, tls=(str(cert), str(tmp_path / "key.der")))
    with pytest.raises(sdk.serving.ServeError, match="--tls-cert .*: no such file"):
        serve_task_config(plan, gpu, tls=(str(tmp_path / "missing.pem"), str(key)))
    # idle stop: an hour on a cloud cluster by default, never locally, refused for a service's replicas
    from sdk.serving import idle_stop_minutes

    assert idle_stop_minutes(None, local=False, replicas=None) == 60 and idle_stop_minutes(None, local=True, replicas=None) is None
    assert idle_stop_minutes(0, local=False, replicas=None) is None and idle_stop_minutes(5, local=True, replicas=None) == 5
    assert idle_stop_minutes(None, local=False, replicas=2) is None
    with pytest.raises(sdk.serving.ServeError, match="--idle-stop: a service's replicas"):
        idle_stop_minutes(30, local=False, replicas=2)
    with pytest.raises(sdk.serving.ServeError, match="cloud node reads the adapters from the store"):
        serve_task_config(plan.model_copy(update={"adapters": [ServedAdapter(name="n", run_id="r", run_uri="/tmp/r", rank=8)]}), gpu)


def test_a_serving_node_reads_the_served_runs_through_grants_and_nothing_else(two_adapters, s3_env, tmp_path):
    """Signed GET URLs of the served files only (no checkpoints, no logs, no other run); a process without any
    AWS credential downloads them and fetches the adapter verified against its manifest; an expired grant is refused."""
    import base64
    import gzip
    import os
    import subprocess
    import sys

    from sdk.store import S3Store
    from sdk.store.grants import sign_runs

    env, bucket = s3_env
    runs, _ = two_adapters
    source = runs[0].folder
    store = S3Store(f"s3://{bucket}/runs")
    local_root = Path(source.store.url(source.run_id))
    for path in local_root.rglob("*"):
        if path.is_file():
            store.upload_file(path, f"{source.run_id}/{path.relative_to(local_root)}")
    store.put_bytes(f"{source.run_id}/checkpoints/step-5/optimizer.pt", b"x")
    store.put_bytes("another-run/adapter/adapter_model.safetensors", b"private")
    uri = store.url(source.run_id)
    encoded = sign_runs([uri])
    payload = json.loads(gzip.decompress(base64.b64decode(encoded)))
    files = payload["runs"][uri]["files"]
    assert "adapter/adapter_model.safetensors" in files and "spec.json" in files
    assert not any(rel.startswith(("checkpoints/", "logs/")) for rel in files) and "another-run" not in encoded
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the node: no store credentials at all
    script = ("import sys; from pathlib import Path; from sdk.store.grants import materialize; from sdk.runs import get_run\n"
              "local = materialize(sys.stdin.read(), Path(sys.argv[1]))\n"
              "run = get_run(local[sys.argv[2]]); print(run.fetch_adapter(Path(sys.argv[1]) / 'fetched'))\n"
              "import boto3; boto3.client('s3', endpoint_url=sys.argv[3]).list_objects_v2(Bucket=sys.argv[4])")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "node"), uri, env["AWS_ENDPOINT_URL"], bucket],
                         input=encoded, capture_output=True, text=True, env=bare, timeout=120)
    assert (tmp_path / "node" / "fetched" / "adapter_model.safetensors").read_bytes() == \
        (local_root / "adapter" / "adapter_model.safetensors").read_bytes()
    assert "NoCredentialsError" in out.stderr, out.stderr  # the same node cannot list, let alone write, the bucket
    expired = base64.b64encode(gzip.compress(json.dumps({**payload, "expires": 1.0}).encode())).decode()
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "late"), uri, "x", "y"], input=expired,
                         capture_output=True, text=True, env=bare, timeout=120)
    assert "grants to the served runs have expired" in out.stderr


def test_the_middleware_stamps_requests_and_the_watcher_stops_an_idle_engine(tmp_path, monkeypatch):
    """Keyed requests (not health probes) touch the activity file; launch/tools/idle_stop.py stops a stand-in engine once
    that file is older than the limit, and leaves it running while requests come."""
    import asyncio
    import os
    import subprocess
    import sys
    import time

    from launch.tools.engine_auth import RequireKey

    activity = tmp_path / "last-request"
    activity.touch()
    os.utime(activity, (1, 1))
    monkeypatch.setenv("VLLM_API_KEY", "k")
    monkeypatch.setenv("FINETUNE_ACTIVITY_FILE", str(activity))
    sent = []

    async def app(scope, receive, send):
        sent.append(scope["path"])

    async def call(path, key):
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        await RequireKey(app)({"type": "http", "path": path, "method": "GET", "headers": headers}, None, _noop)

    async def _noop(message):
        return None

    asyncio.run(call("/health", None))
    assert activity.stat().st_mtime == 1  # a probe is not use
    asyncio.run(call("/v1/completions", "wrong"))
    assert activity.stat().st_mtime == 1 and sent == ["/health"]  # refused: not use either
    asyncio.run(call("/v1/models", "k"))  # a listing (`finetune servers` asks it): keeps nothing up
    assert activity.stat().st_mtime == 1
    asyncio.run(call("/v1/completions", "k"))
    assert time.time() - activity.stat().st_mtime < 5 and sent == ["/health", "/v1/models", "/v1/completions"]

    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    watcher = subprocess.Popen([sys.executable, "-m", "launch.tools.idle_stop", "--pid", str(engine.pid), "--activity", str(activity),
                                "--minutes", str(3 / 60), "--poll", "0.5"], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(8):  # requests keep coming for 4 s: more than the 3 s limit in all
            os.utime(activity)
            time.sleep(0.5)
        assert engine.poll() is None
        assert engine.wait(timeout=20) == -15  # then nothing: SIGTERM
        assert watcher.wait(timeout=10) == 0 and "no request for" in watcher.stdout.read()
    finally:
        for proc in (engine, watcher):
            if proc.poll() is None:
                proc.kill()
