"""Reward functions for the GRPO tests, with trl's signature (prompts, completions, **columns)."""


def names_the_topic(prompts, completions, reference, **kwargs):
    """1 when the answer names the row's topic (its `output`, handed over as `reference`), else 0."""
    return [1.0 if ref.lower() in str(c).lower() else 0.0 for c, ref in zip(completions, reference, strict=True)]


def short(prompts, completions, **kwargs):
    return [1.0 / (1 + len(str(c))) for c in completions]


def broken(prompts, completions, **kwargs):
    scores = []
    for completion in completions:
        scores.append(len(completion) / 0)  # raises: the run fails naming this line
    return scores
