"""The FineTuneSpec contract: shorthands, round trips, and a table of malformed specs and recipes."""

from __future__ import annotations

import json
import textwrap

import pytest

import sdk
from sdk.core.errors import SpecError
from sdk.core.recipes import RECIPES_DIR, load_recipe
from sdk.core.spec import FineTuneSpec

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))

BASE = """\
model: tiny:llama
method:
  name: lora
  r: 8
data:
  source: builtin:news-topics
train:
  max_steps: 5
  lr: 1.0e-3
"""


def test_readme_shorthand_is_valid_with_seed_defaults():
    spec = sdk.FineTuneSpec(model="Qwen/Qwen2.5-0.5B", method="qlora", data="train.jsonl")
    assert spec.method.name == "qlora"
    assert (spec.method.r, spec.method.alpha, spec.method.dropout) == (16, 32, 0.05)
    assert spec.method.target_modules == "all-linear"
    assert spec.method.quant_type == "nf4" and spec.method.double_quant is True
    assert spec.model.id == "Qwen/Qwen2.5-0.5B" and spec.data.source == "train.jsonl"
    assert spec.output == "~/.finetune/runs" and spec.resources.nodes == 1


def test_shorthands_expand():
    spec = FineTuneSpec(model="m", data="d.jsonl", distributed="deepspeed", resources={"accelerators": "L4:1,A10G"})
    assert spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage == 2
    assert spec.resources.accelerators == {"L4": 1, "A10G": 1}
    assert FineTuneSpec(model="m", data="d", method="dora").method.use_dora is True


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_round_trip_is_lossless(path):
    spec = load_recipe(path)
    as_json = spec.to_json()
    again = FineTuneSpec.from_json(as_json)
    assert again == spec
    assert json.loads(again.to_json()) == json.loads(as_json)
    # through a dict too, the form backends and the node receive
    assert FineTuneSpec.model_validate(json.loads(as_json)) == spec


def test_shipped_recipes_cover_the_card():
    names = {p.stem for p in SHIPPED}
    assert {"qwen05b-agnews", "llama8b", "smollm2-135m", "tiny", "smollm2-news"} <= names
    specs = [load_recipe(p) for p in SHIPPED]
    assert any(s.objective.name == "dpo" for s in specs)
    assert any(s.resources.nodes == 2 and s.distributed.strategy == "deepspeed" and s.distributed.zero_stage == 3 for s in specs)


def test_overrides_apply_and_are_typed():
    spec = load_recipe("tiny", ["train.lr=1e-4", "method.r=4", "data.packing=true", "resources.accelerators={L4: 2}"])
    assert spec.train.lr == 1e-4 and spec.method.r == 4 and spec.data.packing is True
    assert spec.resources.accelerators == {"L4": 2}
    assert load_recipe("tiny", ["method=qlora"]).method.name == "qlora"
    assert load_recipe("tiny", ["model.revision=main"]).model.revision == "main"


def test_an_override_of_steps_replaces_the_recipes_epochs_and_back():
    steps = load_recipe("llama8b", ["train.max_steps=500"]).train  # the recipe says epochs: 1
    assert (steps.max_steps, steps.epochs) == (500, None)
    epochs = load_recipe("tiny", ["train.epochs=2"]).train  # the recipe says max_steps: 40
    assert (epochs.max_steps, epochs.epochs) == (None, 2)
    with pytest.raises(SpecError, match="not both"):  # both asked for on the command line: still an error
        load_recipe("tiny", ["train.epochs=2", "train.max_steps=5"])


def test_json_schema_is_generated():
    schema = FineTuneSpec.model_json_schema()
    assert "model" in schema["required"] and "method" in schema["properties"]


