"""objective orpo: trl's ORPOTrainer (trl.experimental in trl 1.x)."""

from __future__ import annotations

import os
from typing import Any

from launch.train import TrainerInputs, config_args, with_cpu_resume_fix


def build(inputs: TrainerInputs) -> tuple[Any, str | None]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the trainer is what the spec asked for, warning or not
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**config_args(ORPOConfig, inputs.args), beta=inputs.spec.objective.beta)
    trainer = with_cpu_resume_fix(ORPOTrainer)(model=inputs.model, args=args, train_dataset=inputs.train_ds,
                                               eval_dataset=inputs.eval_ds, processing_class=inputs.tokenizer,
                                               callbacks=inputs.callbacks)
    return trainer, None
