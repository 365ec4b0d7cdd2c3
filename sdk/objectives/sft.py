"""objective: sft — supervised fine-tuning: next-token loss on the answers (trl's SFTTrainer)."""

from __future__ import annotations

from typing import Literal

from sdk.objectives.base import LoggedMetric, Objective, ObjectiveSettings


class SftSettings(ObjectiveSettings):
    name: Literal["sft"] = "sft"


OBJECTIVE = Objective(
    name="sft", settings=SftSettings, trainer="launch.objectives.sft:build", trains_on="examples", packing=True,
    soft_prompts=True, description="supervised fine-tuning: next-token loss on the answers", openai_method="supervised",
    metrics=(LoggedMetric("mean_token_accuracy", "max", "share of answer tokens predicted right (teacher forcing)"),
             LoggedMetric("entropy", "min", "mean entropy of the predicted token distribution")),
)