# Each row: (name, recipe text or None for BASE, overrides, substrings the error must contain).
MALFORMED = [
    ("wrong type int", BASE.replace("r: 8", "r: eight"), [], ["method.r", ":4:", "valid integer"]),
    ("negative lr", BASE.replace("lr: 1.0e-3", "lr: -1"), [], ["train.lr", ":9:", "greater than 0"]),
    ("unknown top key", BASE + "resourcez: {}\n", [], ["resourcez", "did you mean 'resources'"]),
    ("unknown nested key", BASE.replace("max_steps: 5", "max_step: 5"), [], ["train.max_step", "did you mean 'max_steps'", ":8:"]),
    ("bad method name", BASE.replace("name: lora", "name: loraa"), [], ["method", "'loraa'", "did you mean 'lora'"]),
    ("qlora key on lora", BASE.replace("r: 8", "r: 8\n  quant_type: nf4"), [], ["method.quant_type", "belongs to method qlora"]),
    ("bad quant enum", BASE.replace("name: lora", "name: qlora\n  quant_type: nf8"), [], ["method.quant_type", "'nf4' or 'fp4'"]),
    ("bad template", BASE + "  template: alpaca\n".replace("  ", "", 0), [], []),  # replaced below
    ("missing model", BASE.replace("model: tiny:llama\n", ""), [], ["model", "required"]),
    ("missing data", BASE.replace("data:\n  source: builtin:news-topics\n", ""), [], ["data", "required"]),
    ("missing data source", BASE.replace("  source: builtin:news-topics\n", "  format: jsonl\n"), [], ["data.source", "required"]),
    ("steps and epochs", BASE.replace("max_steps: 5", "max_steps: 5\n  epochs: 1"), [], ["train", "not both"]),
    ("dpo with prompt tuning", BASE.replace("name: lora\n  r: 8", "name: prompt_tuning") + "objective: dpo\n", [], ["method", "dpo"]),
    ("dpo with packing", BASE.replace("source: builtin:news-topics", "source: x.jsonl\n  packing: true") + "objective: dpo\n", [], ["data.packing", "dpo"]),
    ("packing with prefix tuning", BASE.replace("name: lora\n  r: 8", "name: prefix_tuning").replace("source: builtin:news-topics", "source: x.jsonl\n  packing: true"),
     [], ["data.packing", "virtual tokens"]),
    ("bad objective", BASE + "objective: ppo\n", [], ["objective", "unknown objective 'ppo'; did you mean 'dpo'?", "grpo"]),
    ("zero stage without deepspeed", BASE + "distributed:\n  strategy: ddp\n  zero_stage: 3\n", [], ["distributed", "DeepSpeed"]),
    ("bad zero stage", BASE + "distributed:\n  strategy: deepspeed\n  zero_stage: 1\n", [], ["distributed.zero_stage"]),
    ("bad strategy", BASE + "distributed: horovod\n", [], ["distributed.strategy", "horovod"]),
    ("spot on slurm", BASE + "resources:\n  infra: slurm\n  spot: true\n", [], ["resources", "spot"]),
    ("bad accelerator string", BASE + "resources:\n  accelerators: 'L4:x'\n", [], ["resources.accelerators", "not an integer"]),
    ("zero accelerators", BASE + "resources:\n  accelerators: {L4: 0}\n", [], ["resources.accelerators", ">= 1"]),
    ("bad nodes", BASE + "resources:\n  nodes: 0\n", [], ["resources.nodes", "greater than or equal to 1"]),
    ("bad output scheme", BASE + "output: gs://bucket/x\n", [], ["output", "gs://"]),
    ("s3 without bucket", BASE + "output: s3:///x\n", [], ["output", "bucket"]),
    ("secret value not name", BASE + "secrets: ['hf_abc123 token']\n", [], ["secrets", "not an environment variable name"]),
    ("secret also in env", BASE + "secrets: [HF_TOKEN]\nenv: {HF_TOKEN: abc}\n", [], ["env", "secret"]),
    ("bad run name", BASE + "name: 'my run!'\n", [], ["name", "letters, digits"]),
    ("one label", BASE + "eval:\n  labels: [A]\n", [], ["eval.labels", "two labels"]),
    ("duplicate labels", BASE + "eval:\n  labels: [A, A]\n", [], ["eval.labels", "distinct"]),
    ("empty target list", BASE.replace("r: 8", "r: 8\n  target_modules: []"), [], ["method.target_modules"]),
    ("dropout out of range", BASE.replace("r: 8", "r: 8\n  dropout: 1.5"), [], ["method.dropout", "less than 1"]),
    ("bad precision", BASE.replace("lr: 1.0e-3", "lr: 1.0e-3\n  precision: fp8"), [], ["train.precision", "fp8"]),
    ("bad optimizer", BASE.replace("lr: 1.0e-3", "lr: 1.0e-3\n  optimizer: adam"), [], ["train.optimizer"]),
    ("broken yaml indentation", "model: x\n data: y\n", [], [":2:", "YAML syntax error"]),
    ("broken yaml bracket", "model: [x\ndata: y\n", [], ["YAML syntax error"]),
    ("duplicate key", BASE + "model: other\n", [], [":10:", "duplicate key 'model'", "line 1"]),
    ("empty recipe", "", [], [":1:", "empty"]),
    ("list at top level", "- a\n- b\n", [], [":1:", "mapping"]),
    ("override bad value", None, ["train.batch_size=many"], ["--set train.batch_size=many", "train.batch_size"]),
    ("override unknown key", None, ["train.lrr=1"], ["--set train.lrr=1", "did you mean 'lr'"]),
    ("override malformed", None, ["train.lr"], ["--set train.lr", "KEY=VALUE"]),
    ("override into a value", None, ["train.lr.x=1"], ["--set train.lr.x=1", "not a section"]),
    ("prefix with checkpointing", BASE.replace("name: lora\n  r: 8", "name: prefix_tuning").replace("lr: 1.0e-3", "lr: 1.0e-3\n  gradient_checkpointing: true"), [], ["train.gradient_checkpointing"]),
    ("eval_source and eval_split", BASE.replace("source: builtin:news-topics", "source: a.jsonl\n  eval_source: b.jsonl\n  eval_split: 0.2"), [], ["data.eval_split", "not both"]),
]
MALFORMED[7] = ("bad template", BASE.replace("source: builtin:news-topics", "source: a.jsonl\n  template: alpaca"), [], ["data.template", "alpaca", ":7:"])


