"""objective grpo: trl's GRPOTrainer, rewards from the spec (sdk.evaluation.rewards), rollouts by
launch.gpu.rollout_choice (vLLM on CUDA nodes where installed, transformers' generate elsewhere)."""

from __future__ import annotations

from typing import Any

from launch.train import TrainerInputs, config_args, has_cuda, with_cpu_resume_fix


def grpo_config_kwargs(settings: Any, *, rollout: dict[str, Any], reward_weights: list[float]) -> dict[str, Any]:
    """GRPOConfig's objective-specific arguments from the spec's section."""
    g = settings
    kwargs = dict(num_generations=g.num_generations, generation_batch_size=g.generation_batch_size,
                  max_completion_length=g.max_completion_length, temperature=g.temperature, top_p=g.top_p,
                  beta=g.beta, loss_type=g.resolved_loss, importance_sampling_level=g.importance_sampling_level,
                  epsilon=g.resolved_epsilon, epsilon_high=g.resolved_epsilon_high, num_iterations=g.num_iterations,
                  scale_rewards=g.scale_rewards, mask_truncated_completions=g.mask_truncated_completions,
                  reward_weights=reward_weights, log_completions=g.log_completions, **rollout)
    if rollout.get("use_vllm") and rollout.get("vllm_mode") == "colocate":
        kwargs["vllm_gpu_memory_utilization"] = g.vllm_gpu_memory_utilization
    return kwargs


def rollouts(settings: Any) -> tuple[dict[str, Any], str]:
    import os

    from launch import ranks
    from launch.gpu import VLLM_SERVER_URL, rollout_choice, vllm_installed
    from sdk.core.errors import FinetuneError

    cuda = has_cuda()
    try:
        import torch

        return rollout_choice(settings.rollouts, cuda=cuda, vllm_installed=vllm_installed(),
                              gpus_on_node=torch.cuda.device_count() if cuda else 0, nodes=ranks.num_nodes(),
                              # the launcher's own server (launch.rollout_server), when it started one
                              server_url=os.environ.get(VLLM_SERVER_URL))
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None


def build(inputs: TrainerInputs) -> tuple[Any, str | None]:
    from trl import GRPOConfig, GRPOTrainer

    from launch import ranks
    from sdk.evaluation.rewards import build_rewards, weights

    g = inputs.spec.objective
    rollout, why = rollouts(g)
    if ranks.is_main():
        print(f"[finetune] grpo: {g.num_generations} answers per prompt, {len(g.rewards)} reward(s); rollouts: {why}",
              flush=True)
    # The prompt is never cut (answers are by max_completion_length); held-out prompts are scored by the node's own
    # greedy evaluation against the rewards, not by the trainer's sampled one.
    # trl counts the tokens of each step itself (num_tokens): transformers' own count cannot find GRPO's inputs.
    args = {**config_args(GRPOConfig, inputs.args), "eval_strategy": "no", "include_num_input_tokens_seen": "no"}
    config = GRPOConfig(**args, **grpo_config_kwargs(g, rollout=rollout, reward_weights=weights(g.rewards)))
    rewards = build_rewards(g.rewards, files=inputs.files, json_columns=inputs.json_columns)
    trainer = with_cpu_resume_fix(GRPOTrainer)(model=inputs.model, reward_funcs=rewards, args=config,
                                               train_dataset=inputs.train_ds, processing_class=inputs.tokenizer,
                                               callbacks=inputs.callbacks)
    return trainer, None
