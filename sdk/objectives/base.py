"""What an objective is: its settings (the spec's `objective` section, read by it alone), the rows it trains on,
the metrics its trainer logs with their goals, its planner facts and its node-side trainer named by import path.
Row formats are named here too, with the kind of rows each holds, so an objective can refuse a format before launch
(sdk.data.formats implements each name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sdk.core.parts import SpecPart

RowKind = Literal["examples", "preference", "feedback"]  # examples: text, prompt/completion or conversations

# What each kind of row is, in messages that say which objective trains on it.
KIND_WORDS: dict[str, str] = {
    "examples": "examples", "preference": "preference pairs",
    "feedback": "binary-feedback rows (one answer with a true/false label)",
}

# Every data.format name and the rows it holds (sdk.data.formats.FORMATS implements exactly these).
ROW_FORMATS: dict[str, RowKind] = {
    "alpaca": "examples", "sharegpt": "examples", "messages": "examples", "prompt_completion": "examples",
    "text": "examples", "preference": "preference", "openai_preference": "preference", "feedback": "feedback",
}


class ObjectiveSettings(SpecPart):
    """The base of every objective's section of the spec; `name` tells them apart."""

    name: str


@dataclass(frozen=True)
class LoggedMetric:
    """A key the objective's trainer logs to metrics.jsonl (sdk.core.metric_names), and which way is better."""

    name: str
    goal: Literal["max", "min"]
    description: str


@dataclass(frozen=True)
class PlanFacts:
    """What the planner needs to know of an objective (sdk.core.plan)."""

    sequences_per_row: int = 1  # preference objectives run chosen and rejected in one batch
    # A frozen reference model's forward pass (the base with the adapter disabled): a fact, or one of the settings
    reference_forward: bool | Callable[[Any], bool] = False
    # GRPO-style rollouts: (settings) -> (completions generated per prompt, longest completion in tokens)
    rollouts: Callable[[Any], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    settings: type[ObjectiveSettings]
    trainer: str  # "module:function" on the node: (launch.train.TrainerInputs) -> (trainer, packing note or None)
    trains_on: RowKind
    formats_excluded: tuple[str, ...] = ()  # formats of its kind it cannot read (grpo: a text corpus holds no prompt)
    reads_prompts: bool = False  # rows may stop at the prompt: an answer is a reference, not a target (grpo)
    packing: bool = False  # can several examples share one sequence?
    reads_in_order: bool = False  # its trainer reads rows in order (the node shuffles them first, seeded)
    soft_prompts: bool = False  # trains the soft-prompt methods (prompt and prefix tuning) too
    metrics: tuple[LoggedMetric, ...] = ()  # what its trainer logs, with goals (sweep ranking, docs/objectives.md)
    default_metric: str | None = None  # what a sweep ranks by unless told (None: label accuracy or eval loss)
    # Cross-field rules only this objective knows: (spec) -> [(field, message)]
    check: Callable[[Any], list[tuple[str, str]]] = field(default=lambda spec: [])
    # "module:function" building the trainer rows of one sample, (sdk.data.rendering.Renderer, Sample) -> rows;
    # None: the renderer's own rows (examples, preference pairs, feedback)
    rows: str | None = None
    plan: PlanFacts = PlanFacts()
    node_extras: Callable[[Any, bool], tuple[str, ...]] = field(default=lambda settings, cuda: ())  # pip extras
    # Local files the node needs (a reward's Python file): (settings) -> [(field, name as written, path)]; they are
    # checked before launch and shipped in the run folder (sdk.runs.shipping), hashed
    ships: Callable[[Any], list[tuple[str, str, str]]] = field(default=lambda settings: [])
    # Names of environment variables holding keys its settings name (a score_model grader's api_key_env): forwarded
    # to the node as secrets, never written in the spec
    secrets: Callable[[Any], list[str]] = field(default=lambda settings: [])
    # Columns its settings read from every row (a reward's reference): (settings) -> [(field, column)]; the data
    # check refuses a source where no row holds one ("reference": the row's answer)
    reads_columns: Callable[[Any], list[tuple[str, str]]] = field(default=lambda settings: [])
    # The rewards the node scores the base's and the tuned model's greedy held-out answers with (summary.reward),
    # and how many tokens such an answer may take: (settings) -> ...
    heldout_rewards: Callable[[Any], list[Any]] = field(default=lambda settings: [])
    # Defaults of the spec's `train` section that follow from its settings, as written (a dict): keys the spec
    # does not set (grpo: a batch of two prompts' answers)
    train_defaults: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda settings: {})
    answer_tokens: Callable[[Any], int] = field(default=lambda settings: 0)
    # The `method.type` of OpenAI's fine-tuning API it trains (sdk.api): "supervised", "dpo", "reinforcement"
    openai_method: str | None = None
    # That method's hyperparameters beyond the shared ones (n_epochs, batch_size, learning_rate_multiplier), each to
    # the settings field it sets; None: accepted as "auto" only (no setting here means the same thing)
    openai_hyperparameters: dict[str, str | None] = field(default_factory=dict)
    # Settings from the method's body other than hyperparameters (reinforcement's grader): (body) -> settings
    openai_settings: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda body: {})

    @property
    def formats(self) -> list[str]:
        return [n for n, kind in ROW_FORMATS.items() if kind == self.trains_on and n not in self.formats_excluded]

    def load_trainer(self) -> Callable[[Any], tuple[Any, str | None]]:
        """The node-side trainer builder (imports trl: node only)."""
        import importlib

        module, _, function = self.trainer.partition(":")
        return getattr(importlib.import_module(module), function)