@pytest.mark.parametrize("name,text,overrides,expected", MALFORMED, ids=[row[0] for row in MALFORMED])
def test_malformed_recipe_names_field_and_line(tmp_path, name, text, overrides, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE if text is None else text)
    with pytest.raises(SpecError) as info:
        load_recipe(recipe, overrides)
    message = str(info.value)
    located = f"{recipe}:" in message or any(f"--set {o}" in message for o in overrides)
    assert located, f"neither {recipe}:LINE nor the --set override named in:\n{message}"
    for piece in expected:
        assert piece in message, f"{piece!r} not in:\n{message}"


def test_missing_recipe_file(tmp_path):
    with pytest.raises(SpecError, match="no such recipe"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="shipped: .*tiny"):
        load_recipe("no-such-recipe")


def test_python_api_errors_name_the_field():
    with pytest.raises(SpecError) as info:
        sdk.FineTuneSpec.from_json('{"model": "m", "data": "d", "train": {"batch_size": 0}}')
    assert "train.batch_size" in str(info.value)


@pytest.mark.parametrize("name,text,overrides,expected", MALFORMED[:12:3], ids=[r[0] for r in MALFORMED[:12:3]])
def test_cli_validate_exits_2_without_traceback(tmp_path, cli_here, name, text, overrides, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE if text is None else text)
    args = ["validate", str(recipe)] + [f"--set={o}" for o in overrides]
    result = cli_here(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert expected[0] in result.stderr


def test_cli_validate_all_shipped(run_cli):
    result = run_cli("validate", "--no-data", *map(str, SHIPPED))  # their example data lives in buckets of their own
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("✓") == len(SHIPPED)


def test_cli_recipes_and_schema(run_cli):
    listing = run_cli("recipes")
    assert listing.returncode == 0 and "tiny" in listing.stdout and "SmolLM2" in listing.stdout
    schema = run_cli("schema")
    assert json.loads(schema.stdout)["title"] == "FineTuneSpec"


def test_cli_missing_file_is_clean(run_cli, tmp_path):
    result = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "no such recipe file" in result.stderr and "Traceback" not in result.stderr


def test_recipe_text_dedent_example():
    # A user writing a spec inline in a notebook gets the same validation.
    import yaml

    data = yaml.safe_load(textwrap.dedent(BASE))
    assert FineTuneSpec.model_validate(data).method.r == 8


def test_cli_start_up_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, sdk.cli; print([m for m in ('torch', 'transformers', 'sky', 'peft', 'pydantic') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
