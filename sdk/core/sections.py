"""The sections of a FineTuneSpec (model, data, train, eval, resources, distributed, tracking), each a pydantic
model with extra="forbid"; the spec itself, with its cross-field rules, is sdk.core.spec."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from sdk.core.dataspec import FILE_TYPES, DataSource, DataSpec, FieldMap, RowFormatName  # noqa: F401
from sdk.core.parts import EndpointUrl, SpecPart

# --------------------------------------------------------------------------------------------- model


class ModelSpec(SpecPart):
    """What to fine-tune: a Hub id, a local directory, a `.gguf` file, or `tiny:<arch>` (built locally)."""

    id: str = Field(min_length=1, description="Hub id, local dir, .gguf file, pkg://<package>/<file>, or tiny:<arch>")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    gguf_file: str | None = Field(None, description="GGUF file inside `id` when `id` is a directory or Hub repo")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value


# --------------------------------------------------------------------------------------------- train

Optimizer = Literal[
    "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"
]


class TrainSpec(SpecPart):
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    optimizer: Optimizer = "adamw_torch"
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in backward; default: on for methods with a 4-bit base (QLoRA), else off")
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 where installed on an Ampere+ GPU, else sdpa")
    activation_offloading: bool | None = Field(
        None, description="keep saved activations in CPU memory between forward and backward (overlapped copies); "
                          "default: on where gradient checkpointing is on for a 4-bit base on a GPU; GPU only")
    liger_kernels: bool = Field(False, description="Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (trl computes "
                                                   "the loss with its own chunked LM head); GPU only")
    compile: bool = Field(False, description="torch.compile the model")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    save_steps: int | None = Field(None, ge=1, description="commit a resumable checkpoint every N steps")
    keep_checkpoints: int | None = Field(
        2, ge=1, description="committed checkpoints kept in the store, oldest deleted first; null keeps all"
    )
    eval_steps: int | None = Field(None, ge=1)
    evals_per_epoch: int | None = Field(None, ge=1, description="evaluate this many times an epoch: eval_steps resolved "
                                                                "on the node from the real row count (in the summary)")
    saves_per_epoch: int | None = Field(None, ge=1, description="commit this many checkpoints an epoch: save_steps "
                                                                "resolved on the node from the real row count")

    @model_validator(mode="after")
    def _one_length(self) -> TrainSpec:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("set max_steps or epochs, not both")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        for steps, per_epoch in (("eval_steps", "evals_per_epoch"), ("save_steps", "saves_per_epoch")):
            if getattr(self, steps) and getattr(self, per_epoch):
                raise ValueError(f"set {steps} or {per_epoch}, not both")
        return self

    @property
    def length(self) -> str:
        return f"{self.max_steps} steps" if self.max_steps else f"{self.epochs or 1} epoch(s)"


# ---------------------------------------------------------------------------------------------- eval


class JudgeSpec(SpecPart):
    """A judge model behind any OpenAI-compatible endpoint (a `finetune serve` server, a hosted API): it compares
    base and tuned answers to the held-out prompts pairwise, in both positions (sdk.evaluation.judge)."""

    base_url: EndpointUrl = Field(description="the endpoint's base URL, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1")
    model: str = Field(min_length=1, description="the judge's model name at that endpoint")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="the environment variable holding the endpoint's key where the run "
                                                "executes (the key itself is never written in a spec)")
    rubric: str | None = Field(None, description="what makes an answer better; default: correct, follows the request, brief")
    max_samples: int = Field(20, ge=1, le=1000, description="held-out prompts judged (two requests each)")
    timeout_s: float = Field(60, gt=0, le=600)


class EvalSpec(SpecPart):
    labels: list[str] | None = Field(None, description="label set for label accuracy (greedy generation)")
    num_samples: int = Field(100, ge=1, description="held-out rows answered (greedy, batched) and scored: label "
                                                    "accuracy, generation metrics; `max_samples` names it too")
    metrics: bool = Field(True, description="generation metrics of the held-out answers against their references: "
                                            "exact match, token F1, ROUGE-L, JSON validity and field accuracy, "
                                            "tool-call match (sdk.evaluation.metrics)")
    judge: JudgeSpec | None = Field(None, description="a judge model comparing base and tuned answers (needs eval.before)")
    forgetting: bool = Field(True, description="loss on a general-text sample shipped with the package, before and "
                                               "after training: the ratio says what the tune cost in general ability")
    before: bool = Field(True, description="also score the base model (adapter disabled)")
    after: bool = True
    max_new_tokens: int = Field(8, ge=1, le=4096)
    generations: int = Field(3, ge=0, le=50, description="side-by-side base vs tuned samples in the summary")

    @model_validator(mode="before")
    @classmethod
    def _max_samples(cls, value: Any) -> Any:
        if isinstance(value, dict) and "max_samples" in value:
            value = dict(value)
            if "num_samples" in value:
                raise ValueError("give eval.max_samples or eval.num_samples (the same setting), not both")
            value["num_samples"] = value.pop("max_samples")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("need at least two labels")
            if len(set(value)) != len(value):
                raise ValueError("labels must be distinct")
            if any(not v.strip() for v in value):
                raise ValueError("labels must not be blank")
        return value


# ------------------------------------------------------------------------------------------ resources


class ResourcesSpec(SpecPart):
    accelerators: dict[str, int] | None = Field(
        None, description="candidates, e.g. {L4: 1, A10G: 1}; also 'L4:1' or 'H100:8'"
    )
    nodes: int = Field(1, ge=1, le=512)
    infra: str | None = Field(None, description="aws, gcp, azure, kubernetes, slurm, ... optionally /region")
    region: str | None = None
    spot: bool = False
    managed: bool | None = Field(
        None, description="run as a SkyPilot managed job (recovers onto new VMs, resumes); default: when spot"
    )
    disk_size: int | None = Field(None, ge=10, description="GB")
    image: str | None = None
    cpus: str | None = None
    memory: str | None = None
    hourly_price: float | None = Field(
        None, ge=0, description="USD per node-hour of what the run runs on: needed to price slurm and kubernetes "
        "(no catalog), overrides SkyPilot's catalog for a cloud; a local run costs 0 unless given"
    )
    max_cost: float | None = Field(
        None, gt=0, description="USD: the run is checkpointed and cancelled when its projected spend crosses this; "
        "a launch whose estimate already exceeds it is refused"
    )

    @field_validator("accelerators", mode="before")
    @classmethod
    def _parse_accelerators(cls, value: Any) -> Any:
        if isinstance(value, str):
            out: dict[str, int] = {}
            for part in value.split(","):
                name, _, count = part.strip().partition(":")
                if not name:
                    raise ValueError(f"cannot read accelerator {part!r}; write NAME or NAME:COUNT")
                try:
                    out[name] = int(count) if count else 1
                except ValueError:
                    raise ValueError(f"count in {part!r} is not an integer") from None
            return out
        return value

    @field_validator("accelerators")
    @classmethod
    def _counts(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            if not value:
                raise ValueError("name at least one accelerator, or leave it out")
            for name, count in value.items():
                if count < 1:
                    raise ValueError(f"{name}: count must be >= 1")
        return value

    @field_validator("cpus", "memory", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _spot_where_possible(self) -> ResourcesSpec:
        if self.spot and self.infra and self.infra.split("/")[0] in ("slurm", "kubernetes", "k8s", "ssh"):
            raise ValueError(f"spot instances do not exist on infra {self.infra!r}; drop spot or pick a cloud")
        return self

    @property
    def gpus_per_node(self) -> int:
        return max(self.accelerators.values()) if self.accelerators else 0

    @property
    def wants_cloud(self) -> bool:
        return bool(self.accelerators or self.infra)


class DistributedSpec(SpecPart):
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = "auto"
    zero_stage: Literal[2, 3] | None = None
    offload: bool = Field(False, description="CPU memory instead of GPU memory. deepspeed: optimizer states, and "
                                             "ZeRO-3 parameters too unless the base is 4-bit; fsdp: parameters, "
                                             "gradients and the optimizer step (FSDP2's CPUOffloadPolicy)")
    nproc_per_node: int | None = Field(
        None, ge=1, le=64, description="processes per node; default one per GPU (one on CPU)"
    )
    timeout_minutes: int = Field(
        30, ge=1, le=24 * 60, description="process-group timeout: how long a rank may wait for the others (checkpoint uploads)"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"strategy": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _deepspeed_only(self) -> DistributedSpec:
        if self.strategy != "deepspeed":
            if self.zero_stage:
                raise ValueError("zero_stage is a DeepSpeed option; set strategy: deepspeed")
            if self.offload and self.strategy != "fsdp":
                raise ValueError("offload needs a sharding strategy to offload from; set strategy: fsdp or deepspeed")
        elif self.zero_stage is None:
            self.zero_stage = 2
        return self


# ------------------------------------------------------------------------------------------ tracking


class MlflowTracking(SpecPart):
    name: Literal["mlflow"] = "mlflow"
    experiment: str | None = Field(None, description="MLflow experiment; default: the run's name")
    uri_env: str = Field("MLFLOW_TRACKING_URI", description="name of the environment variable or secret that holds "
                                                              "the tracking URI (never the URI itself)")


class WandbTracking(SpecPart):
    name: Literal["wandb"] = "wandb"
    project: str | None = Field(None, description="W&B project; default: the run's name")
    entity: str | None = None
    mode: Literal["online", "offline"] = Field("online", description="offline: the run directory is kept in the run "
                                                                     "folder for `wandb sync`")
    key_env: str = Field("WANDB_API_KEY", description="name of the environment variable or secret with the API key")


class TensorBoardTracking(SpecPart):
    """Event files in the run folder's tensorboard/ (`tensorboard --logdir` on a fetched run)."""

    name: Literal["tensorboard"] = "tensorboard"


TrackerSpec = Annotated[Union[MlflowTracking, WandbTracking, TensorBoardTracking], Field(discriminator="name")]
