"""The run's chat format carried into an export: the Jinja chat template a GGUF's metadata holds, and the TEMPLATE
of an Ollama Modelfile (Go text/template, fed the data Ollama's server feeds it).

Jinja is not translated into Go. A registry of chat-format families is: each family is data (what surrounds each
role's content, where a system message goes, what opens the answer), and its Python rendering, its Jinja template and
its Ollama TEMPLATE all come from that one definition. A tokenizer's template is mapped to a family by rendering probe
conversations with both; one that matches no family is refused, and no TEMPLATE is written.

Not carried, because a TEMPLATE cannot: BOS (Ollama's runner adds it when it tokenizes, so Ollama's own templates
leave it out, as these do); `| trim` of content (Go templates have no trim: content is written as sent, the same text
whenever it has no surrounding whitespace); role-order checks; tools (see _NO_TOOLS). Multi-turn in the instruction
and plain formats, which train single-turn: each user turn written as a prompt, each answer as a completion and EOS.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

from sdk.data.rendering import instruction_prompt

_SLOT = re.compile(r"\{(eos|bos|instruction)\}")  # in a family's strings: filled per tokenizer and per run
_MARK = "\x00mark\x00"  # stands for content, or a slot read from a template
TRIPLE = '"' * 3  # what opens and closes a multi-line Modelfile value
_SHOW = "{{ %s }}"  # how both languages print an expression
_NO_TOOLS = ("tools are not carried: Ollama hands a TEMPLATE its tools as Go structs (JSON without spaces, a fixed "
             "key order) where the Jinja template writes Python's json.dumps of the request's own dicts")
NO_SYSTEM = "this chat format has no system role"  # the name an Ollama TEMPLATE fails on for a system message


@dataclass(frozen=True)
class Family:
    """One chat format. `turns`: role → (text before the content, text after it); roles not listed are not written.
    Strings may hold {eos}, {bos}, {instruction}. `system`: turn (each system message a turn), merge (a first system
    message opens the next turn's content, a blank line after it: Gemma 3), header (a system turn always opens the
    text, `header` then a first system message: Llama 3.1), refuse (an error: the Jinja raises, the TEMPLATE fails to
    execute), drop (not written). `default_system`: a system message put first when a conversation does not open
    with one (SmolLM2's, Qwen's, a run's data.system_prompt)."""

    name: str
    turns: dict[str, tuple[str, str]]
    generation: str = ""  # what add_generation_prompt writes
    system: str = "turn"
    bos: bool = False  # the Jinja writes bos_token first
    trim: bool = False  # the Jinja trims each message's content
    stops: tuple[str, ...] = ()  # end-of-turn markers (EOS is added)
    header: str = ""  # mode header: what precedes the system text in the opening turn
    empty_user: str | None = None  # a user turn with empty content, written whole (the Input block left out)
    tools: str = _NO_TOOLS  # why tools are not carried to Ollama ("" would mean they are)
    instruction: str | None = None
    default_system: str | None = None
    slots: tuple[str, ...] = field(default=(), compare=False)  # parameters read from a template ('instruction')

    @property
    def takes_system(self) -> bool:
        return self.system in ("turn", "merge", "header")

    def _fill(self, text: str, *, bos: str, eos: str) -> str:
        values = {"bos": bos, "eos": eos, "instruction": self.instruction or ""}
        return _SLOT.sub(lambda m: values[m[1]], text)

    def _content(self, text: str) -> str:
        return text.strip() if self.trim else text

    def render(self, messages: list[dict[str, Any]], *, bos_token: str = "", eos_token: str = "",
               add_generation_prompt: bool = True) -> str:
        """The conversation as this family's Jinja template writes it (ValueError where that template raises)."""
        fill = partial(self._fill, bos=bos_token, eos=eos_token)
        msgs = list(messages)
        if self.default_system is not None and msgs and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.default_system})
        first = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
        out = fill("{bos}") if self.bos else ""
        if self.system == "header":
            before, after = self.turns["system"]
            out += fill(before) + self.header + self._content(first or "") + fill(after)
        prefix = first + "\n\n" if self.system == "merge" and first is not None else ""
        for i, m in enumerate(msgs):
            role, content = m["role"], m.get("content") or ""
            if role == "system" and self.system == "refuse":
                raise ValueError(NO_SYSTEM)
            skip = role == "system" and (self.system == "drop" or (i == 0 and self.system in ("merge", "header")))
            if skip or role not in self.turns:
                continue
            before, after = self.turns[role]
            if role == "user" and not content and self.empty_user is not None:
                before, content, after = self.empty_user, "", ""
            out += fill(before) + prefix + self._content(content) + fill(after)
            prefix = ""
        return out + (fill(self.generation) if add_generation_prompt else "")

    def _program(self, syntax: _Syntax, text: Callable[[str], str], raw: Callable[[str], str]) -> list[str]:
        """The family in one template language: `text` writes a string with slots, `raw` one without."""
        s, default, out = syntax._replace(trim=syntax.trim if self.trim else "%s"), self.default_system, []
        if self.system == "header":
            before, after = self.turns["system"]
            out += [text(before), raw(self.header), s.if_ % s.first_system, _SHOW % (s.trim % s.first_content)]
            out += [s.else_, raw(self._content(default))] if default else []
            out += [s.end, text(after)]
        if self.system == "merge":
            out += [s.init_p, s.if_ % s.first_system, s.set_p % (s.join2 % s.first_content)]
            out += [s.else_, s.set_p % _quote(default + "\n\n")] if default is not None else []
            out.append(s.end)
        out.append(s.loop)
        if self.system == "turn" and default is not None:
            before, after = self.turns["system"]
            out += [s.if_ % s.opening, text(before), raw(self._content(default)), text(after), s.end]
        branches = []
        for role, (before, after) in self.turns.items():
            body = [text(before), *([_SHOW % s.p, s.set_p % '""'] if self.system == "merge" else []),
                    _SHOW % (s.trim % s.content), text(after)]
            if role == "user" and self.empty_user is not None:
                body = [s.if_ % s.content, *body, s.else_, text(self.empty_user), s.end]
            if role == "system" and self.system in ("merge", "header"):
                body = [s.if_ % s.later, *body, s.end]
            branches.append((role, body))
        if self.system == "refuse":
            branches.insert(0, ("system", [s.refuse % _quote(NO_SYSTEM)]))
        elif self.system == "drop":
            branches = [(role, body) for role, body in branches if role != "system"]
        for n, (role, body) in enumerate(branches):
            out += [(s.elif_ if n else s.if_) % (s.role % _quote(role)), *body]
        return [*out, s.end, s.end_loop]

    def go_template(self, *, eos_token: str) -> str:
        """The Ollama TEMPLATE: the same text for a conversation that ends with a user turn (BOS left to the runner)."""
        fill = partial(self._fill, bos="", eos=eos_token)
        return "".join([*self._program(GO, lambda t: _go_text(fill(t)), _go_text), _go_text(fill(self.generation))])

    def jinja(self) -> str:
        """This family as a chat template (the variables of HF apply_chat_template)."""
        program = self._program(JINJA, lambda t: _SHOW % self._expr(t) if t else "", lambda t: _show(t) if t else "")
        ending = f"{{% if add_generation_prompt %}}{_SHOW % self._expr(self.generation)}{{% endif %}}"
        return "".join(["{{ bos_token }}" if self.bos else "", *program, ending if self.generation else ""])

    def _expr(self, text: str) -> str:
        """A string with slots as a Jinja expression (bos_token and eos_token stay variables)."""
        named = {"bos": "bos_token", "eos": "eos_token", "instruction": _quote(self.instruction or "")}
        parts = [named[p] if i % 2 else _quote(p) for i, p in enumerate(_SLOT.split(text)) if p]  # text, slot, text…
        return " ~ ".join(parts) or '""'


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a Go string literal, and a Jinja one


