"""The metric a sweep ranks by: from a run's summary or its logged rows, with its goal (min or max)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec

# ------------------------------------------------------------------------------------------- metrics


class Metric(BaseModel):
    name: str
    goal: Literal["max", "min"]
    description: str
    source: Literal["summary", "logged"] = "summary"  # the run's summary, or the last value of a metrics.jsonl key


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric(name="label_accuracy", goal="max", description="label accuracy on held-out rows after training"),
    Metric(name="eval_loss", goal="min", description="loss on the eval split after training"),
    Metric(name="train_loss", goal="min", description="mean training loss"),
    Metric(name="last_loss", goal="min", description="the last logged training loss"),
    *(Metric(name=name, goal="max", description=f"{name.replace('_', ' ')} of the tuned model's greedy answers to "
                                                "the held-out rows (sdk.evaluation.metrics)")
      for name in ("exact_match", "token_f1", "rouge_l", "json_valid", "json_field_accuracy", "tool_call_match")),
    Metric(name="forgetting_ratio", goal="min", description="general-text loss after training over before (eval.forgetting)"),
    Metric(name="judge_win_rate", goal="max", description="eval.judge: the tuned answers' win rate over the base's"),
)}


def objective_metrics() -> dict[str, Metric]:
    """What the registered objectives' trainers log, with their goals (sdk.objectives): ranked by the last value
    logged, except a summary metric of the same name (heldout_reward)."""
    from sdk.objectives import OBJECTIVES

    return {m.name: Metric(name=m.name, goal=m.goal, description=f"{o.name}: {m.description}",
                           source="summary" if m.name in SUMMARY_KEYS else "logged")
            for o in OBJECTIVES.values() for m in o.metrics}


SUMMARY_KEYS = ("heldout_reward",)  # objective metrics the summary holds (read from there, not from metrics.jsonl)


def known_metrics() -> dict[str, Metric]:
    return {**objective_metrics(), **METRICS}


def default_metric(spec: FineTuneSpec) -> str:
    """The objective's own (grpo: the held-out reward), else label accuracy after training when the spec names
    labels, else eval loss."""
    from sdk.objectives import objective_of

    own = objective_of(spec).default_metric
    if own is not None and spec.eval.after:
        return own
    return "label_accuracy" if spec.eval.labels and spec.eval.after else "eval_loss"


def metric_value(name: str, summary: Any) -> float | None:
    if summary is None:
        return None
    if name == "label_accuracy":
        after = summary.label_accuracy.after
        return None if after is None else after.accuracy
    if name == "judge_win_rate":
        return summary.judge.win_rate if summary.judge else None
    if name == "forgetting_ratio":
        return summary.forgetting.ratio if summary.forgetting else None
    if name == "heldout_reward":
        after = summary.reward.after if summary.reward else None
        return None if after is None else after.mean
    if not hasattr(summary, name):  # a generation metric
        scores = summary.generation_metrics.after
        return None if scores is None else scores.means.get(name)
    return getattr(summary, name)


def logged_value(name: str, rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The last value a run logged under `name` in metrics.jsonl (e.g. DPO's rewards/accuracies)."""
    values = [row[name] for row in rows if isinstance(row.get(name), int | float) and not isinstance(row.get(name), bool)]
    return float(values[-1]) if values else None


def check_metric(text: str) -> Metric:
    """A summary metric or an objective's logged metric by name (`reward`, `rewards/accuracies`), or any key the runs
    log in metrics.jsonl with its goal: `grad_norm:min`."""
    known = known_metrics()
    key, sep, goal = text.rpartition(":")
    if sep and goal in ("max", "min") and key:
        if key in known and known[key].goal != goal:
            raise SpecError(f"--metric {text}: {key} is better when {'higher' if known[key].goal == 'max' else 'lower'} "
                          f"(goal {known[key].goal})")
        return known[key] if key in known else Metric(name=key, goal=goal, source="logged",
                                                          description=f"the last logged {key}")
    if sep and key:
        raise SpecError(f"--metric: {text!r}: the goal after ':' is max or min, not {goal!r}")
    if text not in known:
        import difflib

        near = difflib.get_close_matches(text, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SpecError(f"--metric: {text!r} is not a known metric (one of {', '.join(known)}){hint}; to rank by "
                        f"a key the runs log in metrics.jsonl, give its goal: --metric {text}:max or {text}:min")
    return known[text]
