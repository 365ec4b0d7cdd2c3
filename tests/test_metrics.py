"""Generation metrics on small fixed cases, each value computed by hand in the comment beside it."""

from __future__ import annotations

import pytest

from sdk.evaluation.metrics import exact_match, rouge_l, score, score_all, token_f1, tool_call_match


def test_exact_match_normalizes_case_and_whitespace_only():
    assert exact_match("  Paris\n", "paris") == 1.0
    assert exact_match("New   York", "new york") == 1.0
    assert exact_match("Paris.", "Paris") == 0.0  # punctuation is part of the answer


def test_token_f1():
    # answer [the cat sat], reference [the cat sat on the mat]: 3 shared tokens; P = 3/3, R = 3/6, F1 = 2·1·0.5/1.5
    assert token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # [a a b] vs [a b b]: shared a×1 + b×1 = 2; P = R = 2/3, F1 = 2/3
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)
    assert token_f1("x", "y") == 0.0 and token_f1("", "") == 1.0 and token_f1("", "y") == 0.0


def test_rouge_l():
    # [a b c d] vs [a c b d]: the longest common subsequence has 3 tokens (a b d); P = R = 3/4
    assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    # [the cat] vs [the black cat sat]: LCS 2; P = 2/2, R = 2/4, F = 2·1·0.5/1.5
    assert rouge_l("The cat", "the black cat sat") == pytest.approx(2 / 3)
    assert rouge_l("q", "r") == 0.0


def test_json_validity_and_field_accuracy():
    reference = '{"city": "Paris", "date": "2024-05-01"}'
    half = score('{"city": "Paris", "date": "2024-05-02"}', reference)
    assert half["json_valid"] == 1.0 and half["json_field_accuracy"] == 0.5 and half["exact_match"] == 0.0
    fenced = score('```json\n{"date": "2024-05-01", "city": "Paris"}\n```', reference)  # fields in another order, fenced
    assert fenced["json_valid"] == 1.0 and fenced["json_field_accuracy"] == 1.0
    prose = score("The city is Paris.", reference)
    assert prose["json_valid"] == 0.0 and prose["json_field_accuracy"] == 0.0
    extra = score('{"city": "Paris", "date": "2024-05-01", "note": "x"}', reference)  # an extra field costs nothing here
    assert extra["json_field_accuracy"] == 1.0
    assert "json_valid" not in score("Paris", "Paris")  # not a JSON task: no JSON metrics


def test_tool_call_match():
    want = [{"name": "get_weather", "arguments": '{"city": "Lyon", "unit": "C"}'}]
    assert tool_call_match([{"name": "get_weather", "arguments": '{"unit":"C","city":"Lyon"}'}], want) == 1.0  # same JSON value
    assert tool_call_match([{"function": {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "C"}}}], want) == 1.0
    assert tool_call_match([{"name": "get_weather", "arguments": '{"city": "Lyons", "unit": "C"}'}], want) == 0.0
    assert tool_call_match([{"name": "get_time", "arguments": '{"city": "Lyon", "unit": "C"}'}], want) == 0.0
    assert tool_call_match([], want) == 0.0
    two = want + [{"name": "get_time", "arguments": "{}"}]
    assert tool_call_match(list(reversed(two)), two) == 0.0  # order matters: the second call may use the first's result
    assert score("", "", answer_calls=want, reference_calls=want)["tool_call_match"] == 1.0


def test_scores_average_each_metric_over_the_rows_it_applies_to():
    rows = [score("Paris", "Paris"), score("Rome", "Paris"), score('{"a": 1}', '{"a": 1}')]
    scores = score_all(rows)
    assert scores.means["exact_match"] == pytest.approx(2 / 3) and scores.counts["exact_match"] == 3
    assert scores.means["json_valid"] == 1.0 and scores.counts["json_valid"] == 1
    assert list(scores.means) == ["exact_match", "token_f1", "rouge_l", "json_valid", "json_field_accuracy"]


def test_the_general_text_loss_is_the_models_own_mean_token_loss():
    """The forgetting check's loss (padding left out) equals transformers' loss of each text alone, token-weighted."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.evaluate import general_text, text_loss
    from launch.tiny import ensure_tiny

    folder = ensure_tiny("llama")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)
    texts = general_text()[:3]
    assert len(general_text()) >= 30 and "boils at a lower temperature" in texts[0]
    total = count = 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=256).input_ids
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert text_loss(model, tokenizer, texts, batch_size=2) == pytest.approx(total / count, rel=1e-4)


class ScriptedJudge:
    """A judge that always prefers the answer in one position (or replies as told): position bias made visible."""

    model = "scripted"

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def ask(self, prompt):
        self.prompts.append(prompt)
        reply = self.replies(prompt)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_the_judge_asks_both_orders_and_a_position_bias_wins_nothing():
    from sdk.evaluation.judge import judge_pairs, read_verdict

    rows = [("Capital of France?", "Paris", "Lyon", "Paris"), ("2+2?", None, "4", "5")]
    biased = judge_pairs(ScriptedJudge(lambda p: "A"), rows)  # always the first answer
    assert (biased.n, biased.wins, biased.losses, biased.ties, biased.inconsistent) == (2, 0, 0, 2, 2)
    assert biased.win_rate == 0.5

    def truthful(prompt):  # prefers whichever position holds the right answer
        right = "Paris" if "France" in prompt else "4"
        a = prompt.split("Answer A:\n")[1].split("\n\n")[0]
        return "A" if a == right else "B."
    fair = ScriptedJudge(truthful)
    result = judge_pairs(fair, rows)
    assert (result.n, result.wins, result.losses, result.ties) == (2, 1, 1, 0) and result.win_rate == 0.5
    assert len(fair.prompts) == 4 and "Reference answer:\nParis" in fair.prompts[0] and "Reference" not in fair.prompts[2]
    assert "Answer A:\nLyon" in fair.prompts[0] and "Answer A:\nParis" in fair.prompts[1]  # the swap
    broken = judge_pairs(ScriptedJudge(lambda p: OSError("connection refused") if "France" in p else "maybe"), rows)
    assert broken.n == 0 and broken.win_rate is None and len(broken.errors) == 4
    assert "OSError: connection refused" in broken.errors[0] and "'maybe', not A, B or tie" in broken.errors[2]
    assert [read_verdict(t) for t in ("B", " a.", "Answer: B", "TIE", "**A**", "", "C")] == ["B", "A", "B", "tie", "A", None, None]
