"""Export formats: one registration per format (name → options it takes → the node module that builds it).

A format says what it refuses before any weight is read (a method it cannot carry, an option it does not take) and
names the node module (`launch.exports.<name>`) that writes its files; `launch.exports` checks them in the runtime
that will load them and commits them to the run folder under `exports/<name>/`. Adding a format is one `register`
below and one node module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from sdk.core.spec import FineTuneSpec

# llama.cpp's file types (its `llama-quantize` names). f32/f16/bf16/q8_0 the converter writes itself; the rest are
# quantized from an f16 file by llama.cpp's quantizer.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZER_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                   "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")
QUANT_TYPES = CONVERTER_TYPES + QUANTIZER_TYPES
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExportOptions(BaseModel):
    """What `finetune export` was asked for; validated here, once, for the client and the node alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str
    quants: list[str] = Field(default_factory=lambda: ["q8_0"], description="llama.cpp file types (gguf, ollama)")
    adapter_only: bool = Field(False, description="the LoRA adapter as a GGUF LoRA beside the base's GGUF")
    tolerance: float = Field(5.0, ge=0, le=100, description="points of the task metric an export may lose")
    rows: int | None = Field(None, ge=1, description="held-out rows answered by each export (default eval.num_samples)")
    repo: str | None = Field(None, description="Hub repo id, owner/name (hub)")
    token_env: str = Field("HF_TOKEN", description="environment variable holding the Hub token (hub)")
    private: bool = False
    merged: bool = Field(False, description="hub: upload the merged 16-bit model instead of the adapter")
    dry_run: bool = False

    @field_validator("quants")
    @classmethod
    def _known_quants(cls, value: list[str]) -> list[str]:
        value = [q.lower() for q in value]
        unknown = [q for q in value if q not in QUANT_TYPES]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a llama.cpp file type; use one of {', '.join(QUANT_TYPES)}")
        if not value:
            raise ValueError("name at least one file type")
        return list(dict.fromkeys(value))

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not HUB_REPO.match(value):
            raise ValueError(f"{value!r} is not a Hub repo id (owner/name)")
        return value

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


@dataclass(frozen=True)
class ExportFormat:
    name: str
    summary: str
    node_module: str  # launch.exports.<name>: build(context) writes the files and checks them
    options: tuple[str, ...]  # the ExportOptions fields this format reads (others left at their defaults)
    refusal: Callable[[FineTuneSpec, ExportOptions], str | None]  # why this run cannot go to this format, or None
    sends: bool = False  # uploads somewhere: needs the token in options.token_env unless it is a dry run
    # reads or writes model weights (a merge, a conversion): worth a node of the run's own size; else it runs here
    needs_weights: Callable[[ExportOptions], bool] = lambda options: not options.dry_run


FORMATS: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def export_name(options: ExportOptions) -> str:
    """The run folder's exports/<name>/: an adapter-only GGUF sits beside the merged one, not in its place."""
    return f"{options.format}-adapter" if options.adapter_only else options.format


def format_of(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ValueError(f"--format: {name!r} is not an export format; use one of {', '.join(FORMATS)}")
    return FORMATS[name]


# ------------------------------------------------------------------------------------------ refusals


def _merge_refusal(spec: FineTuneSpec) -> str | None:
    from sdk.core.methods import method_of

    method = method_of(spec)
    return f"method.name: {method.name} {method.merge_refusal}" if method.merge == "none" else None


def _gguf_refusal(spec: FineTuneSpec, options: ExportOptions) -> str | None:
    from sdk.core.methods import method_of

    refusal = _merge_refusal(spec)
    if refusal is None and options.adapter_only and not method_of(spec).serving(spec.method).as_lora:
        # llama.cpp applies LoRA A/B pairs only; IA3's scales, DoRA's magnitudes, a full model fold in when merged
        return (f"--adapter-only: method.name {spec.method.name} trains no LoRA matrices llama.cpp can apply to a "
                "base GGUF; export it merged (drop --adapter-only)")
    return refusal


def _hub_refusal(spec: FineTuneSpec, options: ExportOptions) -> str | None:
    if options.repo is None:
        return "--repo: name the Hub repo to upload to (owner/name)"
    return _merge_refusal(spec) if options.merged else None


def _merged_refusal(spec: FineTuneSpec, options: ExportOptions) -> str | None:
    return _merge_refusal(spec)


register(ExportFormat("gguf", "llama.cpp's GGUF: merged and quantized, or the LoRA adapter alone (--adapter-only)",
                      "launch.exports.gguf", ("quants", "adapter_only", "tolerance", "rows"), _gguf_refusal))
register(ExportFormat("ollama", "the GGUF and an Ollama Modelfile (TEMPLATE in the run's chat format, stops, SYSTEM)",
                      "launch.exports.ollama", ("quants", "adapter_only", "tolerance", "rows"), _gguf_refusal))
register(ExportFormat("merged", "the adapter merged into its dequantized 16-bit base: a standalone transformers model",
                      "launch.exports.merged", (), _merged_refusal))
register(ExportFormat("hub", "the adapter (or --merged model) with a model card, to a Hugging Face Hub repo",
                      "launch.exports.hub", ("repo", "token_env", "private", "merged", "dry_run"), _hub_refusal,
                      sends=True, needs_weights=lambda options: options.merged and not options.dry_run))
