"""Objectives as modules (sdk.objectives): their spec sections, the one metric-naming rule, GRPO's prompt rows and
shipped reward files, and every objective training the tiny model through the node (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_node

import sdk
from sdk.core.errors import SpecError
from sdk.core.metric_names import logged_row
from sdk.core.recipes import load_recipe
from sdk.core.spec import FineTuneSpec
from sdk.store import LocalStore
from sdk.store.runfolder import RunFolder

ROOT = Path(__file__).resolve().parent.parent
REWARDS = ROOT / "tests" / "data" / "grpo" / "rewards.py"
TOPIC_GRADER = {"type": "string_check", "name": "topic", "input": "{{sample.output_text}}",
                "reference": "{{item.output}}", "operation": "ilike"}
MULTI_GRADER = {"type": "multi", "name": "blend", "calculate_output": "0.5 * exact + 0.5 * fuzzy",
                "graders": {"exact": {**TOPIC_GRADER, "name": "exact", "operation": "eq"},
                            "fuzzy": {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
                                      "reference": "{{item.reference}}", "evaluation_metric": "fuzzy_match"}}}


def tiny(objective: dict | str, *overrides: str, **sections) -> FineTuneSpec:
    data = load_recipe("tiny", ["train.max_steps=3", "train.logging_steps=1", "data.max_samples=32",
                                "eval.num_samples=4", "eval.max_new_tokens=4", *overrides]).model_dump(mode="json")
    data["objective"] = objective
    for key, value in sections.items():
        data[key] = value if key == "method" else {**data.get(key, {}), **value}
    return FineTuneSpec.model_validate(data)


def grpo(*rewards, **settings) -> dict:
    return {"name": "grpo", "rewards": list(rewards), "num_generations": 4, "max_completion_length": 6, **settings}


# ------------------------------------------------------------------------------------------ the spec


def test_objective_takes_a_name_or_its_section():
    spec = sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl", objective="dpo")
    assert (spec.objective.name, spec.objective.beta, spec.objective.loss_type) == ("dpo", 0.1, "sigmoid")
    spec = sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl", objective={"name": "dpo", "loss_type": "ipo"})
    assert spec.objective.loss_type == "ipo"
    assert sdk.FineTuneSpec(model="m", data="d.jsonl").model_dump()["objective"] == {"name": "sft"}


def test_a_spec_json_from_before_sections_still_reads():
    """Runs submitted earlier stored "objective": "dpo" and β in train.dpo_beta."""
    old = {"model": "m", "data": "d.jsonl", "objective": "dpo", "train": {"dpo_beta": 0.3}}
    assert FineTuneSpec.from_json(json.dumps(old)).objective.beta == 0.3
    assert FineTuneSpec.from_json(json.dumps({**old, "objective": "sft"})).objective.name == "sft"


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"objective": {"name": "dpo", "rank": 3}}, "objective.rank", "unknown key"),
    ({"objective": {"name": "dpo", "loss_type": "ipoo"}}, "objective.loss_type", "ipo"),
    ({"objective": "kto", "train": {"batch_size": 1}}, "train.batch_size", "apo_zero_unpaired"),
    ({"objective": "dpo", "method": "prompt_tuning"}, "method", "prompt_tuning learns soft prompts"),
    ({"objective": grpo("exact_match"), "train": {"batch_size": 6}}, "objective.num_generations", "do not divide"),
    ({"objective": grpo("exact_match", rollouts="vllm_server"), "train": {"batch_size": 8}, "resources": {"nodes": 2}},
     "objective.rollouts", "vllm_server runs on one node"),
    ({"objective": {"name": "grpo"}}, "objective.rewards", "required"),
    ({"objective": grpo("exact_match", epsilon=0.3, epsilon_high=0.2), "train": {"batch_size": 8}}, "objective",
     "epsilon_high"),
])
def test_an_objective_refuses_what_it_cannot_train_in_one_line(data, field, words):
    with pytest.raises(SpecError) as info:
        sdk.FineTuneSpec(model="tiny:llama", data="d.jsonl", **data)
    assert [e.field for e in info.value.errors] == [field], str(info.value)
    assert words in str(info.value) and "Traceback" not in str(info.value)


def test_kto_trains_at_batch_size_one_where_trl_allows_it():
    spec = sdk.FineTuneSpec(model="m", data="d.jsonl", objective={"name": "kto", "loss_type": "apo_zero_unpaired"},
                            train={"batch_size": 1, "grad_accum": 8})
    assert spec.train.batch_size == 1


# ------------------------------------------------------------------------------------ metric names


def test_every_logged_number_keeps_its_name():
    logs = {"loss": 1.5, "learning_rate": 1e-4, "rewards/accuracies": 0.75, "completions/mean_length": 12,
            "rewards/topic/mean": 0.5, "kl": 0.01, "train_runtime": 3.0, "note": "text", "flag": True}
    assert logged_row(logs) == {"loss": 1.5, "lr": 1e-4, "rewards/accuracies": 0.75, "completions/mean_length": 12.0,
                                "rewards/topic/mean": 0.5, "kl": 0.01}


def test_an_older_run_reads_under_todays_names(tmp_path):
    folder = RunFolder(LocalStore(tmp_path), "old")
    folder.store.put_bytes(folder.key("metrics.jsonl"), b'{"step": 1, "rewards_accuracies": 0.5, "logps_chosen": -3}\n'
                                                       b'{"step": 2, "eval_rewards_margins": 0.2, "eval_loss": 1.0}\n')
    assert folder.metrics() == [{"step": 1, "rewards/accuracies": 0.5, "logps/chosen": -3},
                                {"step": 2, "eval_rewards/margins": 0.2, "eval_loss": 1.0}]


def test_sweeps_know_each_objectives_metrics_and_goals():
    from sdk.sweeps.metrics import check_metric, default_metric

    assert (check_metric("rewards/accuracies").goal, check_metric("rewards/accuracies").source) == ("max", "logged")
    assert check_metric("reward").goal == "max" and check_metric("heldout_reward").source == "summary"
    with pytest.raises(SpecError, match="better when higher"):
        check_metric("reward:min")
    spec = sdk.FineTuneSpec(model="m", data="d.jsonl", objective=grpo("exact_match"), train={"batch_size": 8})
    assert default_metric(spec) == "heldout_reward"


# ------------------------------------------------------------------------------------ grpo's rows


def _rows(spec, rows):
    from sdk.data.rendering import Renderer
    from sdk.data.samples import load_samples

    path = Path(spec.data.source)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    check = load_samples(spec, str(path), "data.source")
    assert not check.bad, check.bad
    return [r for s in check.samples for r in Renderer(spec, chat_template=True).trainer_rows(s)], check


def test_grpo_rows_carry_the_prompt_the_reference_and_every_other_column(tmp_path):
    spec = sdk.FineTuneSpec(model="m", data=str(tmp_path / "d.jsonl"), objective=grpo("exact_match"),
                            train={"batch_size": 8})
    rows, check = _rows(spec, [
        {"instruction": "Topic?", "input": "Goal in the final minute.", "output": "Sports", "id": 7},
        {"messages": [{"role": "user", "content": "2+2?"}], "reference_answer": "4", "meta": {"src": "quiz"}},
        {"prompt": "Say hi", "answer": "hi"},
        {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
    ][:1])
    assert rows == [{"instruction": "Topic?", "input": "Goal in the final minute.", "output": "Sports", "id": 7,
                     "reference": "Sports",
                     "prompt": [{"role": "user", "content": "Topic?\n\nGoal in the final minute."}]}]
    rows, check = _rows(spec, [
        {"messages": [{"role": "user", "content": "2+2?"}], "reference_answer": "4", "meta": {"src": "quiz"}},
        {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
    ])
    assert check.format == "messages"
    assert rows[0] == {"reference_answer": "4", "meta": {"src": "quiz"}, "reference": None,
                       "prompt": [{"role": "user", "content": "2+2?"}]}
    assert rows[1]["reference"] == "Paris" and rows[1]["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    from sdk.data.prompts import encode_json_columns, json_columns

    assert json_columns(rows) == {"meta"}  # the node writes every value of such a column as JSON text
    assert [r.get("meta") for r in encode_json_columns(rows, {"meta"})] == ['{"src": "quiz"}', None]
    from sdk.data.rows import DataError

    with pytest.raises(DataError, match=r"objective.rewards\[0\].reference: no row of .* holds an answer"):
        _rows(spec, [{"prompt": "Say hi", "answer": "hi"}])  # exact_match against `reference`: nothing to compare
    spec = spec.model_copy(update={"objective": spec.objective.model_copy(update={"rewards": [
        type(spec.objective.rewards[0])(type="exact_match", reference="answer")]})})
    rows, check = _rows(spec, [{"prompt": "Say hi", "answer": "hi"}])  # a prompt alone, as TRL's GRPO datasets hold
    assert check.format == "prompt_completion" and rows == [{"answer": "hi", "reference": None, "prompt": "Say hi"}]


def test_a_reward_file_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.py").write_text("def score(prompts, completions, **kw):\n    return [1.0 for c in completions\n")
    store = tmp_path / "runs"
    for function, words in (("missing.py:score", "missing.py: no such file"), ("bad.py:score", "bad.py:2:"),
                            (f"{REWARDS}:nope", "defines no function 'nope'")):
        spec = tiny(grpo({"type": "function", "function": function}), "train.batch_size=8", f"output={store}")
        with pytest.raises(SpecError, match=words):
            sdk.submit(spec, backend="local")
        assert not store.exists() or not list(store.iterdir())


# ----------------------------------------------------------------------------- training (slow)


def _run(spec: FineTuneSpec, tmp_path: Path):
    from launch.node import run
    from launch.sink import RunSink

    folder = RunFolder(LocalStore(tmp_path / "store"), "run")
    folder.write_json("spec.json", spec.model_dump(mode="json"))
    sink = RunSink(folder, interval=3600)
    sink.start()
    outcome = run(spec, folder, sink, workdir=tmp_path / "work")
    sink.close("succeeded")
    return folder, sink, outcome


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "said"), [
    ({"name": "orpo", "beta": 0.2}, None), ({"name": "simpo"}, None),
    ({"name": "dpo", "loss_type": "ipo", "beta": 0.2}, "dpo: loss ['ipo'], beta 0.2"),
], ids=["orpo", "simpo", "dpo-ipo"])
def test_preference_objectives_train_the_tiny_model(tmp_path, capsys, objective, said):
    spec = load_recipe("tiny-dpo", ["train.max_steps=4", "train.logging_steps=1", "data.max_samples=32"])
    spec = FineTuneSpec.model_validate({**spec.model_dump(mode="json"), "objective": objective})
    folder, sink, _ = _run(spec, tmp_path)
    rows = [r for r in sink.rows if "loss" in r]
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)
    assert "rewards/accuracies" in rows[-1] or "rewards/margins" in rows[-1], rows[-1]
    assert folder.adapter_manifest() is not None and folder.read_json("summary.json")["objective"] == objective["name"]
    if said:  # read back from trl's own config object
        assert said in capsys.readouterr().out


@pytest.mark.slow
def test_kto_takes_the_users_class_weights(tmp_path, capsys):
    data = ROOT / "tests" / "data" / "formats" / "feedback.jsonl"
    spec = tiny({"name": "kto", "desirable_weight": 1.2, "undesirable_weight": 0.8}, f"data.source={data}",
                "data.eval_source=null", "eval.labels=null", "data.template=instruction", "train.batch_size=2")
    _run(spec, tmp_path)
    assert "weighted 1.2 and 0.8 (set in the spec)" in capsys.readouterr().out


@pytest.mark.slow
def test_grpo_trains_with_a_python_reward_a_string_check_and_a_multi_grader(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rewards = [{"type": "function", "function": "tests/data/grpo/rewards.py:names_the_topic", "weight": 1.0},
               {**TOPIC_GRADER, "weight": 0.5}, {**MULTI_GRADER, "weight": 0.5}]
    spec = tiny(grpo(*rewards), "train.batch_size=8", f"output={tmp_path / 'runs'}")
    run = sdk.submit(spec, backend="local")
    assert run.wait(timeout=600).state == "succeeded", run.logs()[-3000:]
    rows = run.metrics()
    logged = set().union(*rows)
    for name in ("names_the_topic", "topic", "blend"):
        assert f"rewards/{name}/mean" in logged and f"rewards/{name}/std" in logged, sorted(logged)
    assert {"reward", "reward_std", "completions/mean_length"} <= logged
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]
    summary = run.summary()
    assert summary.objective == "grpo" and summary.reward.before.n == 4 and summary.reward.after.n == 4
    assert set(summary.reward.after.means) == {"names_the_topic", "topic", "blend"}
    shipped = run.folder.read_json("files.json")["tests/data/grpo/rewards.py:names_the_topic"]
    assert run.folder.store.get_bytes(run.folder.key(shipped["key"])) == REWARDS.read_bytes()


@pytest.mark.slow
def test_a_reward_that_raises_fails_the_run_naming_its_line(tmp_path):
    spec = tiny(grpo({"type": "function", "function": f"{REWARDS}:broken"}), "train.batch_size=8",
                f"output={tmp_path / 'runs'}")
    run = sdk.submit(spec, backend="local")
    assert run.wait(timeout=600).state == "failed"
    line = next(i for i, text in enumerate(REWARDS.read_text().splitlines(), 1) if "/ 0" in text)
    error = run.folder.status()["error"]
    assert f"rewards.py:{line}" in error and "ZeroDivisionError" in error and "Traceback" not in error, error
    assert run.folder.adapter_manifest() is None


@pytest.mark.slow
def test_a_plugin_objective_trains_through_the_whole_path(tmp_path):
    """Registered in tests/objective_probe.py alone: the CLI validates its section, the node trains it, its metric
    reaches metrics.jsonl under its own name and ranks a sweep."""
    env = {**os.environ, "FINETUNE_OBJECTIVES": "objective_probe", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    recipe = tmp_path / "probe.yaml"
    recipe.write_text((ROOT / "recipes" / "tiny.yaml").read_text() + "objective: {name: sft_probe, bonus: 2.0}\n")
    launch = subprocess.run([sys.executable, "-m", "sdk.cli", "launch", str(recipe), "--local", "--set",
                             "train.max_steps=3", "--set", "train.logging_steps=1", "--set", f"output={tmp_path}/runs"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=480)
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-2000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    run = sdk.get_run(str(run_dir))
    rows = [r for r in run.metrics() if "loss" in r]
    assert [round(r["probe/score"] - r["loss"], 6) for r in rows] == [2.0, 2.0, 2.0]
    assert run.summary().objective == "sft_probe"
    bad = subprocess.run([sys.executable, "-m", "sdk.cli", "validate", str(recipe), "--no-data", "--set",
                          "objective.bonus=-1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "objective.bonus" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_grpo_under_ddp_resumes_after_a_kill(tmp_path):
    spec = tiny(grpo("exact_match", {"type": "function", "function": f"{REWARDS}:names_the_topic"}),
                "train.batch_size=4", "distributed.nproc_per_node=2", "train.max_steps=4", "train.save_steps=2",
                f"output={tmp_path}")
    killed, folder = run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:2"})
    assert killed.returncode != 0 and folder.committed_checkpoints() == [2], killed.stdout[-2000:]
    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from committed checkpoint 2" in resumed.stdout
    summary = folder.read_json("summary.json")
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4 and summary["world_size"] == 2
    assert [r["step"] for r in folder.metrics() if "reward" in r] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_grpo_trains_lora_under_zero_on_two_processes(tmp_path, stage):
    spec = tiny(grpo("exact_match"), "train.batch_size=4", "distributed.nproc_per_node=2", "train.max_steps=2",
                "distributed.strategy=deepspeed", f"distributed.zero_stage={stage}", f"output={tmp_path}")
    result, folder = run_node(spec, tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = folder.read_json("summary.json")
    assert summary["world_size"] == 2 and summary["strategy"] == "deepspeed" and summary["steps"] == 2
    assert [r["step"] for r in folder.metrics() if "reward" in r] == [1, 2]
    assert folder.adapter_manifest() is not None


def test_an_objective_named_alone_takes_overrides_of_its_settings():
    spec = load_recipe("tiny", ["objective=dpo", "objective.beta=0.3", "data.source=builtin:news-preferences",
                                "data.eval_source=null", "eval.labels=null"])
    assert (spec.objective.name, spec.objective.beta) == ("dpo", 0.3)


def test_openai_reinforcement_rows_read_as_openai_writes_them(tmp_path):
    """A developer turn is a system turn; rows that offer tools are refused under grpo with the reason."""
    spec = sdk.FineTuneSpec(model="m", data=str(tmp_path / "d.jsonl"), train={"batch_size": 8},
                            objective=grpo({"type": "exact_match", "reference": "answer"}))
    rows, _ = _rows(spec, [{"messages": [{"role": "developer", "content": "Be brief."},
                                         {"role": "user", "content": "2+2?"}], "answer": "4"}])
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    from sdk.data.samples import load_samples

    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Weather?"}], "answer": "x",
                                "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}]}) + "\n")
    check = load_samples(spec, str(path), "data.source")
    assert "rows offering tools cannot train under grpo" in check.bad[0][1]


def test_async_rewards_and_imported_functions_work_as_in_trl(tmp_path):
    from sdk.evaluation.rewards import build_rewards
    from sdk.runs.shipping import check_shipped

    (tmp_path / "scoring.py").write_text("def score(prompts, completions, **kw):\n"
                                         "    return [1.0] * len(completions)\n")
    (tmp_path / "rewards.py").write_text("from scoring import score\n\n\nasync def slow(prompts, completions, **kw):\n"
                                         "    return [float(len(c)) for c in completions]\n")
    settings = grpo({"type": "function", "function": f"{tmp_path}/rewards.py:slow"},
                    {"type": "function", "function": f"{tmp_path}/rewards.py:score"})
    spec = sdk.FineTuneSpec(model="m", data="d.jsonl", train={"batch_size": 8}, objective=settings)
    assert len(check_shipped(spec)) == 2
    sys.path.insert(0, str(tmp_path))
    try:
        slow, score = build_rewards(spec.objective.rewards)
        assert slow(["p", "p"], ["ab", "abc"]) == [2.0, 3.0] and score(["p"], ["x"]) == [1.0]
    finally:
        sys.path.remove(str(tmp_path))


def test_an_endpoint_url_never_carries_a_key():
    with pytest.raises(SpecError, match="holds credentials"):
        sdk.FineTuneSpec(model="m", data="d.jsonl", train={"batch_size": 8}, objective=grpo(
            {"type": "score_model", "name": "j", "model": "x", "base_url": "https://me:sk-1@api.example.com/v1",
             "input": [{"role": "user", "content": "{{sample.output_text}}"}]}))


@pytest.mark.slow
@pytest.mark.parametrize("method", [{"name": "qlora", "r": 8, "compute_dtype": "float32"}, {"name": "full"}],
                         ids=["qlora", "full"])
def test_grpo_trains_qlora_and_full_fine_tuning(tmp_path, method):
    spec = tiny(grpo("exact_match", {"type": "token_f1", "weight": 0.5}), "train.batch_size=8", "train.max_steps=2",
                method=method)
    folder, sink, _ = _run(spec, tmp_path)
    rows = [r for r in sink.rows if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2] and all("rewards/exact_match/mean" in r for r in rows)
    summary = folder.read_json("summary.json")
    assert summary["objective"] == "grpo" and summary["method"] == method["name"]
    assert summary["reward"]["after"]["n"] == 4
    assert folder.adapter_manifest() is not None
