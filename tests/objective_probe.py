"""A test objective that lives in this one file: registered as a plugin (FINETUNE_OBJECTIVES=objective_probe, with
tests/ on the path), it trains through the whole path — spec, data check, node, metrics, sweep ranking — and no
other file of the product names it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sdk.objectives import LoggedMetric, Objective, ObjectiveSettings, register


class ProbeSettings(ObjectiveSettings):
    name: Literal["sft_probe"] = "sft_probe"
    bonus: float = Field(0.5, ge=0, description="added to every logged probe/score")


def build(inputs: Any) -> tuple[Any, str | None]:
    """trl's SFTTrainer, plus a callback that logs probe/score (the loss plus the spec's bonus) at every log."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    bonus = inputs.spec.objective.bonus

    class Score(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                logs["probe/score"] = float(logs["loss"]) + bonus

    args = SFTConfig(**inputs.args, completion_only_loss=inputs.spec.data.completion_only_loss)
    trainer = SFTTrainer(model=inputs.model, args=args, train_dataset=inputs.train_ds, eval_dataset=inputs.eval_ds,
                         processing_class=inputs.tokenizer, callbacks=[Score(), *inputs.callbacks])
    return trainer, None


register(Objective(
    name="sft_probe", settings=ProbeSettings, trainer="objective_probe:build", trains_on="examples",
    description="a test objective: SFT that logs probe/score", default_metric="probe/score",
    metrics=(LoggedMetric("probe/score", "min", "the loss plus the bonus"),),
))
