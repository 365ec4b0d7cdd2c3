"""Configs of other fine-tuning tools → recipes: a pure mapping (no torch). One registration per source tool: how
its config is recognized and the module that converts it. `import_config` detects the tool, converts, writes the
header notes (every key that changed meaning, was dropped, or whose default differs) and validates the recipe with
parse_spec; a config asking for what the product cannot train is refused with one line per missing capability."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.errors import SpecError
from sdk.importers.draft import Draft, ImportRefused

__all__ = ["IMPORTERS", "ImportRefused", "ImportResult", "Importer", "import_config", "register"]


@dataclass(frozen=True)
class Importer:
    name: str  # shown in notes and errors: "Axolotl"
    detect: Callable[[dict[str, Any]], bool]  # does this config belong to the tool?
    convert: Callable[[Draft], None]


IMPORTERS: dict[str, Importer] = {}


def register(importer: Importer) -> Importer:
    IMPORTERS[importer.name] = importer
    return importer


def _axolotl(draft: Draft) -> None:
    from sdk.importers.axolotl import convert

    convert(draft)


def _llamafactory(draft: Draft) -> None:
    from sdk.importers.llamafactory import convert

    convert(draft)


def _llamafactory_v1(draft: Draft) -> None:
    draft.lack("model / train_dataset: a LLaMA-Factory v1 config (its data described in a YAML of its own, "
               "peft_config, dist_config) is not read; write it in LLaMA-Factory's v0 form (model_name_or_path, stage, "
               "finetuning_type, dataset) and import that")


register(Importer("Axolotl", lambda c: "base_model" in c and any(k in c for k in ("datasets", "pretraining_dataset",
                                                                                 "adapter", "rl")),
                  _axolotl))
register(Importer("LLaMA-Factory v1", lambda c: "model" in c and "train_dataset" in c, _llamafactory_v1))
register(Importer("LLaMA-Factory", lambda c: "model_name_or_path" in c and ("stage" in c or "finetuning_type" in c),
                  _llamafactory))


@dataclass
class ImportResult:
    """The recipe (validated), where it came from, and the notes its header lists."""

    tool: str
    source: str
    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The recipe as YAML, its header comments first."""
        import yaml

        head = [f"# Imported by `finetune import` from the {self.tool} config {self.source}.",
                "# Keys that changed meaning, were dropped, or whose defaults differ (written out below):"]
        for note in self.notes:
            head += textwrap.wrap(note, 116, initial_indent="# - ", subsequent_indent="#   ")
        body = yaml.safe_dump(self.recipe, sort_keys=False, allow_unicode=True, width=116)
        return "\n".join(head) + "\n" + body


def import_config(path: str | Path, *, data_dir: str | Path | None = None,
                  accelerate_config: str | Path | None = None) -> ImportResult:
    """Read an Axolotl or LLaMA-Factory config into a validated recipe; ImportRefused (exit 2) lists what the
    product lacks, SpecError says why the file cannot be read. `accelerate_config`: the file the tool is launched
    with (`accelerate launch --config_file`), where LLaMA-Factory keeps FSDP."""
    from sdk.core.recipes import read_yaml_mapping
    from sdk.core.spec import parse_spec

    file = Path(path).expanduser()
    config = read_yaml_mapping(str(path), what="a config")
    importer = next((i for i in IMPORTERS.values() if i.detect(config)), None)
    if importer is None:
        raise SpecError(f"{path}: not a config of {' or '.join(IMPORTERS)} (Axolotl's names base_model and datasets, "
                        "LLaMA-Factory's model_name_or_path and stage)")
    accelerate = Path(accelerate_config).expanduser() if accelerate_config else None
    if accelerate is not None and not accelerate.is_file():
        raise SpecError(f"--accelerate-config {accelerate_config}: no such file")
    draft = Draft(file, config, Path(data_dir).expanduser() if data_dir else None, accelerate)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", file.stem).strip("-._")[:63] or "imported"
    draft.recipe.update(name=name, description=f"Imported from the {importer.name} config {file.name}.")
    importer.convert(draft)
    if draft.missing:
        raise ImportRefused(str(path), draft.missing)
    try:
        parse_spec(draft.recipe)
    except SpecError as exc:
        if not _batch_from_accumulation(draft, exc.problems):
            raise _refused(path, exc) from None
        try:
            parse_spec(draft.recipe)
        except SpecError as again:
            raise _refused(path, again) from None
    return ImportResult(importer.name, file.name, draft.recipe, draft.notes)


def _refused(path: str | Path, exc: SpecError) -> ImportRefused:
    return ImportRefused(str(path), [f"the recipe it maps to is refused: {p.strip()}" for p in exc.problems])


def _batch_from_accumulation(draft: Draft, problems: list[str]) -> bool:
    """A micro-batch the objective refuses (one that needs other rows in it) grows by what gradient accumulation held,
    the effective batch unchanged; False when there is none to take."""
    refusal = next((p.strip() for p in problems if p.strip().startswith("train.batch_size")), None)
    train = draft.recipe.get("train", {})
    batch, accum = int(train.get("batch_size", 1)), int(train.get("grad_accum", 1))
    if refusal is None or len(problems) > 1 or accum < 2 or accum % 2:
        return False
    train.update(batch_size=batch * 2, grad_accum=accum // 2)
    draft.note(f"train.batch_size: {batch * 2}, grad_accum: {accum // 2} (from {batch} × {accum}: the same effective "
               f"batch), because {refusal}")
    return True
