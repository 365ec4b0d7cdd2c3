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


def default_metric(spec: FineTuneSpec) -> str:
    """Label accuracy after training when the spec names labels, else eval loss."""
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
    if not hasattr(summary, name):  # a generation metric
        scores = summary.generation_metrics.after
        return None if scores is None else scores.means.get(name)
    return getattr(summary, name)


def logged_value(name: str, rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The last value a run logged under `name` in metrics.jsonl (e.g. DPO's rewards/accuracies)."""
    values = [row[name] for row in rows if isinstance(row.get(name), int | float) and not isinstance(row.get(name), bool)]
    return float(values[-1]) if values else None


def check_metric(text: str) -> Metric:
    """A summary metric by name, or any key the runs log in metrics.jsonl with its goal: `rewards/accuracies:max`."""
    key, sep, goal = text.rpartition(":")
    if sep and goal in ("max", "min") and key:
        if key in METRICS and METRICS[key].goal != goal:
            raise SpecError(f"--metric {text}: {key} is better when {'higher' if METRICS[key].goal == 'max' else 'lower'} "
                          f"(goal {METRICS[key].goal})")
        return METRICS[key] if key in METRICS else Metric(name=key, goal=goal, source="logged",
                                                          description=f"the last logged {key}")
    if sep and key:
        raise SpecError(f"--metric: {text!r}: the goal after ':' is max or min, not {goal!r}")
    if text not in METRICS:
        import difflib

        near = difflib.get_close_matches(text, METRICS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SpecError(f"--metric: {text!r} is not a summary metric (one of {', '.join(METRICS)}){hint}; to rank by "
                        f"a key the runs log in metrics.jsonl, give its goal: --metric {text}:max or {text}:min")
    return METRICS[text]
