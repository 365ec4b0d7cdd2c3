"""objective dpo: trl's DPOTrainer with the spec's loss variant (sigmoid, ipo, robust …)."""

from __future__ import annotations

from typing import Any

from launch.train import TrainerInputs, with_cpu_resume_fix


def build(inputs: TrainerInputs) -> tuple[Any, str | None]:
    from trl import DPOConfig, DPOTrainer

    o = inputs.spec.objective
    args = DPOConfig(**inputs.args, beta=o.beta, loss_type=[o.loss_type], label_smoothing=o.label_smoothing)
    print(f"[finetune] dpo: loss {args.loss_type}, beta {args.beta:g}", flush=True)  # as trl's config holds them
    trainer = with_cpu_resume_fix(DPOTrainer)(model=inputs.model, args=args, train_dataset=inputs.train_ds,
                                              eval_dataset=inputs.eval_ds, processing_class=inputs.tokenizer,
                                              callbacks=inputs.callbacks)
    return trainer, None
