"""Several datasets in one run (data.sources): weights, hold-out per source, per-source counts in validate and in the
summary, each source's hash in the run folder, refusals that name the sources; and per-epoch cadence
(train.evals_per_epoch / saves_per_epoch) resolved on the node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec
from sdk.data.rows import DataError
from sdk.data.samples import mix_counts


def _spec(data, **train) -> FineTuneSpec:
    return FineTuneSpec.model_validate({"model": "tiny:llama", "data": data, "train": {"max_steps": 1, **train}})


def _alpaca(path: Path, n: int) -> str:
    path.write_text("".join(json.dumps({"instruction": f"Add {i} and 3.", "output": str(i + 3)}) + "\n"
                            for i in range(n)))
    return str(path)


def _sharegpt(path: Path, n: int) -> str:
    path.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"Say {i}"},
                                                          {"from": "gpt", "value": str(i)}]}) + "\n" for i in range(n)))
    return str(path)


# ------------------------------------------------------------------------------------------- the mix


def test_unweighted_sources_are_concatenated_whole():
    assert mix_counts([900, 45], None) == [900, 45]


def test_weights_give_exact_shares_until_the_first_source_runs_out():
    assert mix_counts([900, 450], [0.8, 0.2]) == [900, 225]
    assert mix_counts([100, 900], [0.8, 0.2]) == [100, 25]  # the heavy source binds: nothing repeats
    assert mix_counts([100, 900], [4, 1]) == [100, 25]  # weights are normalized


def test_all_exhausted_repeats_the_smaller_sources():
    counts = mix_counts([100, 900], [0.5, 0.5], "all_exhausted")
    assert counts == [900, 900]


def test_a_source_with_no_rows_left_stops_a_first_exhausted_mix():
    assert mix_counts([0, 10], [0.5, 0.5]) == [0, 0]


# ------------------------------------------------------------------------------------------ the spec


def test_data_as_a_list_is_several_sources_each_with_the_sections_defaults():
    spec = _spec({"template": "chat", "max_length": 64,
                  "sources": ["a.jsonl", {"source": "b.jsonl", "format": "sharegpt", "template": "plain"}]})
    parts = spec.data.parts()
    assert [p.field for p in parts] == ["data.sources[0]", "data.sources[1]"]
    assert (parts[0].data.template, parts[1].data.template) == ("chat", "plain")
    assert parts[1].data.format == "sharegpt" and parts[1].data.max_length == 64
    assert _spec(["a.jsonl", "b.jsonl"]).data.parts()[1].data.source == "b.jsonl"


@pytest.mark.parametrize("data, words", [
    ({"source": "a.jsonl", "sources": ["b.jsonl"]}, ["data.source", "data.sources", "not both"]),
    ([{"source": "a.jsonl", "weight": 0.8}, "b.jsonl"], ["data.sources[1] has no weight"]),
    ([{"source": "a.jsonl", "format": "alpaca"}, {"source": "b.jsonl", "format": "preference"}],
     ["data.sources[0] holds examples", "objective sft", "data.sources[1] holds preference pairs", "objective dpo"]),
    ({"sources": [{"source": "a.jsonl", "eval_split": 0.2}], "eval_source": "e.jsonl"}, ["eval_source", "eval_split"]),
    ([{"source": "a.jsonl", "weight": 0}], ["weight", "greater than 0"]),
])
def test_bad_sources_name_the_field(data, words):
    with pytest.raises(SpecError) as info:
        _spec(data)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("train, data, words", [
    ({"eval_steps": 10, "evals_per_epoch": 2}, "a.jsonl", ["eval_steps or evals_per_epoch"]),
    ({"save_steps": 10, "saves_per_epoch": 2}, "a.jsonl", ["save_steps or saves_per_epoch"]),
    ({"evals_per_epoch": 2}, {"source": "a.jsonl", "eval_split": 0}, ["train.evals_per_epoch", "nothing is held out"]),
])
def test_per_epoch_settings_are_checked(train, data, words):
    with pytest.raises(SpecError) as info:
        _spec(data, **train)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_set_reaches_into_a_source_by_index_and_data_source_replaces_the_list(tmp_path):
    from sdk.core.recipes import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny:llama\ndata:\n  sources:\n    - {source: a.jsonl, weight: 0.8}\n"
                      "    - {source: b.jsonl, weight: 0.2}\ntrain: {max_steps: 1}\n")
    spec = load_recipe(recipe, ["data.sources.1.source=c.jsonl", "data.sources.0.weight=0.5"])
    assert [(s.source, s.weight) for s in spec.data.sources] == [("a.jsonl", 0.5), ("c.jsonl", 0.2)]
    assert load_recipe(recipe, ["data.source=d.jsonl"]).data.source == "d.jsonl"
    with pytest.raises(SpecError, match=r"data.sources is a list of 2; '2' is not an index"):
        load_recipe(recipe, ["data.sources.2.weight=1"])


# ------------------------------------------------------------------------------------------ the check


def test_validate_reports_what_each_source_gives(tmp_path, cli_here):
    a, b = _alpaca(tmp_path / "a.jsonl", 1000), _sharegpt(tmp_path / "b.jsonl", 500)
    result = cli_here("validate", "tiny", "--set=data.eval_source=null", "--set=data.max_samples=null",
                      f"--set=data.sources=[{{source: {a}, weight: 0.8}}, {{source: {b}, weight: 0.2}}]")
    assert result.returncode == 0, result.stderr
    assert f"data.sources[0]: {a}: 1000 rows, format alpaca" in result.stdout
    assert "100 held out, 900 train (weight 0.8)" in result.stdout
    assert f"data.sources[1]: {b}: 500 rows, format sharegpt" in result.stdout
    assert "50 held out, 225 train (weight 0.2)" in result.stdout


def test_sources_of_different_kinds_are_refused_naming_each(tmp_path):
    from sdk.data.check import check_data

    a = _alpaca(tmp_path / "a.jsonl", 5)
    prefs = tmp_path / "p.jsonl"
    prefs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError) as info:
        check_data(_spec([a, str(prefs)]))
    message = str(info.value)
    assert "data.sources[0] holds examples (alpaca: objective sft" in message
    assert "data.sources[1] holds preference pairs (preference: objective dpo" in message


def test_a_corpus_and_prompt_rows_in_one_run_are_refused(tmp_path):
    from sdk.data.check import check_data

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "a document"}) + "\n")
    with pytest.raises(DataError, match=r"different shapes .*data.sources\[0\] as chat turns.*data.sources\[1\] as "
                                        r"documents"):
        check_data(_spec([_alpaca(tmp_path / "a.jsonl", 5), str(corpus)]))


def test_a_bad_row_is_named_with_its_source(tmp_path):
    from sdk.data.check import check_data

    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n{oops\n")
    report = check_data(_spec([_alpaca(tmp_path / "a.jsonl", 5), str(bad)]))
    assert not report.ok and report.error().startswith(f"data.sources[1]: 1 bad row(s) of 2 in {bad}")
    assert f"{bad}:2" in report.error()


def test_validate_counts_the_section_cap_and_names_a_source_that_gives_nothing(tmp_path):
    from sdk.data.check import check_data

    a, b = _alpaca(tmp_path / "a.jsonl", 1000), _sharegpt(tmp_path / "b.jsonl", 500)
    capped = check_data(_spec({"sources": [{"source": a, "weight": 0.8}, {"source": b, "weight": 0.2}],
                               "max_samples": 100}))
    assert [c.train_rows for c in capped.checks] == [80, 20]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    with pytest.raises(DataError, match=r"data.sources\[1\]: .*one.jsonl gives no training rows: 1 of its 1 row"):
        check_data(_spec([{"source": a, "weight": 0.5}, {"source": str(one), "weight": 0.5, "eval_split": 0.9}]))


def test_a_hub_source_leaves_the_counts_to_the_node(tmp_path):
    from sdk.data.check import check_data

    report = check_data(_spec([_alpaca(tmp_path / "a.jsonl", 10), "tatsu-lab/alpaca"]))
    assert report.checks[0].train_rows is None and "held out" not in report.lines()[0]
    assert any("tatsu-lab/alpaca is a Hub dataset: its rows are checked on the node" in n for n in report.notes)


def test_shapes_that_differ_only_with_some_models_are_said_before_launch(tmp_path):
    from sdk.data.check import check_data

    pc = tmp_path / "pc.jsonl"
    pc.write_text(json.dumps({"prompt": "2+2=", "completion": "4"}) + "\n")
    spec = FineTuneSpec.model_validate({"model": "org/unseen", "data": [str(pc), _alpaca(tmp_path / "a.jsonl", 5)]})
    report = check_data(spec)  # the model's tokenizer is not here: alpaca rows are chat turns only with a chat template
    assert any("if it has a chat template the node refuses them" in n for n in report.notes), report.notes


def test_the_short_form_takes_set_like_the_long_one(tmp_path):
    from sdk.core.recipes import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny:llama\ndata: [a.jsonl, b.jsonl]\ntrain: {max_steps: 1}\n")
    spec = load_recipe(recipe, ["data.sources.1.weight=0.5", "data.sources.0.weight=0.5", "data.max_length=64"])
    assert [s.weight for s in spec.data.sources] == [0.5, 0.5] and spec.data.max_length == 64


# ------------------------------------------------------------------------------------------ cadence


def test_steps_per_epoch_count_as_the_trainer_does():
    from launch.cadence import per_epoch_steps, steps_per_epoch

    assert steps_per_epoch(1000, batch_size=8, grad_accum=1, world_size=1) == 125
    assert steps_per_epoch(1001, batch_size=8, grad_accum=1, world_size=1) == 126  # the last batch is partial
    assert steps_per_epoch(1000, batch_size=8, grad_accum=4, world_size=2) == 16  # 500 a rank, 63 batches, 16 steps
    assert per_epoch_steps(125, 4) == 31 and per_epoch_steps(3, 4) == 1 and per_epoch_steps(125, None) is None


def test_a_run_shorter_than_an_epoch_is_the_epoch_the_cadence_divides():
    from launch.cadence import resolve_cadence

    spec = _spec("a.jsonl", max_steps=10, evals_per_epoch=4, saves_per_epoch=1, batch_size=2, grad_accum=4)
    assert resolve_cadence(spec, 1800, world_size=1) == {"steps_per_epoch": 225, "steps_per_run": 10,
                                                         "eval_steps": 2, "save_steps": 10}
    longer = _spec("a.jsonl", max_steps=500, evals_per_epoch=4, batch_size=8)
    assert resolve_cadence(longer, 1000, world_size=1) == {"steps_per_epoch": 125, "eval_steps": 31}
    assert resolve_cadence(_spec("a.jsonl"), 1000, world_size=1) is None


# ------------------------------------------------------------------------------------------ a run


@pytest.mark.slow
def test_two_weighted_sources_train_in_proportion_and_evaluate_four_times_an_epoch(tmp_path):
    """alpaca and sharegpt rows mixed 0.8/0.2 over 1,000 training rows (seeded), evals_per_epoch 4: the summary
    counts each source's rows, data.json keeps their hashes, metrics.jsonl has the evaluations at the right steps."""
    import sdk
    from sdk.core.recipes import load_recipe

    a, b = _alpaca(tmp_path / "a.jsonl", 1000), _sharegpt(tmp_path / "b.jsonl", 500)
    spec = load_recipe("tiny", [
        f"data.sources=[{{source: {a}, weight: 0.8}}, {{source: {b}, format: sharegpt, weight: 0.2}}]",
        "data.eval_source=null", "data.max_samples=1000", "data.template=auto", "data.max_length=64",
        "train.epochs=1", "train.evals_per_epoch=4", "eval.before=false", "eval.labels=null", "eval.num_samples=8",
        "eval.generations=0", "eval.forgetting=false", f"output={tmp_path / 'runs'}"])
    run = sdk.submit(spec, backend="local")
    status = run.wait(progress=False, timeout=600)
    assert status.state == "succeeded", run.logs()
    summary = json.loads((Path(run.uri) / "summary.json").read_text())
    sources = summary["data_sources"]
    seen = [s["train_rows"] for s in sources]
    assert sum(seen) == 1000 == summary["train_rows"]
    assert seen == [800, 200]  # 900 + 225 mixed 0.8/0.2, then capped at 1,000 keeping the shares
    assert [s["format"] for s in sources] == ["alpaca", "sharegpt"]
    assert [(s["rows"], s["eval_rows"]) for s in sources] == [(1000, 100), (500, 50)]
    stored = json.loads((Path(run.uri) / "data.json").read_text())["sources"]
    assert [len(s["sha256"]) for s in stored] == [64, 64] and stored[0]["sha256"] != stored[1]["sha256"]
    assert summary["cadence"] == {"steps_per_epoch": 125, "steps_per_run": None, "eval_steps": 31, "save_steps": None}
    rows = [json.loads(line) for line in (Path(run.uri) / "metrics.jsonl").read_text().splitlines()]
    evaluated = sorted({r["step"] for r in rows if "eval_loss" in r})
    assert evaluated == [31, 62, 93, 124, 125], evaluated  # four an epoch, then the final evaluation