def _show(text: str) -> str:
    return _SHOW % _quote(text)


def _go_text(text: str) -> str:
    """Literal text in a Go template; with a '{' (which could open an action with what follows) a string action."""
    return text if "{" not in text else _show(text)


# How a template language spells what a family needs (%-formats): `first_system` the conversation opens with a system
# message, `later` the message is not the first, `opening` it is the first and no system one, p Gemma 3's prefix.
_Syntax = namedtuple("_Syntax", "if_ elif_ else_ end loop end_loop role first_system first_content later opening "
                                "content trim init_p set_p p join2 refuse")
GO = _Syntax("{{ if %s }}", "{{ else if %s }}", "{{ else }}", "{{ end }}", "{{ range $i, $m := $.Messages }}",
             "{{ end }}", "eq $m.Role %s", 'and $.Messages (eq (index $.Messages 0).Role "system")',
             "(index $.Messages 0).Content", "ne $i 0", 'and (eq $i 0) (ne $m.Role "system")', "$m.Content",
             "%s",  # Go templates have no trim: content is written as sent
             '{{ $p := "" }}', "{{ $p = %s }}", "$p", 'printf "%%s\\n\\n" %s', "{{ template %s . }}")
JINJA = _Syntax("{%% if %s %%}", "{%% elif %s %%}", "{% else %}", "{% endif %}", "{% for m in messages %}",
                "{% endfor %}", "m.role == %s", 'messages and messages[0].role == "system"', "messages[0].content",
                "not loop.first", 'loop.first and m.role != "system"', "m.content", "(%s | trim)",
                '{% set ns = namespace(p="") %}', "{%% set ns.p = %s %%}", "ns.p", '(%s ~ "\\n\\n")',
                "{{ raise_exception(%s) }}")


