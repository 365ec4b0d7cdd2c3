"""An export is checked in the runtime that will load it: llama.cpp (through llama-cpp-python) answers the run's
held-out rows greedily, and its task metric (label accuracy where the run names labels, else exact match) stands
next to transformers' on the model as it trained (base + adapter, 4-bit base for QLoRA). Greedy text from quantized
weights agrees with transformers only on the first tokens (notes/export.md), so the metric judges, and the share
of rows whose first answer token agrees is reported beside it."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Reference:
    """What the model as trained answers: the rows asked, their prompts as text, and transformers' answers."""

    examples: list[Any]
    prompts: list[str]
    answers: list[str]
    metric: str  # label_accuracy | exact_match
    value: float
    tokenizer: Any = field(repr=False)


def metric_of(examples: list[Any], answers: list[str], labels: list[str] | None) -> tuple[str, float]:
    from launch.evaluate import scored

    result = scored(examples, answers, labels=labels, metrics=not labels)
    if result.label is not None:
        return "label_accuracy", result.label.accuracy
    means = result.metrics.means if result.metrics is not None else {}
    return "exact_match", float(means.get("exact_match", 0.0))


def enough_rows(count: int, tolerance: float) -> str | None:
    """Why `count` rows cannot check an export to `tolerance` points (one row is 100/count of them), or None."""
    if tolerance <= 0 or count >= math.ceil(100 / tolerance):
        return None
    return (f"the check has {count} held-out rows: one row is {100 / count:.1f} points, more than --tolerance "
            f"{tolerance:g}; give --rows {math.ceil(100 / tolerance)} or more (eval.num_samples, more eval data) or "
            f"--tolerance {100 / count:.1f}")


def reference(run: Any, spec: Any, loader: Any, tokenizer: Any, *, rows: int | None, tolerance: float) -> Reference:
    """transformers' answers on the held-out rows (the eval source, else the hold-out of the training data), on the
    base as `loader` loads it; refused before any model loads when the rows are too few to measure the tolerance."""
    import tempfile

    from launch.data import prepare
    from launch.evaluate import answer_all, answer_tokens, prompt_text
    from sdk.core.errors import FinetuneError

    examples = [e for e in prepare(spec, tokenizer).eval_examples if e.prompt][: rows or spec.eval.num_samples]
    if not examples:
        raise FinetuneError(f"{run.uri}: no held-out rows with a prompt to check the export on (a text corpus has "
                            "none): give the run an eval_source with prompts")
    short = enough_rows(len(examples), tolerance)
    if short:
        raise FinetuneError(short)
    with tempfile.TemporaryDirectory(prefix="finetune-export-ref-") as tmp:
        model = loader.builder.reload(loader.load(), run.fetch_adapter(Path(tmp) / "adapter"))
        answers = answer_all(model, tokenizer, examples, max_new_tokens=answer_tokens(spec))
    name, value = metric_of(examples, answers, spec.eval.labels)
    prompts = [prompt_text(tokenizer, e.prompt, e.tools) for e in examples]
    return Reference(examples, prompts, answers, name, value, tokenizer)


def first_token_agreement(ref: Reference, answers: list[str]) -> float:
    def first(text: str) -> int | None:
        ids = ref.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if ids else None

    same = sum(first(a) == first(b) for a, b in zip(ref.answers, answers, strict=True))
    return same / len(answers) if answers else 0.0


def llama_answers(model_path: Path, prompts: list[str], *, max_new_tokens: int, lora: Path | None = None,
                  n_ctx: int = 2048) -> tuple[list[str], float]:
    """Greedy answers from llama.cpp; the prompt tokenized as transformers did (special tokens parsed, no BOS added).
    Returns the answers and the load time in seconds."""
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=str(model_path), lora_path=str(lora) if lora else None, n_ctx=n_ctx, verbose=False,
                n_threads=os.cpu_count() or 1, seed=0)
    load_s = time.perf_counter() - start
    answers = []
    try:
        for prompt in prompts:
            tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            out = llm.create_completion(tokens, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
            answers.append(out["choices"][0]["text"])
    finally:
        llm.close()
    return answers, load_s


def check_file(ref: Reference, spec: Any, model_path: Path, *, tolerance: float,
               lora: Path | None = None) -> dict[str, Any]:
    """One GGUF (or a base GGUF with a LoRA GGUF) against transformers: the metric, the difference in points,
    first-token agreement, load time and whether it passes."""
    from launch.evaluate import answer_tokens

    n_ctx = max(512, spec.data.max_length + answer_tokens(spec) + 16)
    answers, load_s = llama_answers(model_path, ref.prompts, max_new_tokens=answer_tokens(spec), lora=lora, n_ctx=n_ctx)
    _, value = metric_of(ref.examples, answers, spec.eval.labels)
    points = 100 * (value - ref.value)
    return {"metric": ref.metric, "llama_cpp": round(value, 4), "transformers": round(ref.value, 4),
            "difference_points": round(points, 2),
            "first_token_agreement": round(first_token_agreement(ref, answers), 4),
            "rows": len(answers), "load_s": round(load_s, 3), "passed": abs(points) <= tolerance + 1e-9,
            "examples": [{"prompt": p[-200:], "transformers": a, "llama_cpp": b}
                         for p, a, b in list(zip(ref.prompts, ref.answers, answers, strict=True))[:3]]}
