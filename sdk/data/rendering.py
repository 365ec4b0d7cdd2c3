"""Rendering: a normalized Sample into the rows trl trains on, in the template it resolves to.

No torch here: the client renders the same rows to count tokens before launch, the node to train.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sdk.core.dataspec import part_spec
from sdk.core.spec import FineTuneSpec
from sdk.data.formats import Instruction, RowError, Sample, trained_turn
from sdk.objectives import objective_of

_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def template_for(template: str, sample: Sample, *, chat_template: bool | None = None) -> str:
    """The template a sample renders with ('auto' resolved), or RowError when it cannot render it.

    `auto` writes instruction rows in the model's own chat template when its tokenizer has one (a user turn of
    the instruction and input, the output as the assistant's turn: what a chat endpoint sends it), and in the
    '### Instruction' template when it has none. `chat_template` None: not known here (the client without the
    model's tokenizer); the node decides, and the summary says which."""
    if sample.kind == "text":
        if template not in ("auto", "plain"):
            raise RowError(f"text rows train as written; template {template} needs prompts (use template: plain or auto)")
        return "plain"
    chat = sample.chat
    if sample.tools and template not in ("auto", "chat"):
        raise RowError(f"rows with tools are written in the model's chat template (its tool format), not the {template} "
                       "template; use template: chat (or auto)")
    if template == "auto":
        if chat:
            return "chat"
        if isinstance(sample.prompt, Instruction):
            return "instruction" if chat_template is False else "chat"
        return "plain"
    if chat and template != "chat":
        turns = sample.turns or sample.prompt or []
        users = sum(1 for t in turns if t["role"] == "user")
        if users > 1 or any(t["role"] == "system" for t in turns):
            raise RowError(f"a conversation with {users} user turn(s)"
                           f"{' and a system turn' if any(t['role'] == 'system' for t in turns) else ''} "
                           f"cannot be written in the {template} template; use template: chat (or auto)")
    return template


def auto_template_note(chat_template: bool | None) -> str:
    """What `template: auto` made of instruction rows, for the report and the node's log."""
    if chat_template is None:
        return ("auto: instruction rows are written in the model's chat template if its tokenizer has one, else in "
                "'### Instruction' (the model's tokenizer is not on this machine: the node decides; the summary says which)")
    if chat_template:
        return ("auto → chat: instruction rows become a user turn (instruction, input) and the assistant's answer in the "
                "model's chat template, as a chat endpoint sends them (data.template: instruction for '### Instruction')")
    return "auto → instruction: the model's tokenizer has no chat template, so rows are written in '### Instruction'"


def chat_loss_route(chat_template: str | None, *, weighted: bool) -> tuple[str, str]:
    """How multi-turn chat learns only the assistant's turns: 'assistant_masks' where the chat template marks
    them ({% generation %}), else 'per_turn': one example per assistant turn with the turns before it as the prompt."""
    if chat_template and _GENERATION_MARK.search(chat_template):
        if weighted:
            return "per_turn", ("some assistant turns have weight 0, which the template's assistant masks cannot skip: "
                                "one example per trained assistant turn, the turns before it as the prompt")
        return "assistant_masks", "the chat template marks assistant turns ({% generation %}): the loss is on them only"
    return "per_turn", ("the chat template does not mark assistant turns ({% generation %}), so each trained assistant "
                        "turn becomes its own example with the turns before it as the prompt (loss on that turn only)")


def row_shape(template: str, sample: Sample) -> str:
    """How a sample written in a template looks to the trainer: the shape every row of one run must share."""
    if sample.kind == "text":
        return "documents (a corpus)"
    return "chat turns" if template == "chat" else "text prompts"


def shape_refusal(shapes: dict[str, str]) -> str:
    """Sources whose rows are written in different shapes (a corpus, chat turns, text prompts), which one trainer
    dataset cannot hold together."""
    held = "; ".join(f"{field} as {shape}" for shape, field in shapes.items())
    return (f"the sources' rows are written in different shapes ({held}): one run trains one shape; set the same "
            "data.template on every source (chat writes instruction rows in the model's chat template)")


def instruction_prompt(instruction: str, input_text: str | None) -> str:
    prompt = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        prompt += f"### Input:\n{input_text}\n\n"
    return prompt + "### Response:\n"


def _joined(prompt: Instruction) -> str:
    return prompt.instruction if not prompt.input else f"{prompt.instruction}\n\n{prompt.input}"


def _message(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn as the chat template reads it (without the row's weight)."""
    return {k: turn[k] for k in ("role", "content", "tool_calls", "tool_call_id") if k in turn}


def _function(path: str | None) -> Any:
    if path is None:
        return None
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Example:
    """One row for evaluation: the prompt (text or chat turns), the gold response, and an answer not to give
    (DPO's rejected one; KTO's undesirable answer, whose row has no gold response)."""

    prompt: Any
    response: str
    rejected: str | None = None
    where: str = ""
    tools: list[dict[str, Any]] | None = None  # the functions the prompt offers (tool-calling rows)
    calls: list[dict[str, Any]] | None = None  # the gold answer's tool calls
    fields: dict[str, Any] | None = None  # the row's columns (the rewards of objective grpo read references there)


class Renderer:
    """Samples into trl rows, each in the template it resolves to (template_for).

    Multi-turn chat learns the assistant turns only: with `route` "assistant_masks" a conversation stays one
    `messages` row (trl masks by the template's {% generation %} marks); with "per_turn" each trained assistant
    turn is a prompt/completion row whose prompt is the conversation before it."""

    def __init__(self, spec: FineTuneSpec, route: str = "per_turn", *, chat_template: bool | None = None):
        self.data = spec.data
        self.objective_rows = _function(objective_of(spec).rows)  # an objective that builds its own rows (grpo)
        self.route = route
        self.chat_template = chat_template  # does the model's tokenizer have one (None: not known here)

    def template(self, sample: Sample) -> str:
        return template_for(self.data.template, sample, chat_template=self.chat_template)

    def _chat(self, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [_message(t) for t in turns]
        if self.data.system_prompt and (not out or out[0]["role"] != "system"):
            out.insert(0, {"role": "system", "content": self.data.system_prompt})
        return out

    def prompt(self, prompt: Any, template: str) -> Any:
        """A prompt (an Instruction, text or turns) written in a template: text, or chat turns."""
        if template == "chat":
            if isinstance(prompt, list):
                return self._chat(prompt)
            return self._chat([{"role": "user", "content": _joined(prompt) if isinstance(prompt, Instruction) else prompt}])
        if isinstance(prompt, list):  # one user turn: template_for refused anything longer
            prompt = Instruction(prompt[-1]["content"]) if template == "instruction" else prompt[-1]["content"]
        if template == "instruction":
            inst = prompt if isinstance(prompt, Instruction) else Instruction(prompt)
            return instruction_prompt(inst.instruction, inst.input)
        return _joined(prompt) if isinstance(prompt, Instruction) else prompt

    def example(self, sample: Sample) -> Example:
        example = self._example(sample)
        example.fields = sample.fields
        return example

    def _example(self, sample: Sample) -> Example:
        template = self.template(sample)
        if sample.kind == "text":
            return Example("", sample.text or "", where=sample.where)
        if sample.kind == "conversation":
            # the first tool call when the row makes any (does the model call the right function?), else the last answer
            calls = [i for i, t in enumerate(sample.turns) if t.get("tool_calls")]
            last = calls[0] if calls else max(i for i, t in enumerate(sample.turns) if t["role"] == "assistant")
            return Example(self.prompt(sample.turns[:last], template), sample.turns[last]["content"], where=sample.where,
                           tools=sample.tools, calls=sample.turns[last].get("tool_calls"))
        if sample.kind == "preference":
            return Example(self.prompt(sample.prompt, template), sample.chosen or "", sample.rejected, where=sample.where)
        if sample.kind == "feedback" and not sample.label:
            return Example(self.prompt(sample.prompt, template), "", sample.completion, where=sample.where)
        return Example(self.prompt(sample.prompt, template), sample.completion or "", where=sample.where)

    def trainer_rows(self, sample: Sample) -> list[dict[str, Any]]:
        if self.objective_rows is not None:
            return self.objective_rows(self, sample)
        template = self.template(sample)
        if sample.kind == "text":
            return [{"text": sample.text}]
        wrap = (lambda text: [{"role": "assistant", "content": text}]) if template == "chat" else (lambda text: text)
        if sample.kind == "conversation" and template == "chat":
            # trl reads `tools` (as JSON text: the rows' functions differ, one arrow column cannot type them all)
            tools = {"tools": json.dumps(sample.tools, ensure_ascii=False) if sample.tools else None}
            if self.route == "assistant_masks":
                return [{"messages": self._chat(sample.turns), **tools}]
            return [{"prompt": self._chat(sample.turns[:i]), "completion": [_message(t)], **tools}
                    for i, t in enumerate(sample.turns) if trained_turn(t)]
        if sample.kind == "feedback":  # trl's unpaired KTO row
            return [{"prompt": self.prompt(sample.prompt, template), "completion": wrap(sample.completion or ""),
                     "label": bool(sample.label)}]
        ex = self.example(sample)
        if ex.rejected is not None:
            return [{"prompt": ex.prompt, "chosen": wrap(ex.response), "rejected": wrap(ex.rejected)}]
        return [{"prompt": ex.prompt, "completion": wrap(ex.response)}]


class Renderers:
    """One Renderer per source of the spec (each writes its rows in its own template), picked by a sample's part."""

    def __init__(self, spec: FineTuneSpec, route: str = "per_turn", *, chat_template: bool | None = None):
        self.each = [Renderer(part_spec(spec, p), route, chat_template=chat_template) for p in spec.data.parts()]

    def template(self, sample: Sample) -> str:
        return self.each[sample.part].template(sample)

    def example(self, sample: Sample) -> Example:
        return self.each[sample.part].example(sample)

    def trainer_rows(self, sample: Sample) -> list[dict[str, Any]]:
        return self.each[sample.part].trainer_rows(sample)

    def shapes(self, samples: list[Sample]) -> dict[str, str]:
        """The shape of each source's rows (row_shape) → the first source written in it."""
        out: dict[str, str] = {}
        for s in samples:
            out.setdefault(row_shape(self.template(s), s), f"data.sources[{s.part}]")
        return out


def row_text(row: dict[str, Any], render_chat: Any, eos: str) -> str:
    """The whole sequence a trainer row becomes (for counting its tokens): the prompt and the response; for
    preference pairs, the prompt with the longer response. `render_chat(turns, tools)` applies the chat template."""
    if "text" in row:
        return row["text"] + eos
    tools = json.loads(row["tools"]) if row.get("tools") else None
    if "messages" in row:
        return render_chat(row["messages"], tools)
    responses = [row["completion"]] if "completion" in row else [row["chosen"], row["rejected"]] if "chosen" in row \
        else [[] if isinstance(row["prompt"], list) else ""]  # a prompt alone: the objective samples the answer
    if isinstance(row["prompt"], list):
        return max((render_chat(row["prompt"] + r, tools) for r in responses), key=len)
    return row["prompt"] + max(responses, key=len) + eos


def user_prompt(spec: FineTuneSpec, template: str | None, text: str, *, instruction: str | None = None) -> Any:
    """A user's text written the way the run's training prompts were (the summary's `template`): the
    '### Instruction' text (the text as the input under the run's shared `instruction`, for classifiers), chat
    turns for the chat template (with data.system_prompt), or the text as is."""
    return Renderer(spec).prompt(Instruction(instruction, text) if instruction else text, template or "instruction")
