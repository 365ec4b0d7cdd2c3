"""What every objective's trainer shares (its arguments, the callback that feeds the run folder, resume and dtype
fixes) and building the spec's one (launch.objectives.<name>, named by its registration in sdk.objectives)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.errors import FinetuneError
from sdk.core.methods import gradient_checkpointing, method_of
from sdk.core.metric_names import logged_row
from sdk.core.precision import Precision, torch_dtype, trainable_dtype, uses_tf32
from sdk.core.spec import FineTuneSpec
from sdk.core.summary import Hardware, TrainFeatures
from sdk.objectives import objective_of


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_memory() -> tuple[int, int | None, str]:
    """Peak memory so far: allocated, reserved by the caching allocator (CUDA only), and how it was measured."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved()), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, None, "cpu_peak_rss"


@contextmanager
def full_parameters(model: Any) -> Iterator[None]:
    """Under ZeRO-3 each rank holds a shard of every parameter: gather the trained ones (all of them for
    full fine-tuning) so they can be saved. Elsewhere this does nothing."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextmanager
def gathered_module_by_module(model: Any) -> Iterator[None]:
    """Under ZeRO-3 before DeepSpeed's engine exists (the base evaluation), run the model with each module's
    own parameters gathered for its forward and released right after: a rank holds one layer whole at a
    time, never the model, which is why the model needed ZeRO-3. Gathering is a collective, so every rank
    runs the same forwards (generate keeps ranks in step with synced_gpus). Elsewhere this does nothing."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        yield
        return
    import deepspeed

    open_gathers: dict[int, list[Any]] = {}

    def gather(module: Any, args: Any) -> None:
        own = [p for p in module.parameters(recurse=False) if hasattr(p, "ds_id")]
        if own:
            gathered = deepspeed.zero.GatheredParameters(own, modifier_rank=None)
            gathered.__enter__()
            open_gathers.setdefault(id(module), []).append(gathered)

    def release(module: Any, args: Any, output: Any) -> None:
        stack = open_gathers.get(id(module))
        if stack:
            stack.pop().__exit__(None, None, None)

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(gather), m.register_forward_hook(release))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for stack in open_gathers.values():  # a forward that raised leaves its gathers open
            while stack:
                stack.pop().__exit__(None, None, None)


def make_callback(sink: Any, on_checkpoint: Callable[[Path, int], None] | None = None) -> Any:
    """A TrainerCallback that turns trainer logs into metrics rows, honours cancellation (on every rank
    at the same step) and hands each saved checkpoint to `on_checkpoint(dir, step)`."""
    from transformers import TrainerCallback

    from launch import ranks

    class RunFolderCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_time = time.time()
            self.last_tokens = 0

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            sink.progress(step=state.global_step, total=state.max_steps)
            inner = optimizer
            for _ in range(3):  # accelerate and DeepSpeed wrap the optimizer that updates the states
                inner = getattr(inner, "optimizer", inner)
            if ranks.is_main() and inner is not None:
                print(f"[finetune] optimizer: {type(inner).__name__}", flush=True)
            model = kwargs.get("model")
            if ranks.is_main() and model is not None and any(hasattr(p, "ds_id") for p in model.parameters()):
                params = list(model.parameters())
                packed = [p for p in params if type(p).__name__ == "Params4bit"]
                print(f"[finetune] ZeRO-3: {sum(hasattr(p, 'ds_id') for p in params)} of {len(params)} parameters "
                      f"partitioned over {ranks.world_size()} ranks ({sum(hasattr(p, 'ds_id') for p in packed)} of "
                      f"{len(packed)} 4-bit weights)", flush=True)
            self.last_time = time.time()
            self.last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)  # nonzero after a resume

        def on_step_end(self, args, state, control, **kwargs):
            sink.progress(step=state.global_step, total=state.max_steps)
            budget = getattr(sink, "budget", None)
            reason = budget.stop_reason(step=state.global_step) if budget is not None else None
            if ranks.any_rank(reason is not None):  # max_cost: stop on every rank, with a checkpoint to resume from
                sink.stop_reason, sink.cancel_requested = reason or "resources.max_cost reached", True
                control.should_training_stop = True
                control.should_save = True
            elif ranks.any_rank(sink.cancel_requested):
                sink.cancel_requested = True
                control.should_training_stop = True
                control.should_save = False
            elif control.should_save and state.global_step >= state.max_steps:
                # The Trainer saves once more at the end; the committed adapter is that final state.
                control.should_save = args.save_steps > 0 and state.global_step % args.save_steps == 0

        def on_save(self, args, state, control, **kwargs):
            if on_checkpoint is not None:
                on_checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            now = time.time()
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": now,
                                   **logged_row(logs)}  # every number the trainer logged (sdk.core.metric_names)
            if "loss" in row and tokens:
                elapsed = max(now - self.last_time, 1e-9)
                row["tokens_per_s"] = (tokens - self.last_tokens) / elapsed
                row["tokens_seen"] = tokens
                self.last_time, self.last_tokens = now, tokens
            allocated, reserved, _ = peak_memory()
            row["peak_mem_bytes"] = allocated
            if reserved is not None:
                row["peak_reserved_bytes"] = reserved
            if len(row) > 4 and ranks.is_main():
                sink.metric(row)
                shown = " ".join(
                    f"{k} {row[k]:.4g}" for k in ("loss", "lr", "grad_norm", "reward", "tokens_per_s", "eval_loss") if k in row
                )
                if shown:
                    print(f"[finetune] step {state.global_step}/{state.max_steps} {shown}", flush=True)

    return RunFolderCallback()


