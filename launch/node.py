"""The node recipe, flat: load → evaluate base → attach method → train → evaluate → save → commit.

Every run, local or cloud, executes this same code. All artifacts go through the store; the adapter
is built in a scratch directory and committed with its manifest last.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.runfolder import ADAPTER, SUMMARY, RunFolder
from sdk.spec import FineTuneSpec
from sdk.store import commit_dir


class Cancelled(Exception):
    pass


@dataclass
class Outcome:
    """What a run leaves in memory: the trained model (for tests and merge) and its summary."""

    model: Any
    tokenizer: Any
    summary: dict[str, Any]


def _quiet_libraries() -> None:
    import logging
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*kernels.*")
    # DeepSpeed calls torch.distributed APIs that torch 2.13 deprecates, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    # bitsandbytes warns at import, on AVX512-BF16 CPUs, that an optional Hub kernel is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        # 4-bit weights are packed two per byte; count the logical parameters.
        if type(param).__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def run(spec: FineTuneSpec, folder: RunFolder, sink: Any, *, workdir: Path | None = None) -> Outcome:
    """Train per the spec and commit the artifact; the summary is also written to the store."""
    _quiet_libraries()
    import torch

    from launch import data as data_mod
    from launch import ranks
    from launch.checkpoints import commit_checkpoint, prepare_resume
    from launch.evaluate import label_accuracy, side_by_side
    from launch.methods import get_method
    from launch.models import load_model, load_tokenizer, local_source
    from launch.train import build_trainer, compute_dtype, full_parameters, peak_memory, resolve_precision, weight_dtype

    timings: dict[str, float] = {}
    started = time.time()
    # The ranks of one node share a scratch folder (the launcher sets it), so a checkpoint is one folder.
    workdir = Path(workdir or os.environ.get("FINETUNE_WORKDIR") or tempfile.mkdtemp(prefix=f"finetune-{folder.run_id}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    method = get_method(spec.method.name)
    precision = resolve_precision(spec)
    torch.manual_seed(spec.train.seed)

    def check_cancel() -> None:
        if sink.cancel_requested:
            raise Cancelled()

    # -- load
    sink.set_state("running", phase="loading model")
    source = local_source(spec.model)
    # Join the process group only now: under an initialized group transformers' save_pretrained writes
    # on rank 0 alone, and a cache that another rank builds above (tiny model, GGUF) would stay empty.
    ranks.init()
    tokenizer = load_tokenizer(spec.model, source)
    quant = method.quantization_config(spec, compute_dtype(spec, precision))
    model = load_model(spec.model, dtype=weight_dtype(spec, precision), quantization_config=quant, source=source)
    if torch.cuda.is_available() and quant is None:
        model = model.cuda()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    prepared = data_mod.prepare(spec)
    timings["load_s"] = time.time() - started
    check_cancel()

    # -- base model, before any method is attached ("adapter disabled")
    labels = spec.eval.labels
    eval_examples = prepared.eval_examples[: spec.eval.num_samples]
    before = None
    if labels and eval_examples and spec.eval.before:
        sink.set_state("running", phase="evaluating base model")
        t0 = time.time()
        before = label_accuracy(model, tokenizer, eval_examples, labels, max_new_tokens=spec.eval.max_new_tokens)
        timings["eval_before_s"] = time.time() - t0
    check_cancel()

    # -- attach and train
    model = method.attach(model, spec, tokenizer, source.path)
    trainable, total = count_parameters(model)
    sink.set_state("running", phase="training", trainable_params=trainable)

    def on_checkpoint(local_dir: Path, step: int) -> None:
        sink.flush()  # the metrics up to this step are stored before the checkpoint that resumes after them
        commit_checkpoint(folder, local_dir, step, keep=spec.train.keep_checkpoints)

    trainer = build_trainer(
        spec, model, tokenizer, prepared.train, prepared.eval, workdir=workdir, sink=sink, on_checkpoint=on_checkpoint
    )
    resume = prepare_resume(folder, Path(trainer.args.output_dir))
    if resume is not None:
        step, _ = resume
        sink.resume_from(step)
        if ranks.is_main():
            print(f"[finetune] resuming from committed checkpoint {step}", flush=True)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
    timings["train_s"] = time.time() - t0
    check_cancel()
    model = trainer.model
    eval_loss = None
    if prepared.eval:
        sink.set_state("running", phase="evaluating")
        eval_loss = trainer.evaluate().get("eval_loss")
    after = None
    if labels and eval_examples and spec.eval.after:
        t0 = time.time()
        after = label_accuracy(model, tokenizer, eval_examples, labels, max_new_tokens=spec.eval.max_new_tokens)
        timings["eval_after_s"] = time.time() - t0
    check_cancel()

    # -- save and commit: built in scratch, then committed to the store with the manifest last (rank 0)
    sink.set_state("running", phase="saving")
    artifact = workdir / "artifact"
    with full_parameters(model):  # a collective under ZeRO-3: every rank takes part, rank 0 saves
        if ranks.is_main():
            method.save(model, tokenizer, artifact)
    manifest = commit_dir(folder.store, artifact, folder.key(ADAPTER)) if ranks.is_main() else {"files": {}}
    peak, peak_kind = peak_memory()
    rows = sink.rows
    losses = [r["loss"] for r in rows if "loss" in r]
    summary: dict[str, Any] = {
        "run_id": folder.run_id,
        "model": spec.model.id,
        "method": spec.method.name,
        "objective": spec.objective,
        "precision": precision,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total if total else 0.0,
        "resident_memory_bytes": int(model.get_memory_footprint()),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_loss": eval_loss,
        "train_rows": len(prepared.train),
        "eval_rows": len(prepared.eval),
        "label_accuracy": {
            "before": before.as_dict() if before else None,
            "after": after.as_dict() if after else None,
        },
        "generations": side_by_side(eval_examples, before.outputs, after.outputs, spec.eval.generations)
        if before and after
        else [],
        "adapter_bytes": sum(f["size"] for f in manifest["files"].values()),
        "runtime_s": {**timings, "total_s": time.time() - started},
        "resumed_from_step": resume[0] if resume else None,
        "world_size": ranks.world_size(),
        "strategy": spec.distributed.strategy if ranks.world_size() > 1 else "single",
        "versions": _versions(),
    }
    if ranks.is_main():
        folder.write_json(SUMMARY, summary)
    ranks.barrier()
    if ranks.local_rank() == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(model, tokenizer, summary)
