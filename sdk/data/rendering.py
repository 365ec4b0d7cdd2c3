"""Rendering: a normalized Sample into the rows trl trains on, in the template it resolves to.

No torch here: the client renders the same rows to count tokens before launch, the node to train.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sdk.core.spec import FineTuneSpec
from sdk.data.check import template_for
from sdk.data.formats import Instruction, Sample, trained_turn
from sdk.objectives import objective_of


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
    """Samples into trl rows, each in the template it resolves to (sdk.data.check.template_for).

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
