"""Counting the tokens of training rows on the client, with the model's own tokenizer but without
transformers (which imports torch): `tokenizers` reads tokenizer.json and jinja2 renders the chat template
the way transformers does (trim_blocks, lstrip_blocks, a sandbox). Where the tokenizer is not on this
machine (a Hub id offline, a GGUF not yet converted, a tiny model not yet built) the node counts instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sdk.core.spec import FineTuneSpec
from sdk.data.formats import Sample
from sdk.data.rows import DataError

_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def tokenizer_dir(spec: FineTuneSpec) -> Path | None:
    """A directory holding tokenizer.json for the spec's model, without downloading weights."""
    from sdk.core.modelref import ModelSource, gguf_cache, names_a_file, resolve_reference, tiny_arch, tiny_dir

    model = spec.model.id
    try:
        if tiny_arch(model):
            folder = tiny_dir(tiny_arch(model))
        elif names_a_file(spec.model):
            source = resolve_reference(spec.model)
            folder = gguf_cache(ModelSource(source.path, source.gguf_file)) if source.gguf_file else Path(source.path)
        elif Path(model).expanduser().is_dir():
            folder = Path(model).expanduser()
        else:
            from huggingface_hub import hf_hub_download

            for name in ("tokenizer_config.json", "tokenizer.json"):
                path = Path(hf_hub_download(model, name, revision=spec.model.revision))
            folder = path.parent
    except Exception:  # offline, gated, missing: the node counts
        return None
    return folder if (folder / "tokenizer.json").is_file() else None


class ClientTokenizer:
    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        jinja = folder / "chat_template.jinja"
        template = jinja.read_text() if jinja.is_file() else self.config.get("chat_template")
        self.chat_template = template if isinstance(template, str) else None
        self._compiled: dict[str, Any] = {}

    @classmethod
    def for_spec(cls, spec: FineTuneSpec) -> ClientTokenizer | None:
        folder = tokenizer_dir(spec)
        return cls(folder) if folder is not None else None

    @staticmethod
    def _token(value: Any) -> str:
        return value.get("content", "") if isinstance(value, dict) else (value or "")

    @property
    def eos(self) -> str:
        return self._token(self.config.get("eos_token"))

    def render_chat(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The turns in the chat template, as transformers renders them (tool rows: in the template
        sdk.data.tools.tool_template picks, as the node does)."""
        if self.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        source = self.chat_template
        if tools:
            from sdk.data.tools import tool_template

            source = tool_template(source, None).source  # the source only: the family picks the served parser
        if source not in self._compiled:
            import json

            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise ValueError(message)

            def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = raise_exception
            env.filters["tojson"] = tojson  # transformers' own: no HTML escaping
            self._compiled[source] = env.from_string(_GENERATION_TAGS.sub("", source))
        return self._compiled[source].render(messages=turns, tools=tools, add_generation_prompt=False,
                                             bos_token=self._token(self.config.get("bos_token")), eos_token=self.eos)

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


class LengthCount:
    """How many rows are longer than max_length tokens (they would be truncated), counted in batches with
    the model's tokenizer; the texts are rendered exactly as the node renders them."""

    BATCH = 512

    def __init__(self, max_length: int, tokenizer: Any, renderer: Any):
        self.max_length, self.tokenizer, self.renderer = max_length, tokenizer, renderer
        self.reset()

    def reset(self) -> None:
        self.pending: list[str] = []
        self.rows = self.long = self.longest = 0
        self.failed: str | None = None

    def add(self, sample: Sample) -> None:
        from sdk.data.rendering import row_text

        if self.tokenizer is None or self.failed:
            return
        try:
            self.pending += [row_text(r, self.tokenizer.render_chat, self.tokenizer.eos) for r in self.renderer.trainer_rows(sample)]
        except Exception as exc:  # a chat template that refuses the turns: the node will say so too
            if sample.tools:  # a tool row the template cannot write cannot train: refused before launch
                raise DataError(f"{sample.where}: the model's chat template cannot render this row: {exc}") from None
            self.failed = f"{sample.where}: the chat template cannot render this row ({exc})"
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        counts = self.tokenizer.count(self.pending) if self.pending else []
        self.rows += len(counts)
        self.long += sum(1 for c in counts if c > self.max_length)
        self.longest = max([self.longest, *counts])
        self.pending = []

    def report(self) -> str:
        if self.tokenizer is None:
            return "token lengths: the model's tokenizer is not on this machine; the node counts rows over max_length"
        if self.failed:
            return f"token lengths not counted: {self.failed}"
        self._flush()
        if self.long:
            return (f"{self.long} of {self.rows} rows are longer than max_length {self.max_length} tokens "
                    f"(longest {self.longest}) and will be truncated")
        return f"every row fits in max_length {self.max_length} tokens (longest {self.longest})"