def distributed_args(spec: FineTuneSpec, *, cuda: bool | None = None, world_size: int | None = None) -> dict[str, Any]:
    """TrainingArguments for the spec's strategy: DDP needs none beyond torchrun's environment. The facts (a CUDA
    device, the world size) default to this process's; tests pass them."""
    from launch import ranks
    from launch.launcher import deepspeed_config

    strategy = spec.distributed.strategy
    cuda = has_cuda() if cuda is None else cuda
    world_size = ranks.world_size() if world_size is None else world_size
    if strategy == "deepspeed":
        return {"deepspeed": deepspeed_config(spec)}
    if strategy == "fsdp":
        from launch.gpu import fsdp_settings

        try:
            return fsdp_settings(cuda=cuda, world_size=world_size, checkpointing=gradient_checkpointing(spec),
                                 offload=spec.distributed.offload)[0]
        except ValueError as exc:
            raise FinetuneError(str(exc)) from None
    if world_size == 1:
        return {}
    # Adapters use every trainable parameter each step; the search for unused ones only costs time.
    args: dict[str, Any] = {"ddp_find_unused_parameters": method_of(spec).trains_all_weights}
    if not cuda:
        args["ddp_backend"] = "gloo"
    return args


def keep_trainable_dtype(model: Any, dtype: Any) -> None:
    """trl casts QLoRA adapters to bf16 (the paper's GPU recipe); the product keeps trained parameters
    in the dtype sdk.core.precision.trainable_dtype decides (fp32 for adapters), so small updates are not
    rounded away and the saved adapter computes like the trained one."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def with_cpu_resume_fix(trainer_cls: type) -> type:
    """transformers resumes a multi-process optimizer with map_location=args.device, which on CPU is
    torch.device('cpu', 0): a location torch.load cannot restore to. Load such checkpoints to 'cpu'."""

    class Trainer(trainer_cls):  # type: ignore[misc, valid-type]
        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            import os

            import torch

            plain_cpu_ddp = self.args.world_size > 1 and self.args.device.type == "cpu" and not (
                self.is_deepspeed_enabled or self.is_fsdp_enabled
            )
            optimizer = os.path.join(checkpoint or "", "optimizer.pt")
            if not (checkpoint and plain_cpu_ddp and os.path.isfile(optimizer)):
                return super()._load_optimizer_and_scheduler(checkpoint)
            self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))

    Trainer.__name__ = trainer_cls.__name__
    return Trainer


def train_features(args: Any, *, packing_note: str | None = None) -> TrainFeatures:
    """Read back from the trainer's own arguments, so the summary says what ran rather than what was asked."""
    return TrainFeatures(packing=bool(getattr(args, "padding_free", False)), packing_note=packing_note,
                         gradient_checkpointing=bool(args.gradient_checkpointing or (
                             isinstance(args.fsdp_config, dict) and args.fsdp_config.get("activation_checkpointing"))),
                         activation_offloading=bool(getattr(args, "activation_offloading", False)),
                         liger_kernels=bool(args.use_liger_kernel), compile=bool(args.torch_compile),
                         optimizer=str(getattr(args.optim, "value", args.optim)))


