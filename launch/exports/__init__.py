"""Node side of `finetune export`: one module per format (`build(context)` writes its files into context.out and
records its check in context.report), run by `python -m launch.exports`, which commits what passed to the run
folder under exports/<format>/ (sha256 manifest last). The formats are registered in sdk.core.exports."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass
class ExportContext:
    run: Any  # sdk.store.runfolder.RunFolder
    spec: Any  # sdk.core.spec.FineTuneSpec
    options: Any  # sdk.core.exports.ExportOptions
    out: Path  # what is committed: the export's files and its report
    work: Path  # scratch beside it: the merged model, intermediate GGUFs
    report: dict[str, Any] = field(default_factory=dict)
    force: bool = False  # --force: replace what an earlier export left (the run folder's, a Hub repo's files)

    def say(self, line: str) -> None:
        print(f"[finetune export] {line}", file=sys.stderr, flush=True)

    @cached_property
    def loader(self) -> Any:
        from launch.hardware import capability
        from launch.models import BaseLoader
        from sdk.core.precision import resolve_precision

        return BaseLoader.for_spec(self.spec, resolve_precision(self.spec.train.precision, capability=capability()))

    @cached_property
    def summary(self) -> Any:
        """The run's summary.json (sdk.core.summary.RunSummary), read once."""
        return self.run.summary()

    @cached_property
    def template(self) -> str:
        """How the run wrote its prompts in training (instruction | chat | plain), as its summary recorded it."""
        summary = self.summary
        if summary is not None and summary.template:
            return summary.template
        return "chat" if getattr(self.tokenizer, "chat_template", None) else "instruction"

    @cached_property
    def chat_template(self) -> str:
        """The run's training format as a chat template: what the GGUF and the Modelfile carry."""
        from sdk.data.chat_format import run_chat_template

        data, summary = self.spec.data, self.summary
        instruction = summary.instruction if summary is not None and summary.instruction else data.instruction
        tokenizer_template = self.tokenizer.chat_template
        if summary is not None and summary.tool_calling:  # tool rows were rendered with the run folder's template
            tokenizer_template = self.run.read_text("chat_template.jinja") or tokenizer_template
        return run_chat_template(template=self.template, tokenizer_template=tokenizer_template,
                                 instruction=instruction, system_prompt=data.system_prompt)

    @cached_property
    def tokenizer(self) -> Any:
        return self.loader.tokenizer()

    def merged_folder(self) -> Path:
        """The adapter merged into its dequantized 16-bit base (launch.tools.merge: checked against the adapter)."""
        from launch.tools.merge import merge

        folder = self.work / "merged"
        if not (folder / "config.json").is_file():
            self.say("merging the adapter into its base")
            self.report["merge"] = {k: v for k, v in merge(self.run.uri, folder).items() if k != "out"}
        return folder

    def base_folder(self) -> Path:
        """The base as the adapter trained on it, in 16 bits or more (a 4-bit base dequantized), as a model folder."""
        from sdk.core.methods import method_of

        folder = self.work / "base"
        if not (folder / "config.json").is_file():
            self.say("writing the base model the adapter applies to")
            model = self.loader.load()
            if method_of(self.spec).quantized_base:
                model = model.dequantize()
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
        return folder

    @cached_property
    def reference(self) -> Any:
        """transformers' answers to the held-out rows, which every exported file is held against."""
        from launch.exports.check import reference

        self.say("answering the held-out rows with transformers (the model as trained)")
        return reference(self.run, self.spec, self.loader, self.tokenizer, rows=self.options.rows,
                         tolerance=self.options.tolerance)