def _roles(template: str, after: str, *, system: bool = True) -> dict[str, tuple[str, str]]:
    return {r: (template.format(role=r), after) for r in (("system",) if system else ()) + ("user", "assistant")}


_GEMMA = {"user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
          "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")}
_LLAMA3 = _roles("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>")
_USER = tuple(instruction_prompt(_MARK, None).split(_MARK))  # the project's own '### Instruction' prompt, cut at
_FIXED_USER = tuple(instruction_prompt("{instruction}", _MARK).split(_MARK))  # the content (the Input: a fixed one)
_ANSWER = ("", "{eos}")  # a completion, then EOS (trl appends it to each prompt/completion row)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("chatml", _roles("<|im_start|>{role}\n", "<|im_end|>\n"), "<|im_start|>assistant\n",
           stops=("<|im_end|>", "<|im_start|>")),
    Family("llama3", _LLAMA3, "<|start_header_id|>assistant<|end_header_id|>\n\n", bos=True, trim=True,
           stops=("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    Family("llama3.1", _LLAMA3, "<|start_header_id|>assistant<|end_header_id|>\n\n", system="header", bos=True,
           trim=True, header="Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
           stops=("<|eot_id|>", "<|eom_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    Family("mistral", {"user": ("[INST] ", " [/INST]"), "assistant": _ANSWER}, system="refuse", bos=True,
           stops=("[INST]",)),
    Family("gemma", _GEMMA, "<start_of_turn>model\n", system="refuse", bos=True, trim=True,
           stops=("<end_of_turn>", "<start_of_turn>")),
    Family("gemma3", _GEMMA, "<start_of_turn>model\n", system="merge", bos=True, trim=True,
           stops=("<end_of_turn>", "<start_of_turn>")),
    Family("phi3", _roles("<|{role}|>\n", "<|end|>\n"), "<|assistant|>\n",
           stops=("<|end|>", "<|user|>", "<|assistant|>", "<|system|>")),
    Family("finetune-tiny", {**_roles("<|{role}|>\n", ""), "assistant": ("<|assistant|>\n", "<|end|>")},
           "<|assistant|>\n", stops=("<|end|>",)),  # TINY_CHAT_TEMPLATE (sdk.core.architectures): trim_blocks eats \n
    Family("instruction", {"user": _USER, "assistant": _ANSWER}, system="drop", stops=("### Instruction:",),
           tools="the instruction format has no tool syntax"),
    Family("instruction+fixed", {"user": _FIXED_USER, "assistant": _ANSWER}, system="drop",
           empty_user=instruction_prompt("{instruction}", None), stops=("### Instruction:",),
           tools="the instruction format has no tool syntax", slots=("instruction",)),
    Family("plain", {"user": ("", ""), "assistant": _ANSWER}, system="drop", tools="plain text has no tool syntax"),
    Family("plain+fixed", {"user": ("{instruction}\n\n", ""), "assistant": _ANSWER}, system="drop",
           empty_user="{instruction}", tools="plain text has no tool syntax", slots=("instruction",)),
)}
# The run's own formats (data.template), with or without a fixed instruction (data.instruction: classification rows)
RUN_FORMATS = {("instruction", False): "instruction", ("instruction", True): "instruction+fixed",
               ("plain", False): "plain", ("plain", True): "plain+fixed"}

_S, _U1, _A1, _U2 = ({"role": r, "content": c} for r, c in (("system", "You answer in one word."),
                      ("user", "What is the capital of France?"), ("assistant", "Paris"), ("user", "And of Italy?")))
PROBES = ([_S, _U1], [_U1, _A1, _U2], [_U1], [_S, _U1, _A1, _U2], [{"role": "user", "content": ""}])  # [2]: read slots


# transformers' {% generation %} block marks the assistant's tokens and writes its body: an `if true` writes the same
_GENERATION = re.compile(r"(\{%-?\s*)(end)?generation(\s*-?%\})")


