"""objective simpo: trl's CPOTrainer with loss_type simpo (trl.experimental in trl 1.x)."""

from __future__ import annotations

import os
from typing import Any

from launch.train import TrainerInputs, config_args, with_cpu_resume_fix


def build(inputs: TrainerInputs) -> tuple[Any, str | None]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    o = inputs.spec.objective
    args = CPOConfig(**config_args(CPOConfig, inputs.args), loss_type="simpo", beta=o.beta,
                     simpo_gamma=o.gamma_beta_ratio * o.beta,
                     cpo_alpha=o.cpo_alpha)
    trainer = with_cpu_resume_fix(CPOTrainer)(model=inputs.model, args=args, train_dataset=inputs.train_ds,
                                              eval_dataset=inputs.eval_ds, processing_class=inputs.tokenizer,
                                              callbacks=inputs.callbacks)
    return trainer, None