def check_kernels(spec: FineTuneSpec, *, cuda: bool) -> None:
    """Liger's kernels are installed by the node's setup for this spec (the `liger` extra) and need a GPU."""
    if not spec.train.liger_kernels:
        return
    try:  # a missing package is a setup fault, said as such
        import liger_kernel.transformers  # noqa: F401
    except ImportError as exc:
        raise FinetuneError(f"train.liger_kernels: liger-kernel cannot be imported on this node ({exc}); "
                            "install finetune[liger]") from None
    if not cuda:
        raise FinetuneError("train.liger_kernels: Liger's Triton kernels need a CUDA GPU; drop it on CPU")


def training_args(spec: FineTuneSpec, *, precision: Precision, hardware: Hardware, workdir: Path,
                  has_eval: bool) -> dict[str, Any]:
    """The TrainingArguments every objective shares, from the spec and the facts of this node."""
    from launch.gpu import activation_offloading, optimizer_name

    t = spec.train
    cuda = hardware.device == "cuda"
    checkpointing = gradient_checkpointing(spec)
    try:
        offload = activation_offloading(t.activation_offloading, cuda=cuda, quantized_base=method_of(spec).quantized_base,
                                        checkpointing=checkpointing, capability=hardware.capability)
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    common: dict[str, Any] = dict(
        output_dir=str(workdir / "trainer"),
        max_steps=t.max_steps or -1,
        num_train_epochs=t.epochs or 1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps or t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optimizer_name(t.optimizer, cuda=cuda),
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",  # with the Trainer's loss scaling
        tf32=True if uses_tf32(capability=hardware.capability) else None,
        use_liger_kernel=t.liger_kernels,
        activation_offloading=offload,
        torch_compile=t.compile,
        ddp_timeout=spec.distributed.timeout_minutes * 60,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=2,  # local scratch only; the store keeps what `train.keep_checkpoints` says
        eval_strategy="steps" if (t.eval_steps and has_eval) else "no",
        eval_steps=t.eval_steps,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",  # tokens/s counts real tokens, not padding
        dataloader_pin_memory=cuda,
        max_length=spec.data.max_length,
    )
    common.update(distributed_args(spec, cuda=cuda))  # may move checkpointing into FSDP's own wrapper
    return common


def config_args(config_cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """The shared arguments a trainer's config takes. Activation offloading is an SFT/DPO/KTO feature of trl: a
    config without it trains without it, and says so when it was on."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_cls)}
    if args.get("activation_offloading") and "activation_offloading" not in known:
        print(f"[finetune] note: {config_cls.__name__} has no activation offloading; training without it", flush=True)
    return {k: v for k, v in args.items() if k in known}


@dataclass(frozen=True)
class TrainerInputs:
    """What an objective's trainer is built from."""

    spec: FineTuneSpec
    model: Any
    tokenizer: Any
    args: dict[str, Any]
    train_ds: Any
    eval_ds: Any
    callbacks: list[Any]
    attention: str
    assistant_only_loss: bool
    files: dict[str, Path] = field(default_factory=dict)  # files shipped with the run, by the name the spec gives them
    json_columns: frozenset[str] = frozenset()  # columns written as JSON text to fit one arrow table (sdk.data.prompts)


def build_trainer(spec: FineTuneSpec, model: Any, tokenizer: Any, data: Any, *, precision: Precision, hardware: Hardware,
                  attention: str, workdir: Path, sink: Any, on_checkpoint: Callable[[Path, int], None] | None = None) -> Any:
    """The objective's trainer over the prepared data (launch.data.PreparedData)."""
    from datasets import Dataset

    check_kernels(spec, cuda=hardware.device == "cuda")
    args = training_args(spec, precision=precision, hardware=hardware, workdir=workdir, has_eval=bool(data.eval))
    inputs = TrainerInputs(spec=spec, model=model, tokenizer=tokenizer, args=args, train_ds=Dataset.from_list(data.train),
                           eval_ds=Dataset.from_list(data.eval) if data.eval else None,
                           callbacks=[make_callback(sink, on_checkpoint)], attention=attention,
                           assistant_only_loss=data.assistant_only_loss, files=data.files,
                           json_columns=frozenset(data.json_columns))
    trainer, note = objective_of(spec).load_trainer()(inputs)
    keep_trainable_dtype(trainer.model, torch_dtype(trainable_dtype(spec, precision)))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints one compact line per log step
    trainer.finetune_packing_note = note  # read back into the summary
    from launch import ranks
    from launch.cadence import apply_cadence

    trainer.finetune_cadence = apply_cadence(trainer, spec, world_size=ranks.world_size())
    if trainer.finetune_cadence and ranks.is_main():
        print(f"[finetune] per epoch: {trainer.finetune_cadence}", flush=True)
    return trainer
