"""Tool calling: the functions a row offers (`tools`), the assistant's calls and the tools' results, as OpenAI's chat
format writes them (assistant `tool_calls`, `tool` turns with `tool_call_id`) and as ShareGPT datasets do
(`function_call` / `observation` turns, `tools` as a JSON string), read into one form; and the chat template they
render with.

A model whose chat template renders tools itself (Qwen2.5, Llama 3.1, Mistral…) trains and serves with it. One
whose template has no tool support gets the Hermes format put in front of its own template (TOOL_PROLOGUE): the
tools listed in the system turn, each call written `<tool_call>{"name": …, "arguments": …}</tool_call>` in the
assistant's turn, results as `<tool_response>` in a user turn. Training and the serving engine (vLLM with
`--chat-template` and its `hermes` tool parser) render the same template, so the served model reads its requests
the way it was trained. No torch here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.data.rows import RowError

# -------------------------------------------------------------------------------------------- rows


def _json(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise RowError(f"{name} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


def read_tools(value: Any, name: str = "tools") -> list[dict[str, Any]]:
    """The functions a row offers, as OpenAI's [{type: function, function: {name, description?, parameters?}}];
    a JSON string of them (ShareGPT datasets) and bare {name, description, parameters} objects are read too."""
    value = _json(value, name)
    if not isinstance(value, list) or not value:
        raise RowError(f"{name!r} must be a non-empty list of functions, not {type(value).__name__}")
    out = []
    for index, tool in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(tool, dict):
            raise RowError(f"{where}: a tool must be an object, not {type(tool).__name__}")
        if tool.get("type", "function") != "function":
            raise RowError(f"{where}: tools of type {tool.get('type')!r} cannot be trained (only functions)")
        if "function" in tool:
            if tool.get("type", "function") != "function":
                raise RowError(f"{where}: tools of type {tool.get('type')!r} cannot be trained (only functions)")
            tool = tool["function"]
            where += ".function"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"].strip():
            raise RowError(f"{where}: a function needs a 'name'")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description") is not None:
            if not isinstance(tool["description"], str):
                raise RowError(f"{where}.description must be text")
            function["description"] = tool["description"]
        if tool.get("parameters") is not None:
            if not isinstance(tool["parameters"], dict):
                raise RowError(f"{where}.parameters must be a JSON schema object, not {type(tool['parameters']).__name__}")
            function["parameters"] = tool["parameters"]
        out.append({"type": "function", "function": function})
    names = [t["function"]["name"] for t in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RowError(f"{name!r} defines {', '.join(twice)} twice")
    return out


def load_tools_file(path: str | Path, option: str = "--tools") -> list[dict[str, Any]]:
    """A JSON file of the functions a prompt offers (OpenAI's `tools` list), read and checked; ValueError names it."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ValueError(f"{option}: {path}: {exc.strerror or exc}") from None
    try:
        return read_tools(json.loads(text), "tools")
    except ValueError as exc:
        raise ValueError(f"{option}: {path}: {exc}") from None


def arguments_json(value: Any, name: str) -> str:
    """A call's arguments as canonical JSON text (json.dumps, keys in the order written): what a chat template's
    `tojson` writes for the object vLLM parses from a request, so a call in a training prompt reads as a served one."""
    if value is None or value == "":
        return "{}"
    parsed = _json(value, name)
    if not isinstance(parsed, dict):
        raise RowError(f"{name} must be a JSON object of the function's arguments, not {type(parsed).__name__}")
    return json.dumps(parsed, ensure_ascii=False)


def read_tool_calls(value: Any, name: str) -> list[dict[str, Any]]:
    """An assistant's calls as [{id?, type: function, function: {name, arguments: JSON text}}]; OpenAI's form, or
    ShareGPT's function_call value ({name, arguments} or a list of them, as an object or as JSON text)."""
    value = _json(value, name)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RowError(f"{name} must be a non-empty list of calls, not {type(value).__name__}")
    calls = []
    for index, call in enumerate(value):
        where = f"{name}[{index}]" if len(value) > 1 or name.endswith("tool_calls") else name
        if not isinstance(call, dict):
            raise RowError(f"{where}: a call must be an object with name and arguments, not {type(call).__name__}")
        function = call.get("function", call)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise RowError(f"{where}: a call needs the function's 'name'")
        key = "arguments" if "arguments" in function else "parameters" if "parameters" in function else None  # Llama's word
        if key is None:
            raise RowError(f"{where}: a call needs its 'arguments' (a JSON object; {{}} for none)")
        out: dict[str, Any] = {"type": "function", "function": {
            "name": function["name"], "arguments": arguments_json(function[key], f"{where}: arguments")}}
        if isinstance(call.get("id"), str) and call["id"]:
            out["id"] = call["id"]
        calls.append(out)
    return calls


def check_calls(turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None, name: str) -> None:
    """Every call names a function the row offers; every tool result answers a call made before it (by id when
    the turns carry ids) and no call is answered twice."""
    offered = {t["function"]["name"] for t in tools or []}
    pending: list[dict[str, Any]] = []
    for index, turn in enumerate(turns):
        if pending and turn["role"] != "tool":
            names = ", ".join(c["function"]["name"] for c in pending)
            raise RowError(f"{name}[{index}]: the call(s) to {names} before it got no tool result")
        if turn.get("tool_calls"):
            ids = [c["id"] for c in turn["tool_calls"] if "id" in c]
            if len(ids) != len(set(ids)):
                raise RowError(f"{name}[{index}]: two calls share one id ({', '.join(sorted({i for i in ids if ids.count(i) > 1}))})")
            if tools is None:
                raise RowError(f"{name}[{index}]: a tool call, but the row has no 'tools' (the functions it may call)")
            for call in turn["tool_calls"]:
                if call["function"]["name"] not in offered:
                    raise RowError(f"{name}[{index}]: calls {call['function']['name']!r}, which is not among the row's "
                                   f"tools ({', '.join(sorted(offered))})")
            pending = list(turn["tool_calls"])
        elif turn["role"] == "tool":
            if not pending:
                raise RowError(f"{name}[{index}]: a tool result without a call before it")
            wanted = turn.get("tool_call_id")
            match = next((c for c in pending if c.get("id") == wanted), None) if wanted else pending[0]
            if match is None:
                raise RowError(f"{name}[{index}]: tool_call_id {wanted!r} answers no call of the assistant's turn before it")
            pending.remove(match)
            if not wanted and len(pending) and turns[index + 1:index + 2] and turns[index + 1]["role"] != "tool":
                pending = []  # ShareGPT: one observation holds the results of all the turn's calls


# ------------------------------------------------------------------------------------------ templates

# Put in front of a chat template without tool support. Jinja's top-level `set` rebinds `messages` and `tools` for
# the template after it, which then renders plain turns only. Tools are written field by field so a request's
# extra keys (vLLM passes its parsed tools) cannot change the text.
TOOL_PROLOGUE = r"""{#- finetune: tool calls in the Hermes format for a chat template without tool support -#}
{%- set ns = namespace(messages=[], results=[], block="", calls="") -%}
{%- if tools -%}
{%- set ns.block = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" -%}
{%- for tool in tools -%}
{%- set fn = tool.function if tool.function is defined else tool -%}
{%- set ns.block = ns.block ~ '\n{"type": "function", "function": {"name": ' ~ (fn.name | tojson) ~ ((', "description": ' ~ (fn.description | tojson)) if fn.description else '') ~ ((', "parameters": ' ~ (fn.parameters | tojson)) if fn.parameters else '') ~ '}}' -%}
{%- endfor -%}
{%- set ns.block = ns.block ~ "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>" -%}
{%- if messages and messages[0].role == "system" -%}
{%- set ns.messages = [{"role": "system", "content": messages[0].content ~ "\n\n" ~ ns.block}] -%}
{%- else -%}
{%- set ns.messages = [{"role": "system", "content": ns.block}] -%}
{%- endif -%}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == "tool" -%}
{%- set ns.results = ns.results + ["<tool_response>\n" ~ m.content ~ "\n</tool_response>"] -%}
{%- else -%}
{%- if ns.results -%}
{%- set ns.messages = ns.messages + [{"role": "user", "content": ns.results | join("\n")}] -%}
{%- set ns.results = [] -%}
{%- endif -%}
{%- if m.role == "assistant" and m.tool_calls -%}
{%- set ns.calls = "" -%}
{%- for call in m.tool_calls -%}
{%- set f = call.function if call.function is defined else call -%}
{%- set ns.calls = ns.calls ~ ("\n" if ns.calls else "") ~ '<tool_call>\n{"name": ' ~ (f.name | tojson) ~ ', "arguments": ' ~ (f.arguments if f.arguments is string else (f.arguments | tojson)) ~ '}\n</tool_call>' -%}
{%- endfor -%}
{%- set ns.messages = ns.messages + [{"role": "assistant", "content": ((m.content | trim ~ "\n") if m.content and m.content | trim else "") ~ ns.calls}] -%}
{%- elif not (loop.first and m.role == "system" and tools) -%}
{%- set ns.messages = ns.messages + [m] -%}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if ns.results -%}
{%- set ns.messages = ns.messages + [{"role": "user", "content": ns.results | join("\n")}] -%}
{%- endif -%}
{%- set messages = ns.messages -%}
{%- set tools = none -%}
"""

_USES_TOOLS = re.compile(r"\btools\b")
_USES_CALLS = re.compile(r"\btool_calls\b")

# What a template writes around a call, read before the family (a Llama-architecture model may use Hermes' format).
CALL_MARKS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3_json"))
# The vLLM tool parser for a model family whose own template renders tools (`--tool-call-parser`).
NATIVE_PARSERS = {"qwen2": "hermes", "qwen3": "hermes", "llama": "llama3_json", "mistral": "mistral"}


@dataclass(frozen=True)
class ToolTemplate:
    """How tool rows render for a model: `source` the chat template (its own, or TOOL_PROLOGUE + its own),
    `native` whether the model's template renders tools itself, `parser` vLLM's tool parser for its output (None:
    no parser known for a native template of this family), `how` one line for the report and the summary."""

    source: str
    native: bool
    parser: str | None
    how: str


def tool_template(chat_template: str | None, model_type: str | None) -> ToolTemplate:
    """The chat template tool rows train and serve with. A template that writes `tools` and `tool_calls` itself is
    kept; one without them gets the Hermes prologue; no chat template at all is refused (RowError)."""
    if not chat_template:
        raise RowError("tool calls are rendered through the model's chat template, and this model's tokenizer has "
                       "none: pick an instruct model (or give the tokenizer a chat template)")
    if _USES_TOOLS.search(chat_template) and _USES_CALLS.search(chat_template) and TOOL_PROLOGUE not in chat_template:
        parser = next((p for mark, p in CALL_MARKS if mark in chat_template), None) or NATIVE_PARSERS.get(model_type or "")
        return ToolTemplate(chat_template, True, parser,
                            "the model's chat template renders tools and tool calls itself"
                            + (f" (served with vLLM's {parser} tool parser)" if parser else
                               f" (no vLLM tool parser is known for model type {model_type!r}: served answers keep "
                               "the calls as text)"))
    source = chat_template if chat_template.startswith(TOOL_PROLOGUE) else TOOL_PROLOGUE + chat_template
    return ToolTemplate(source, False, "hermes",
                        "the model's chat template has no tool support: tools are written in the Hermes format "
                        "(<tools> in the system turn, <tool_call> JSON in the answer, <tool_response> in a user turn) "
                        "in front of its own template; served with vLLM's hermes tool parser and this template")


_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """What vLLM's hermes parser makes of generated text: the content before the first <tool_call>, and the calls
    ({name, arguments: JSON text}) in order; (text, []) when there are none or one is not JSON."""
    if "<tool_call>" not in text:
        return text, []
    try:
        calls = [json.loads(body) for body in _CALL.findall(text)]
        parsed = [{"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)} for c in calls]
    except (ValueError, KeyError, TypeError):
        return text, []
    content = text[: text.find("<tool_call>")]
    return content or None, parsed
