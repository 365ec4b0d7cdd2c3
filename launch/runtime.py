"""The node process's surroundings: third-party logging kept quiet, the library versions for the summary,
parameter counts."""

from __future__ import annotations

import os
import platform
from typing import Any


def quiet_libraries() -> None:
    """Progress bars and per-step deprecation noise off; real warnings (e.g. an attention fallback) stay."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*kernels.*")
    # DeepSpeed calls torch.distributed APIs that torch 2.13 deprecates, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    # bitsandbytes warns at import, on AVX512-BF16 CPUs, that an optional Hub kernel is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # An 8-bit base logs, on every matmul, that LLM.int8 quantizes its fp32/bf16 inputs via fp16 (by design).
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()  # warnings stay: an attention fallback is what a user must see
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", None) or param.numel()  # a ZeRO-3 partitioned parameter holds a shard
        # 4-bit weights are packed two per byte of their storage dtype (uint8, or the compute dtype where ZeRO-3
        # or FSDP shard them: four per bf16 element, eight per fp32 one); count the logical parameters.
        if type(param).__name__ == "Params4bit":
            n *= 2 * param.element_size()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "deepspeed"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
