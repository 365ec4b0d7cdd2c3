"""Tool calling's decisions, branch by branch: which chat template tool rows render with (sdk.data.tools), that a
request as vLLM hands it to the template renders exactly as the training row did, how generated calls are parsed,
and which flags the serving engine gets. The real callers are driven in test_data_formats (training) and
test_serve (vLLM)."""

from __future__ import annotations

import json

import pytest

from sdk.data.tools import TOOL_PROLOGUE, parse_hermes_calls, read_tool_calls, read_tools, tool_template
from sdk.data.turns import RowError

PLAIN = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
NATIVE = ("{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}"
          "{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}\n{% endfor %}")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_a_template_with_its_own_tool_support_is_kept_with_its_familys_parser():
    chosen = tool_template(NATIVE, "qwen2")
    assert chosen.native and chosen.source == NATIVE and chosen.parser == "hermes"
    assert tool_template(NATIVE, "llama").parser == "llama3_json"
    unknown = tool_template(NATIVE, "gpt_neox")
    assert unknown.native and unknown.parser is None and "no vLLM tool parser is known" in unknown.how


def test_a_template_without_tool_support_gets_the_hermes_prologue_once():
    chosen = tool_template(PLAIN, "llama")
    assert not chosen.native and chosen.parser == "hermes" and chosen.source == TOOL_PROLOGUE + PLAIN
    assert tool_template(chosen.source, "llama").source == chosen.source  # a run's saved template is not wrapped twice


def test_no_chat_template_is_refused_before_launch():
    with pytest.raises(RowError, match="tokenizer has none"):
        tool_template(None, "llama")


def render(template: str, messages: list, tools: list | None, **kw) -> str:
    from launch.tiny import train_tokenizer

    tokenizer = train_tokenizer()
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False, **kw)


def test_the_prologue_changes_nothing_without_tools():
    """One template serves every adapter of an engine: for requests without tools it is the base's own."""
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render(TOOL_PROLOGUE + PLAIN, turns, None) == render(PLAIN, turns, None)


def test_a_served_request_renders_as_its_training_row():
    """Training rows hold arguments as canonical JSON text; vLLM parses a request's arguments into objects and
    hands its tools with keys of its own (strict: null): the text the model reads must be the same."""
    trained_call = read_tool_calls([{"id": "c1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}], "tool_calls")
    training = [{"role": "user", "content": "Weather in Lyon?"}, {"role": "assistant", "content": "", "tool_calls": trained_call},
                {"role": "tool", "tool_call_id": "c1", "content": "12 C"}]
    served = [{"role": "user", "content": "Weather in Lyon?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "12 C"}]
    served_tools = [{"type": "function", "function": {**WEATHER["function"], "strict": None}}]
    template = TOOL_PROLOGUE + PLAIN
    trained = render(template, training, read_tools([WEATHER]), add_generation_prompt=True)
    assert render(template, served, served_tools, add_generation_prompt=True) == trained
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>' in trained
    assert "<|user|>\n<tool_response>\n12 C\n</tool_response>" in trained


def test_tools_are_read_from_openai_and_sharegpt_forms():
    bare = json.dumps([WEATHER["function"]])  # ShareGPT datasets: a JSON string of bare functions
    assert read_tools(bare) == read_tools([WEATHER]) == [WEATHER]
    with pytest.raises(RowError, match="defines get_weather twice"):
        read_tools([WEATHER, WEATHER])
    with pytest.raises(RowError, match=r"tools\[0\]: tools of type 'retrieval' cannot be trained"):
        read_tools([{"type": "retrieval", "function": {}}])
    calls = read_tool_calls(json.dumps([{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]), "value")
    assert [c["function"] for c in calls] == [{"name": "a", "arguments": '{"x": 1}'}, {"name": "b", "arguments": "{}"}]
    with pytest.raises(RowError, match="must be a JSON object of the function's arguments, not list"):
        read_tool_calls([{"function": {"name": "a", "arguments": "[1, 2]"}}], "messages[1].tool_calls")


def test_generated_calls_are_parsed_as_vllms_hermes_parser_does():
    text = 'Checking.<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "x", "arguments": {}}'
    content, calls = parse_hermes_calls(text)
    assert content == "Checking." and calls == [{"name": "get_time", "arguments": '{"city": "Oslo"}'}, {"name": "x", "arguments": "{}"}]
    assert parse_hermes_calls("Plain answer.") == ("Plain answer.", [])
    assert parse_hermes_calls("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])


def plan(prompting: dict, adapters=("a", "b")):
    from sdk.core.serveplan import ServedAdapter, ServePlan

    return ServePlan(server_id="s", base_name="base", base_spec={}, prompting=prompting,
                     adapters=[ServedAdapter(name=n, run_id=n, run_uri=f"/r/{n}", rank=8) for n in adapters])


def test_the_engine_gets_tool_parsing_only_for_tool_trained_runs(tmp_path):
    from launch.tools.serve import not_chat_models, tool_flags

    none = plan({"a": {"template": "chat"}, "b": {"template": "instruction"}})
    assert tool_flags(none, None) == []
    assert not_chat_models(none) == {"b": "instruction"}  # the middleware refuses b's chat requests
    hermes = plan({"a": {"template": "chat", "tool_parser": "hermes", "tool_template": "a"}, "b": {"template": "chat"},
                   "base": {"template": "chat", "tool_parser": "hermes"}})
    template = tmp_path / "chat_template.jinja"
    assert tool_flags(hermes, template) == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                                            "--chat-template", str(template)]
    assert not_chat_models(hermes) == {}
    mixed = plan({"a": {"tool_parser": "hermes"}, "b": {"tool_parser": "llama3_json"}})
    with pytest.raises(ValueError, match="different tool formats"):
        tool_flags(mixed, None)


def test_a_native_template_reads_each_calls_arguments_as_an_object_and_a_refusal_names_the_row():
    """Qwen's and Llama's templates write `arguments | tojson`: given JSON text they would train a double-encoded
    string, while vLLM hands them objects. The node tokenizes tool rows from the turns with objects."""
    from launch.data import tokenized_chat_rows
    from launch.tiny import train_tokenizer
    from sdk.data.rows import DataError

    tokenizer = train_tokenizer()
    tokenizer.chat_template = NATIVE
    call = read_tool_calls([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}],
                           "tool_calls")
    row = {"prompt": [{"role": "user", "content": "Weather in Lyon?"}],
           "completion": [{"role": "assistant", "content": "", "tool_calls": call}], "tools": json.dumps([WEATHER])}
    [out] = tokenized_chat_rows([row], tokenizer, ["calls.jsonl:1"])
    text = tokenizer.decode(out["input_ids"])
    assert '"arguments": {"city": "Lyon"}' in text and '\\"city' not in text
    trained = tokenizer.decode([i for i, m in zip(out["input_ids"], out["completion_mask"], strict=True) if m])
    assert trained == 'assistant: [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}, "id": "c1"}]'
    tokenizer.chat_template = "{{ raise_exception('This model only supports single tool-calls at once!') }}"
    with pytest.raises(DataError, match=r"calls.jsonl:1: the model's chat template cannot render this row: .*single tool-calls"):
        tokenized_chat_rows([row], tokenizer, ["calls.jsonl:1"])
