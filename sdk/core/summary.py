"""RunSummary: summary.json, typed. The node builds it at the end of a run; `Run.summary()` and the CLI read it.

Unknown keys are ignored on read, so a client can read the summary of a newer node.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sdk.core.billing import RunCost


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LabelScore(_Read):
    accuracy: float
    correct: int
    total: int


class LabelAccuracy(_Read):
    """Greedy-generation label accuracy on held-out rows, base model (adapter disabled) and tuned."""

    before: LabelScore | None = None
    after: LabelScore | None = None


class Generation(_Read):
    prompt: str
    expected: str
    base: str
    tuned: str


class Runtime(_Read):
    """Seconds spent per phase of the node."""

    load_s: float = 0.0
    eval_before_s: float | None = None
    train_s: float = 0.0
    eval_after_s: float | None = None
    judge_s: float | None = None
    save_s: float | None = None
    total_s: float = 0.0


class Hardware(_Read):
    """What the node ran on (what it found, not what was asked for)."""

    device: str = "cpu"  # cpu | cuda
    name: str | None = None  # e.g. "NVIDIA L4"
    count: int = 0  # CUDA devices visible to the process
    capability: tuple[int, int] | None = None  # CUDA compute capability, e.g. (8, 9)
    torch: str | None = None
    cuda: str | None = None  # the CUDA version torch was built with
    driver: str | None = None  # the NVIDIA driver version, when visible
    torch_index: str | None = None  # where the node's setup installed torch from (a CUDA build's index), when it did


class TrainFeatures(_Read):
    """What the trainer ran with, as decided on the node (launch.gpu): the facts behind a speed or memory figure."""

    packing: bool = False  # padding-free: rows packed into one sequence, kept apart by position ids
    packing_note: str | None = None  # why packing was asked for and not done (an attention or a layer kind that would leak)
    gradient_checkpointing: bool = False
    activation_offloading: bool = False
    liger_kernels: bool = False
    compile: bool = False
    optimizer: str | None = None


class MetricScores(_Read):
    """Generation metrics (sdk.evaluation.metrics): each one's mean over the held-out rows it applies to, and how
    many those were."""

    means: dict[str, float] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)


class GenerationMetrics(_Read):
    before: MetricScores | None = None  # the base model (eval.before)
    after: MetricScores | None = None  # the tuned model


class Forgetting(_Read):
    """What the tune cost the base model in general ability: mean next-token loss on the general-text sample shipped
    with the package (sdk/evaluation/general_text.txt), before and after; `ratio` after / before (1.0: nothing lost)."""

    before_loss: float | None = None
    after_loss: float | None = None
    ratio: float | None = None

    @classmethod
    def of(cls, before: float | None, after: float | None) -> Forgetting | None:
        if before is None and after is None:
            return None
        return cls(before_loss=before, after_loss=after, ratio=after / before if before and after is not None else None)


class JudgeScore(_Read):
    """eval.judge's verdict on base vs tuned answers, each prompt judged in both orders (sdk.evaluation.judge)."""

    model: str
    n: int
    wins: int
    losses: int
    ties: int
    inconsistent: int = 0
    win_rate: float | None = None
    error_count: int = 0
    errors: list[str] = Field(default_factory=list)


class RewardScore(_Read):
    """Objective grpo: the rewards of greedy answers to the held-out prompts: the weighted total's mean (`mean`), each
    reward's own mean by name, over `n` prompts."""

    mean: float
    means: dict[str, float] = Field(default_factory=dict)
    n: int


class HeldOutReward(_Read):
    before: RewardScore | None = None  # the base model (eval.before)
    after: RewardScore | None = None  # the tuned model

    @classmethod
    def of(cls, before: RewardScore | None, after: RewardScore | None) -> HeldOutReward | None:
        return None if before is None and after is None else cls(before=before, after=after)


class ToolCalling(_Read):
    """How a run trained on tool calls rendered them (sdk.data.tools.tool_template): `native` the model's own chat
    template, else the Hermes prologue in front of it; the template itself is the run folder's chat_template.jinja,
    which `finetune serve` and `finetune generate` render with; `parser` vLLM's tool parser for the answers."""

    native: bool
    parser: str | None = None


class DataSource(_Read):
    """What one source gave the run (sdk.data.samples.SourceCheck.record); also the run folder's data.json."""

    field: str  # data.source, or data.sources[i]
    source: str
    format: str | None = None
    rows: int = 0  # read
    eval_rows: int = 0  # held out
    train_rows: int = 0  # trained on, after hold-out, max_samples and mixing
    weight: float | None = None
    sha256: str | None = None  # of the rows as read


class Cadence(_Read):
    """train.evals_per_epoch / saves_per_epoch resolved on the node (launch.cadence)."""

    steps_per_epoch: int
    steps_per_run: int | None = None  # max_steps, when it ends the run within the first epoch
    eval_steps: int | None = None
    save_steps: int | None = None


class RunSummary(_Read):
    run_id: str
    model: str
    method: str
    objective: str
    precision: str
    hardware: Hardware = Field(default_factory=Hardware)
    trainable_params: int
    total_params: int
    trainable_percent: float
    resident_memory_bytes: int
    peak_memory_bytes: int
    peak_memory_kind: str  # cuda_max_memory_allocated | cpu_peak_rss
    peak_reserved_bytes: int | None = None  # CUDA caching allocator's peak (what nvidia-smi sees, roughly)
    attention: str | None = None  # the attention implementation the model ran with
    features: TrainFeatures = Field(default_factory=TrainFeatures)
    steps: int
    train_loss: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    eval_loss: float | None = None
    train_rows: int
    eval_rows: int
    data_format: str | None = None  # the rows' format (detected or named in data.format); the first source's
    data_sources: list[DataSource] = Field(default_factory=list)
    cadence: Cadence | None = None
    template: str | None = None  # how prompts were written in training: instruction | chat | plain (generate, serve)
    instruction: str | None = None  # the one instruction every training row shared (a user's text is then the input)
    tool_calling: ToolCalling | None = None  # set when the rows offered tools
    label_accuracy: LabelAccuracy = Field(default_factory=LabelAccuracy)
    generation_metrics: GenerationMetrics = Field(default_factory=GenerationMetrics)
    forgetting: Forgetting | None = None  # eval.forgetting: general-text loss before and after
    judge: JudgeScore | None = None  # eval.judge: pairwise base vs tuned, position-swapped
    reward: HeldOutReward | None = None  # objective grpo: the rewards' mean on held-out prompts, before and after
    generations: list[Generation] = Field(default_factory=list)
    adapter_bytes: int
    runtime_s: Runtime = Field(default_factory=Runtime)
    resumed_from_step: int | None = None
    world_size: int = 1
    strategy: str = "single"
    versions: dict[str, str] = Field(default_factory=dict)
    rerun_of: str | None = None  # the run this one reproduces (finetune rerun; its record says what was checked)
    cost: RunCost | None = None  # the node's view when it ended; Run.summary() gives the client's final one
