"""The node recipe, as phases: setup → evaluate base → attach → train → save → commit → evaluate tuned → summary.

Every run, local or cloud, executes this same code; `run()` below is the whole recipe. All
artifacts go through the store; the adapter is built in a scratch folder and committed with its
manifest last.

Which rank does what (torchrun ranks; a single process is every rank at once):
  every rank     loads the base, evaluates (under ZeRO-3 a forward pass is a collective), trains,
                 gathers ZeRO-3 parameters for the save (a collective)
  global rank 0  writes status.json and metrics.jsonl (RunSink), saves and commits the adapter,
                 writes summary.json
  local rank 0   uploads its node's checkpoint files (launch.checkpoints), removes the node's scratch
  waits          one barrier after the summary, so no rank removes the shared scratch folder while
                 rank 0 still reads it; checkpoint commits and resumes synchronise on their own
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.runtime import count_parameters, quiet_libraries, versions  # noqa: F401  (tools import them from here too)
from sdk.core.spec import FineTuneSpec
from sdk.core.summary import (
    Forgetting,
    Generation,
    GenerationMetrics,
    HeldOutReward,
    JudgeScore,
    LabelAccuracy,
    LabelScore,
    MetricScores,
    RunSummary,
    Runtime,
)
from sdk.store import commit_dir
from sdk.store.runfolder import ADAPTER, CHAT_TEMPLATE, SUMMARY, RunFolder


class Cancelled(Exception):
    pass


@dataclass
class Outcome:
    """What a run leaves in memory: the trained model (for tests and merge) and its summary."""

    model: Any
    tokenizer: Any
    summary: RunSummary


@dataclass
class NodeRecipe:
    """One run on this node. Each phase is a method; state lives on the instance."""

    spec: FineTuneSpec
    folder: RunFolder
    sink: Any
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    # Set by setup(): the facts of this node and what was loaded.
    hardware: Any = None  # sdk.core.summary.Hardware
    precision: str | None = None  # bf16 | fp16 | fp32, resolved for this hardware
    builder: Any = None  # the method's builder (launch.methods), from the registration
    source: Any = None  # sdk.core.modelref.ModelSource the base was read from
    save_route: Any = None  # how the trained weights leave the ranks (launch.gpu.save_route)
    tokenizer: Any = None
    model: Any = None  # the base, then (attach) the trainable model, then (train) the trained one
    data: Any = None  # launch.data.Prepared: rows, formats, notes
    eval_examples: list[Any] = field(default_factory=list)
    # Set by the phases that follow.
    before: Any = None  # label accuracy of the base (evaluate_before)
    trainable: int = 0  # attach(): trainable and total parameters
    total: int = 0
    resident_bytes: int = 0  # attach(): the model's memory on this rank before any partitioning
    resumed_from: int | None = None  # train(): the checkpoint step it resumed from
    trainer: Any = None
    result: Any = None  # the trainer's TrainOutput
    general_loss: dict[str, float] = field(default_factory=dict)  # before / after: loss on general text (forgetting)
    base_row: dict[str, Any] | None = None  # the base's metrics row, logged when training starts
    judged: dict[str, Any] | None = None  # eval.judge's result (sdk.evaluation.judge.JudgeResult.as_dict)
    eval_loss: float | None = None
    adapter_bytes: int = 0  # save()
    after: Any = None  # label accuracy of the tuned model (evaluate_after)

    def check_cancel(self) -> None:
        if self.sink.cancel_requested:
            raise Cancelled(self.sink.stop_reason or "")

    def _timed(self, name: str, t0: float) -> None:
        self.timings[name] = time.time() - t0

    # -- phases

    def setup(self) -> None:
        """Load the tokenizer, the base model (quantized if the method says so) and the data."""
        import torch

        from launch import ranks
        from launch.gpu import attention_choice, flash_attn_installed, fsdp_load_environment, save_route
        from launch.hardware import capability, hardware
        from launch.launcher import zero3_load_config
        from launch.models import BaseLoader
        from sdk.core.errors import SpecError
        from sdk.core.methods import method_of
        from sdk.core.precision import resolve_precision

        self.sink.set_state("running", phase="loading model")
        self.hardware = hardware()
        self.precision = resolve_precision(self.spec.train.precision, capability=capability())
        try:
            self.attention, why = attention_choice(self.spec.train.attention, cuda=self.hardware.device == "cuda",
                                                   capability=self.hardware.capability,
                                                   flash_attn_installed=flash_attn_installed())
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        if ranks.is_main():
            print(f"[finetune] {self.hardware.device} ({self.hardware.name or platform.processor() or 'cpu'}), "
                  f"precision {self.precision}, attention {self.attention}: {why}", flush=True)
        torch.manual_seed(self.spec.train.seed)
        loader = BaseLoader.for_spec(self.spec, self.precision)
        self.builder = loader.builder
        self.source = loader.source
        # Join the process group only now: under an initialized group transformers' save_pretrained writes
        # on rank 0 alone, and a cache that another rank builds in loader.source (tiny model, GGUF) would stay empty.
        ranks.init(self.spec.distributed)
        try:  # decided before training: a save that cannot work must not cost the GPU hours first
            self.save_route = save_route(strategy=self.spec.distributed.strategy, world_size=ranks.world_size(),
                                         artifact=method_of(self.spec).artifact)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        self.zero3 = zero3_load_config(self.spec, self.precision)  # transformers reads it while it lives
        os.environ.update(fsdp_load_environment(self.spec.distributed.strategy, offload=self.spec.distributed.offload))
        self.tokenizer = loader.tokenizer()
        self.model = loader.load(attention=self.attention)
        if self.zero3 is not None and ranks.is_main():
            sharded = sum(1 for p in self.model.parameters() if hasattr(p, "ds_id"))
            if sharded:
                print(f"[finetune] ZeRO-3: loaded under zero.Init, {sharded} parameters partitioned over "
                      f"{ranks.world_size()} ranks", flush=True)
            else:  # transformers builds bitsandbytes layers outside zero.Init (DeepSpeed#5660)
                print(f"[finetune] ZeRO-3: the 4-bit base loads whole on each rank "
                      f"({self.model.get_memory_footprint() / 2**20:,.1f} MiB) and is partitioned over "
                      f"{ranks.world_size()} ranks when training starts", flush=True)
        if self.model.generation_config is not None and self.model.generation_config.pad_token_id is None:
            self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self._prepare_data()
        self.eval_examples = self.data.eval_examples[: self.spec.eval.num_samples]
        self._timed("load_s", self.started)
        self.check_cancel()

    def _prepare_data(self) -> None:
        from launch import data, ranks

        self.data = data.prepare(self.spec, self.tokenizer, model_type=getattr(self.model.config, "model_type", None),
                                 folder=self.folder, workdir=self.workdir)
        if not ranks.is_main():
            return
        if self.data.tools is not None:  # what serve and generate render tool requests with
            self.folder.write_text(CHAT_TEMPLATE, self.data.tools.source)
        self.folder.write_json("data.json", {"sources": self.data.sources})  # each source's rows, counts and hash
        formats = ", ".join(f"{k} {v}" for k, v in self.data.formats.items())
        print(f"[finetune] data: {formats}; {len(self.data.train)} training rows", flush=True)
        for note in self.data.notes:
            print(f"[finetune] {note}", flush=True)

    def steps_done(self) -> int:
        return int(self.result.global_step) if self.result is not None else 0

    def _evaluate(self, when: str) -> Any:
        """Greedy answers to the held-out prompts (launch.evaluate): label accuracy, generation metrics."""
        from launch import ranks
        from launch.evaluate import answer_all, answer_tokens, general_text, heldout_reward, scored, text_loss
        from launch.train import gathered_module_by_module

        ev = self.spec.eval
        answers = any(e.prompt for e in self.eval_examples) and (ev.labels or ev.metrics)  # a corpus has no prompts
        if not (getattr(ev, when) and (answers or ev.forgetting)):
            return None
        if when == "before" and self.spec.distributed.strategy == "fsdp" and ranks.world_size() > 1:
            if ranks.is_main():  # rank-0-only loading: the other ranks hold meta tensors until FSDP wraps the model
                print("[finetune] note: eval.before skipped under FSDP with several processes (only rank 0 holds the "
                      "weights before training); `finetune eval RUN` scores the base and the adapter afterwards", flush=True)
            return None
        t0 = time.time()
        # Before the DeepSpeed engine exists a zero.Init model is only shards, and gathering it whole would not
        # fit exactly where ZeRO-3 was needed: gather one module at a time. After training the engine's own
        # hooks fetch each layer's shards.
        gather = gathered_module_by_module(self.model) if when == "before" else contextlib.nullcontext()
        with gather:
            outputs = answer_all(self.model, self.tokenizer, self.eval_examples, max_new_tokens=answer_tokens(self.spec))
            if ev.forgetting:
                self.general_loss[when] = text_loss(self.model, self.tokenizer, general_text())
        tools = self.data.tools
        result = scored(self.eval_examples, outputs, labels=ev.labels, metrics=ev.metrics,
                        tool_parser=tools.parser if tools else "hermes")
        result.reward = heldout_reward(self.spec, self.eval_examples, outputs, files=self.data.files)
        self._timed(f"eval_{when}_s", t0)
        logged = {**(result.metrics.means if result.metrics is not None else {}),
                  **({"heldout_reward": result.reward.mean} if result.reward is not None else {})}
        if when in self.general_loss:
            logged["general_loss"] = self.general_loss[when]
        if logged:  # metrics.jsonl and the trackers: the base's as base_*, the tuned model's as eval_*
            prefix = "base_" if when == "before" else "eval_"
            row = {"step": self.steps_done(), **{prefix + k: v for k, v in logged.items()}}
            if when == "before":  # logged once training knows whether it resumes (a resumed run kept its own)
                self.base_row = row
            else:
                self.sink.metric(row)
        return result

    def evaluate_before(self) -> None:
        """The base model, before any method is attached ("adapter disabled")."""
        self.sink.set_state("running", phase="evaluating base model")
        self.before = self._evaluate("before")
        self.check_cancel()

    def attach(self) -> None:
        """Make the model trainable the method's way (adapters added, or weights unfrozen)."""
        self.model = self.builder.attach(self.model, self.spec, self.tokenizer, self.source.path)
        self.trainable, self.total = count_parameters(self.model)
        # As loaded on this rank, before DeepSpeed's engine partitions it (after that the model holds empty tensors).
        self.resident_bytes = int(self.model.get_memory_footprint())

    def train(self) -> None:
        """Resume from the newest committed checkpoint if any, train, then the eval loss."""
        from launch import ranks
        from launch.checkpoints import CheckpointUploader, prepare_resume
        from launch.data import rows_kept
        from launch.train import build_trainer

        self.sink.set_state("running", phase="training", trainable_params=self.trainable)
        uploader = CheckpointUploader(self.folder, self.workdir, keep=self.spec.train.keep_checkpoints,
                                      timeout_s=self.spec.distributed.timeout_minutes * 60)

        trackers = None

        def on_checkpoint(local_dir: Path, step: int) -> None:
            self.sink.flush()  # the metrics up to this step are stored before the checkpoint that resumes after them
            if trackers is not None:
                trackers.sync()  # and the trackers' (TensorBoard's event files in the run folder)
            uploader.submit(local_dir, step)

        trainer = build_trainer(self.spec, self.model, self.tokenizer, self.data, precision=self.precision,
                                hardware=self.hardware, attention=self.attention, workdir=self.workdir, sink=self.sink,
                                on_checkpoint=on_checkpoint)
        rows_kept(len(trainer.train_dataset), len(self.data.train), self.spec.data.max_length, say=ranks.is_main())
        if ranks.is_main():
            from launch.data import preview

            self.folder.write_json("data_preview.json", preview(trainer.train_dataset[0], self.tokenizer,
                                                                where=self.data.train_where[0],
                                                                completion_only=self.spec.data.completion_only_loss))
        resume = prepare_resume(self.folder, Path(trainer.args.output_dir))
        self.resumed_from = resume[0] if resume else None
        if resume is not None:
            self.sink.resume_from(resume[0])
            if ranks.is_main():
                print(f"[finetune] resuming from committed checkpoint {resume[0]}", flush=True)
        elif self.base_row is not None:  # written only now: a row flushed before resume_from would replace the stored curve
            self.sink.metric(self.base_row)
        if self.spec.tracking and ranks.is_main():
            from launch.tracking import Trackers

            trackers = Trackers(self.spec, self.folder)
            trackers.start(resumed_from=self.resumed_from)
            self.sink.listeners.append(trackers)
        t0 = time.time()
        self.trainer = trainer
        self.result = trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
        uploader.finish()  # the last checkpoint is committed before the run goes on
        self._timed("train_s", t0)
        self.check_cancel()
        self.model = trainer.model
        self.eval_loss = None
        if self.data.eval and getattr(trainer, "eval_dataset", None) is not None:
            self.sink.set_state("running", phase="evaluating")
            self.eval_loss = trainer.evaluate().get("eval_loss")

    def save(self) -> Path:
        """The artifact in scratch, per launch.gpu.save_route: FSDP through the Trainer's save_model (every
        rank), ZeRO-3 with the parameters gathered (every rank), rank 0 writes."""
        from launch import ranks
        from launch.train import full_parameters

        self.sink.set_state("running", phase="saving")
        t0 = time.time()
        artifact = self.workdir / "artifact"
        if self.save_route == "trainer":
            self.trainer.save_model(str(artifact))  # writes the tokenizer too, on rank 0
        else:
            with full_parameters(self.model):
                if ranks.is_main():
                    self.builder.save(self.model, self.tokenizer, artifact)
        self._timed("save_s", t0)
        return artifact

    def commit(self, artifact: Path) -> None:
        """Rank 0 uploads the artifact, MANIFEST.json last: until then there is no adapter."""
        from launch import ranks

        manifest = commit_dir(self.folder.store, artifact, self.folder.key(ADAPTER)) if ranks.is_main() else {"files": {}}
        self.adapter_bytes = sum(f["size"] for f in manifest["files"].values())

    def evaluate_after(self) -> None:
        """The tuned model. The adapter is committed by now: a late cancel no longer undoes the run."""
        self.sink.set_state("running", phase="evaluating tuned model")
        from launch.evaluate import probe_logits

        self.after = self._evaluate("after")
        self._judge()
        if os.environ.get("FINETUNE_PROBE_LOGITS") and self.eval_examples:  # a test seam (launch.evaluate.probe_logits)
            probe_logits(self.model, self.tokenizer, self.eval_examples[0], os.environ["FINETUNE_PROBE_LOGITS"])

    def _judge(self) -> None:
        from launch import ranks
        from launch.evaluate import judge_answers

        if self.spec.eval.judge is None or not ranks.is_main():
            return
        self.sink.set_state("running", phase="judging")
        t0 = time.time()
        self.judged = judge_answers(self.spec.eval.judge, self.eval_examples, self.before, self.after)
        self._timed("judge_s", t0)
        if self.judged and self.judged["win_rate"] is not None:
            self.sink.metric({"step": self.steps_done(), "judge_win_rate": self.judged["win_rate"]})

    def summary(self) -> RunSummary:
        from launch import ranks
        from launch.data import data_summary
        from launch.evaluate import side_by_side
        from launch.train import peak_memory, train_features

        def score(s: Any) -> LabelScore | None:
            return LabelScore(accuracy=s.accuracy, correct=s.correct, total=s.total) if s else None
        def metrics(e: Any) -> MetricScores | None:
            return MetricScores(means=e.metrics.means, counts=e.metrics.counts) if e is not None and e.metrics else None

        peak, reserved, peak_kind = peak_memory()
        losses = [r["loss"] for r in self.sink.rows if "loss" in r]
        generations = side_by_side(self.eval_examples, self.before.outputs, self.after.outputs, self.spec.eval.generations) \
            if self.before and self.after else []
        self.timings["total_s"] = time.time() - self.started
        summary = RunSummary(
            run_id=self.folder.run_id, model=self.spec.model.id, method=self.spec.method.name, objective=self.spec.objective.name,
            precision=self.precision, hardware=self.hardware, trainable_params=self.trainable, total_params=self.total,
            trainable_percent=100.0 * self.trainable / self.total if self.total else 0.0,
            resident_memory_bytes=self.resident_bytes, peak_memory_bytes=peak, peak_memory_kind=peak_kind,
            peak_reserved_bytes=reserved, attention=self.attention, features=train_features(self.trainer.args, packing_note=self.trainer.finetune_packing_note),
            steps=int(self.result.global_step), train_loss=float(self.result.training_loss),
            first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None, eval_loss=self.eval_loss,
            train_rows=len(self.data.train), eval_rows=len(self.data.eval),
            **data_summary(self.data, self.trainer),
            label_accuracy=LabelAccuracy(before=score(self.before and self.before.label), after=score(self.after and self.after.label)),
            generation_metrics=GenerationMetrics(before=metrics(self.before), after=metrics(self.after)),
            forgetting=Forgetting.of(self.general_loss.get("before"), self.general_loss.get("after")),
            judge=JudgeScore(**self.judged) if self.judged else None,
            reward=HeldOutReward.of(self.before and self.before.reward, self.after and self.after.reward),
            generations=[Generation(**g) for g in generations], adapter_bytes=self.adapter_bytes,
            runtime_s=Runtime(**self.timings), resumed_from_step=self.resumed_from, world_size=ranks.world_size(),
            strategy=self.spec.distributed.strategy if ranks.world_size() > 1 or self.spec.distributed.strategy in ("deepspeed", "fsdp")
            else "single", versions=versions(), cost=self.sink.budget.view() if self.sink.budget is not None else None,
        )
        if ranks.is_main():
            self.folder.write_json(SUMMARY, summary.model_dump(mode="json"))
        return summary

    def cleanup(self) -> None:
        from launch import ranks

        ranks.barrier()
        if ranks.local_rank() == 0:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run(spec: FineTuneSpec, folder: RunFolder, sink: Any, *, workdir: Path | None = None) -> Outcome:
    """Train per the spec, commit the artifact and write the summary to the store."""
    quiet_libraries()
    # The ranks of one node share a scratch folder (the launcher sets it), so a checkpoint is one folder.
    workdir = Path(workdir or os.environ.get("FINETUNE_WORKDIR") or tempfile.mkdtemp(prefix=f"finetune-{folder.run_id}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = NodeRecipe(spec, folder, sink, workdir)
    recipe.setup()
    recipe.evaluate_before()
    recipe.attach()
    recipe.train()
    recipe.commit(recipe.save())
    recipe.evaluate_after()
    summary = recipe.summary()
    recipe.cleanup()
    return Outcome(recipe.model, recipe.tokenizer, summary)