@lru_cache(maxsize=4)
def _environment(today: str) -> Any:
    """Jinja as transformers renders chat templates: sandboxed, trim_blocks/lstrip_blocks, loop controls,
    raise_exception, strftime_now (here a fixed day) and a tojson without HTML escaping."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = partial(json.dumps, ensure_ascii=False)  # transformers': indent, separators, sort_keys
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.fromisoformat(today).strftime(fmt))
    return env


def render_jinja(template: str, messages: list[dict[str, Any]], *, bos_token: str, eos_token: str,
                 today: str = "2024-07-26") -> str:
    """A chat template applied as transformers applies it (add_generation_prompt, no tools)."""
    source = _GENERATION.sub(lambda m: m[1] + ("endif" if m[2] else "if true") + m[3], template)
    return _environment(today).from_string(source).render(
        messages=messages, add_generation_prompt=True, tools=None, documents=None, bos_token=bos_token,
        eos_token=eos_token)


def _attempt(render: Callable[[], str], bos: str) -> str | None:
    """The text, a leading BOS aside (the runner adds it: whether a template writes it does not reach Ollama)."""
    try:
        return render().removeprefix(bos)
    except Exception:  # the template's own refusal (raise_exception), or any error: no text
        return None


def _read(family: Family, slot: str, seen: str | None, *, bos: str, eos: str) -> Family | None:
    """The family with `slot` set to what the template wrote in its place on the user-only probe, if it fits."""
    probe = _attempt(lambda: replace(family, **{slot: _MARK}).render(PROBES[2], bos_token=bos, eos_token=eos), bos)
    if seen is None or probe is None or _MARK not in probe:
        return None
    head, *rest = probe.split(_MARK)
    pattern = re.escape(head) + "(?P<v>.*)" + "(?P=v)".join(re.escape(part) for part in rest)
    found = re.fullmatch(pattern, seen, re.DOTALL)
    return replace(family, **{slot: found["v"]}) if found else None


def detect_family(chat_template: str, *, bos_token: str | None, eos_token: str) -> Family:
    """The registry's family that writes the probe conversations exactly as `chat_template` does (its default
    system prompt or fixed instruction read from it); ValueError naming the template when none does."""
    bos = bos_token or ""
    seen, other_day = ([_attempt(lambda p=p, d=day: render_jinja(chat_template, p, bos_token=bos, eos_token=eos_token,
                                                                   today=d), bos) for p in PROBES]
                       for day in ("2024-07-26", "2031-02-03"))  # a template that writes today's date differs
    head = f"chat template {chat_template[:80]!r}"
    if seen != other_day:
        raise ValueError(f"{head} writes today's date, which an Ollama TEMPLATE cannot write the same way (its "
                         "currentDate is YYYY-MM-DD): no Ollama TEMPLATE was written")
    for family in FAMILIES.values():
        candidates = [] if family.slots else [family]
        for slot in family.slots or (("default_system",) if family.takes_system else ()):
            candidates += [c for c in [_read(family, slot, seen[2], bos=bos, eos=eos_token)] if c is not None]
        for candidate in candidates:
            if seen == [_attempt(lambda p=p, c=candidate: c.render(p, bos_token=bos, eos_token=eos_token), bos)
                        for p in PROBES]:
                return candidate
    raise ValueError(f"{head} matches none of the chat formats an Ollama TEMPLATE is written for "
                     f"({', '.join(FAMILIES)}): no Ollama TEMPLATE was written")


def run_chat_template(*, template: str, tokenizer_template: str | None, instruction: str | None = None,
                      system_prompt: str | None = None) -> str:
    """The Jinja chat template that writes a conversation exactly as the run trained (its summary's `template`):
    chat: the tokenizer's own, with data.system_prompt put first when a conversation has no system message (as the
    renderer did); instruction / plain: the '### Instruction' or plain text of the run's prompts, the answer and
    EOS after it (a fixed `instruction`: the user's message is the Input). A system prompt is no part of those."""
    if template == "chat":
        if tokenizer_template is None:
            raise ValueError("data.template: chat, but the model's tokenizer has no chat template to export")
        if not system_prompt:
            return tokenizer_template
        return (f'{{%- if not messages or messages[0].role != "system" %}}{{%- set messages = [{{"role": "system", '
                f'"content": {_quote(system_prompt)}}}] + messages %}}{{%- endif %}}' + tokenizer_template)
    name = RUN_FORMATS.get((template, instruction is not None))
    if name is None:
        raise ValueError(f"data.template: {template!r} is not a format a run trains in (chat, instruction, plain)")
    return replace(FAMILIES[name], instruction=instruction).jinja()


@dataclass(frozen=True)
class OllamaTemplate:
    """An Ollama TEMPLATE (Go text/template), its stops, its family, and whether a system message reaches the text."""

    template: str
    stops: list[str]
    family: str
    system: bool = True


def ollama_template(chat_template: str, *, bos_token: str | None, eos_token: str,
                    tools: bool = False) -> OllamaTemplate:
    """The TEMPLATE that renders as `chat_template` does (see detect_family); `tools`: the run trained with tools,
    refused for a family whose TEMPLATE cannot write them the same way."""
    family = detect_family(chat_template, bos_token=bos_token, eos_token=eos_token)
    if tools and family.tools:
        raise ValueError(f"the run trained with tools, and its chat format ({family.name}) cannot carry them into an "
                         f"Ollama TEMPLATE: {family.tools}")
    stops = list(dict.fromkeys(s for s in (*family.stops, eos_token) if s))
    return OllamaTemplate(family.go_template(eos_token=eos_token), stops, family.name, family.takes_system)


def _value(text: str, what: str, *, block: bool = False) -> str:
    """A Modelfile value Ollama's parser reads back unchanged: it has no escapes, ends a triple-quoted value at the
    first triple quote and drops characters that are not printable."""
    bad = sorted({c for c in text if not (c.isprintable() or c in "\t\n\r")})
    if bad:
        raise ValueError(f"{what}: holds {', '.join(map(repr, bad))}, which Ollama's Modelfile parser drops")
    if not block and "\n" not in text and not text.startswith('"'):
        return f'"{text}"'
    if TRIPLE in text:
        raise ValueError(f"{what}: holds {TRIPLE}, which ends a Modelfile value: no Modelfile was written")
    return TRIPLE + text + TRIPLE


def _path(path: str, what: str) -> str:
    return _value(path, what) if any(c.isspace() for c in path) or path.startswith('"') else path


def modelfile(*, gguf: str, adapter: str | None, chat: OllamaTemplate, system: str | None,
              num_ctx: int | None = None) -> str:
    """An Ollama Modelfile: FROM the GGUF (the base's, with ADAPTER the LoRA's GGUF), the TEMPLATE, one stop per
    end-of-turn string, SYSTEM where the run trained with a system prompt, num_ctx when given."""
    lines = [f"FROM {_path(gguf, 'FROM')}"] + ([f"ADAPTER {_path(adapter, 'ADAPTER')}"] if adapter else [])
    lines.append(f"TEMPLATE {_value(chat.template, 'TEMPLATE', block=True)}")
    lines += [f"PARAMETER stop {_value(stop, f'stop {stop!r}')}" for stop in chat.stops]
    lines += [f"PARAMETER num_ctx {int(num_ctx)}"] if num_ctx is not None else []
    if system:
        if not chat.system:
            raise ValueError(f"SYSTEM: the {chat.family} format writes no system message, so a system prompt would not "
                             "reach the model")
        lines.append(f"SYSTEM {_value(system, 'SYSTEM', block=True)}")
    return "\n".join(lines) + "\n"


def _unquote(text: str) -> str | None:
    for quote in (TRIPLE, '"'):  # the first that opens it must close it (Ollama's parser has no escapes)
        if text.startswith(quote):
            return text[len(quote):-len(quote)] if len(text) >= 2 * len(quote) and text.endswith(quote) else None
    return text


def parse_modelfile(text: str) -> dict[str, Any]:
    """A Modelfile read back as Ollama's parser reads it: {'from', 'adapter', 'template', 'system', 'parameters':
    {name: [values]}}. A value runs on over lines until its quotes close."""
    out: dict[str, Any] = {"from": None, "adapter": None, "template": None, "system": None, "parameters": {}}
    lines, i = text.split("\n"), 0
    while i < len(lines):
        line, i = lines[i].lstrip(" \t"), i + 1
        if not line.strip() or line.startswith("#"):
            continue
        command, _, value = line.partition(" ")
        name = command.lower()
        if name == "parameter":
            name, _, value = value.strip(" \t").partition(" ")
        while (read := _unquote(value.strip())) is None:
            if i >= len(lines):
                raise ValueError(f"Modelfile: {command} {value[:40]!r}... never closes its quotes")
            value, i = value + "\n" + lines[i], i + 1
        if command.lower() == "parameter":
            out["parameters"].setdefault(name, []).append(read)
        else:
            out[name] = read
    return out
