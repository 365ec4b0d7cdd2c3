"""The one table from the source tools' dataset descriptions to the product's row formats (sdk.data.formats):
Axolotl's dataset `type` names, LLaMA-Factory's `formatting` + `columns` (+ `ranking`, `kto_tag`) of a
dataset_info.json entry. A row kind (examples, preference, feedback: what the objective trains on) picks the
entry, since Axolotl reads one type name differently under `rl: kto`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RowMapping:
    format: str  # a name of sdk.objectives.base.ROW_FORMATS
    fields: dict[str, str] = field(default_factory=dict)  # data.fields: product role -> the tool's column
    note: str = ""


# Axolotl: (row kind, strategy) -> format. A type is `strategy` or `<prompt template>.<strategy>` (llama3.argilla,
# chatml.intel): the prompt template is the tool's own, the product renders with the model's chat template.
AXOLOTL_TYPES: dict[tuple[str, str], RowMapping] = {
    ("examples", "alpaca"): RowMapping("alpaca"),
    ("examples", "alpaca_chat"): RowMapping("alpaca"),
    ("examples", "gpteacher"): RowMapping("alpaca", {"output": "response"}),
    ("examples", "completion"): RowMapping("text"),
    ("examples", "pretrain"): RowMapping("text"),
    ("examples", "sharegpt"): RowMapping("sharegpt"),
    ("examples", "chat_template"): RowMapping("messages"),
    ("preference", "default"): RowMapping("preference", {"conversations": "messages"}),
    ("preference", "chat_template"): RowMapping("preference", {"conversations": "messages"}),
    ("preference", "argilla"): RowMapping("preference", {"instruction": "instruction", "chosen": "chosen_response",
                                                         "rejected": "rejected_response"}),
    ("preference", "argilla_chat"): RowMapping("preference"),
    ("preference", "intel"): RowMapping("preference", {"prompt": "question"}),
    ("preference", "ultra"): RowMapping("preference"),
    ("preference", "prompt_pairs"): RowMapping("preference"),
    ("feedback", "ultra"): RowMapping("feedback"),
    ("feedback", "argilla"): RowMapping("feedback", {"prompt": "instruction"}),
    ("feedback", "argilla_chat"): RowMapping("feedback", {"messages": "completion"}),
}
AXOLOTL_TEMPLATES = ("chat_template", "chatml", "llama3", "zephyr", "phi3", "mistral", "gemma")

# LLaMA-Factory: (row kind, formatting) -> format and its column roles (LLaMA-Factory's column names -> product's).
LLAMAFACTORY_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "chosen": "chosen",
               "rejected": "rejected", "kto_tag": "label", "tools": "tools"},
    "sharegpt": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "kto_tag": "label",
                 "tools": "tools"},
}
LLAMAFACTORY_FORMATS: dict[tuple[str, str], str] = {
    ("examples", "alpaca"): "alpaca",
    ("examples", "sharegpt"): "sharegpt",
    ("preference", "alpaca"): "preference",
    ("preference", "sharegpt"): "preference",
    ("feedback", "alpaca"): "feedback",
    ("feedback", "sharegpt"): "feedback",
}
LLAMAFACTORY_DEFAULT_COLUMNS = {"alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
                                "sharegpt": {"messages": "conversations"}}
MEDIA_COLUMNS = ("images", "videos", "audios")


def axolotl_rows(kind: str, type_name: str) -> RowMapping | None:
    """The format of an Axolotl dataset `type` under an objective training on `kind` rows; None: not in the table."""
    found = AXOLOTL_TYPES.get((kind, type_name.partition(":")[0]))  # alpaca:chat, alpaca:phi: the prompt style only
    if found is None and "." in type_name:
        template, _, strategy = type_name.partition(".")
        if template in AXOLOTL_TEMPLATES:
            found = AXOLOTL_TYPES.get((kind, strategy))
    return found


def axolotl_custom(type_name: str) -> bool:
    """A dotted type whose first part is no prompt template names a Python module of the user's own."""
    return "." in type_name and type_name.partition(".")[0] not in AXOLOTL_TEMPLATES


def llamafactory_rows(kind: str, entry: dict) -> RowMapping | None:
    """The format of a dataset_info.json entry when the stage trains on `kind` rows; fields from its columns."""
    formatting = entry.get("formatting", "alpaca")
    name = LLAMAFACTORY_FORMATS.get((kind, formatting))
    if name is None:
        return None
    columns = {**LLAMAFACTORY_DEFAULT_COLUMNS.get(formatting, {}), **(entry.get("columns") or {})}
    roles = LLAMAFACTORY_COLUMNS[formatting]
    fields = {roles[k]: v for k, v in columns.items() if k in roles and roles[k] != v}
    if kind == "feedback" and formatting == "alpaca":  # KTO rows: prompt / completion / label
        fields = {"prompt": columns.get("prompt", "instruction"), "completion": columns.get("response", "output"),
                  **({"label": columns["kto_tag"]} if columns.get("kto_tag", "label") != "label" else {})}
    return RowMapping(name, fields)
