"""The reward layer of objective grpo: the spec's reward items (sdk.objectives.rewards), OpenAI's graders
(sdk.evaluation.graders) and the items as trl reward functions (sdk.evaluation.rewards). Every value is computed by
hand in the comment beside it; score_model talks to a tiny chat-completions server on 127.0.0.1. No training."""

from __future__ import annotations

import http.server
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from sdk.core.errors import FinetuneError
from sdk.core.validation import format_errors
from sdk.evaluation.graders import (
    GraderError,
    UnreadableScore,
    bleu,
    calculate,
    fuzzy_match,
    gleu,
    grade,
    render,
    rouge_n,
    sample_of,
)
from sdk.evaluation.rewards import RewardError, build_rewards, load_function, score_rows, weights
from sdk.evaluation.score_model import chat_request, read_score
from sdk.objectives.rewards import REWARD_TYPES, RewardSpec, reward_name, reward_names, reward_shorthand

ROOT = Path(__file__).resolve().parent.parent
ITEMS = TypeAdapter(list[RewardSpec])
GRADER = TypeAdapter(RewardSpec)


def items(*values):
    return ITEMS.validate_python(list(values))


def item(value):
    return GRADER.validate_python(value)


def reward(value, **build):
    return build_rewards([item(value)], **build)[0]


def one_error(value) -> str:
    """The single problem the spec's validation reports for a reward item, as the user reads it."""
    from sdk.objectives.grpo import GrpoSettings

    with pytest.raises(ValidationError) as info:
        GrpoSettings(rewards=[value])
    problems = format_errors(info.value, root=GrpoSettings)
    assert len(problems) == 1, problems
    line = str(problems[0])
    assert "\n" not in line and "Traceback" not in line
    return line


def check(operation, input_="{{sample.output_text}}", reference="{{item.reference}}"):
    return {"type": "string_check", "name": "check", "input": input_, "reference": reference, "operation": operation}


def similarity(metric):
    return {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}", "evaluation_metric": metric}


# ------------------------------------------------------------------------------------------ spec: shapes


def test_shorthand_strings_and_mappings():
    assert reward_shorthand("exact_match") == {"type": "exact_match"}
    assert reward_shorthand("rewards/format.py:score") == {"type": "function", "function": "rewards/format.py:score"}
    assert reward_shorthand({"function": "r.py:f", "weight": 2}) == {"type": "function", "function": "r.py:f",
                                                                    "weight": 2}
    mapping = {"type": "regex", "pattern": "x"}
    assert reward_shorthand(mapping) is mapping
    parsed = items("exact_match", "r.py:score", {"type": "length", "max_chars": 10, "weight": -0.5})
    assert [p.type for p in parsed] == ["exact_match", "function", "length"]
    assert [p.weight for p in parsed] == [1.0, 1.0, -0.5] and weights(parsed) == [1.0, 1.0, -0.5]
    assert parsed[0].reference == "reference"


def test_openai_graders_pasted_as_is_validate():
    """The JSON of OpenAI's graders guide and API reference, with only our base_url added to score_model."""
    tools = {
        "type": "multi", "name": "tool call",
        "graders": {
            "function_name": {"type": "string_check", "name": "function_name",
                              "input": "{{ sample.output_tools[0].function.name }}",
                              "reference": "{{ item.function_name }}", "operation": "eq"},
            "arguments": {"type": "string_check", "name": "arguments",
                          "input": "{{ sample.output_tools[0].function.arguments }}",
                          "reference": "{{ item.arguments }}", "operation": "eq"},
        },
        "calculate_output": "0.5 * function_name + 0.5 * arguments",
    }
    score = {
        "type": "score_model", "name": "Example score model grader", "model": "gpt-5-mini",
        "input": [{"role": "user", "type": "message", "content": [{"type": "input_text", "text": (
            "Score how close the reference answer is to the model answer on a 0-1 scale. Return only the score."
            "\n\nReference answer: {{item.reference_answer}}\n\nModel answer: {{sample.output_text}}")}]}],
        "sampling_params": {"temperature": 1, "top_p": 1, "seed": 42, "max_completions_tokens": 32,
                            "reasoning_effort": "low"},
        "range": [0, 1], "pass_threshold": 0.5,
        "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
    }
    python = {"type": "python", "name": "py", "image_tag": "2025-05-08",
              "source": "def grade(sample, item) -> float:\n    return 1.0\n"}
    text = {**similarity("bleu"), "pass_threshold": 0.8}
    parsed = items(tools, score, python, text, check("ilike"))
    assert [p.type for p in parsed] == ["multi", "score_model", "python", "text_similarity", "string_check"]
    assert all(p.weight == 1.0 for p in parsed)
    assert ITEMS.validate_python(ITEMS.dump_python(parsed, mode="json")) == parsed  # spec.json round trip


def test_reward_names_are_stable_and_unique():
    parsed = items({"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"}, "r.py:score",
                   {**check("eq"), "name": "a/b"}, {"type": "exact_match", "name": "strict"}, "exact_match")
    assert reward_names(parsed) == ["regex", "regex_1", "score", "a_b", "strict", "exact_match"]
    assert reward_name(parsed[1], 1) == "regex" and reward_name(parsed[1], 1, items=parsed) == "regex_1"
    assert [f.__name__ for f in build_rewards([p for p in parsed if p.type != "function"])] == [
        "regex", "regex_1", "a_b", "strict", "exact_match"]


# ------------------------------------------------------------------------------------------ spec: one-line errors


def test_an_unknown_or_missing_type_is_one_line_listing_the_known_types():
    line = one_error("rgex")
    assert "rewards[0]: unknown reward type 'rgex'; did you mean 'regex'?" in line
    assert f"(one of: {', '.join(REWARD_TYPES)})" in line
    assert "a reward needs a 'type' (one of: exact_match," in one_error({"weight": 2})
    assert "label_model graders are not supported: use a score_model grader" in one_error(
        {"type": "label_model", "name": "l"})
    nested = one_error({"type": "multi", "name": "m", "graders": {"a": {"type": "exact_match"}},
                        "calculate_output": "a"})
    assert "unknown grader type 'exact_match' (one of: string_check, text_similarity, score_model, python, multi)" \
        in nested


def test_the_unknown_type_through_the_whole_spec():
    import sdk
    from sdk.core.errors import SpecError

    def spec(rewards):
        return sdk.FineTuneSpec(model="m", data="d.jsonl",
                                objective={"name": "grpo", "num_generations": 2, "rewards": rewards})

    try:
        spec(["exact_match"])
    except SpecError as exc:
        pytest.skip(f"objective grpo is not in FineTuneSpec yet ({exc})")
    with pytest.raises(SpecError) as info:
        spec(["exact_match", "rgex"])
    assert len(info.value.problems) == 1 and "\n" not in info.value.problems[0]
    assert "unknown reward type 'rgex'; did you mean 'regex'?" in info.value.problems[0]
    assert "objective.rewards[1]" in info.value.problems[0]


@pytest.mark.parametrize("value,expected", [
    ({"type": "regex", "pattern": "(a"},
     "pattern '(a' is not a regular expression: missing ), unterminated subpattern"),
    ("rewards.py", "'rewards.py' is not file.py:function (e.g. rewards.py:score)"),
    ({"type": "function", "function": "rewards.py:not-a-name"}, "is not file.py:function"),
    ({"type": "python", "name": "p", "source": "def grade(sample, item):\n    return (\n"},
     "python grader 'p': line 2: '(' was never closed"),
    ({"type": "python", "name": "p", "source": "def score(sample, item):\n    return 1\n"},
     "python grader 'p': the source defines no grade(sample, item) function"),
    ({**similarity("cosine")}, "cosine compares embeddings, which needs an embeddings endpoint: use fuzzy_match"),
    ({**similarity("meteor")}, "meteor needs the WordNet data (nltk), which is not shipped: use rouge_l or bleu"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "hi"}],
      "base_url": "localhost:8000"}, "must be an http:// or https:// URL, not 'localhost:8000'"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "hi"}],
      "base_url": "http://h/v1", "range": [1, 0]}, "must be [lowest, highest] with lowest below highest"),
    ({"type": "score_model", "name": "s", "model": "m", "base_url": "http://h/v1", "input": [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
     "input_audio parts are not supported: the grader model here reads text (input_text parts)"),
    ({"type": "score_model", "name": "s", "model": "m", "base_url": "http://h/v1", "input": [
        {"role": "user", "content": {"type": "input_image", "image_url": "https://x/1.png"}}]},
     "input_image parts are not supported"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "hi"}]},
     "base_url: required field is missing"),
    ({"type": "length", "max_chars": 10, "weight": float("inf")}, "weight"),
])
def test_bad_items_are_one_line_errors(value, expected):
    assert expected in one_error(value)


@pytest.mark.parametrize("formula,expected", [
    ("a + c", "unknown name 'c' (graders: a, b)"),
    ("a + bb", "unknown name 'bb' (did you mean 'b'? graders: a, b)"),
    ("a +", "is not an arithmetic expression"),
    ("__import__('os').system('true')", "unknown function"),
    ("a.real", "a.real is not allowed (use numbers, grader names, + - * / ^ (or **), parentheses and min max"),
    ("a if b else 0", "is not allowed"),
    ("a[0]", "a[0] is not allowed"),
    ("'x'", "'x' is not a number"),
    ("True", "True is not a number"),
    ("a % 2", "a % 2 is not allowed"),
    ("round(a)", "unknown function 'round' (functions: min, max, abs, floor, ceil, exp, sqrt, log)"),
    ("abs(a, b)", "abs() takes 1 argument(s), not abs(a, b)"),
    ("max()", "max() takes 1 or more argument(s)"),
    ("log(a, 2, 3)", "log() takes 1 to 2 argument(s)"),
    ("min(a, key=b)", "min() takes 1 or more argument(s), not min(a, key=b)"),
])
def test_calculate_output_is_checked_at_validation(formula, expected):
    value = {"type": "multi", "name": "m", "graders": {"a": check("eq"), "b": check("ne")}, "calculate_output": formula}
    line = one_error(value)
    assert f"calculate_output {formula!r}" in line and expected in line


# ------------------------------------------------------------------------------------------ templates and samples


def test_templates_render_dotted_paths():
    sample = sample_of('{"city": "Lyon", "n": 2}')
    item_ = {"a": {"b": "deep"}, "list": ["x", "y"], "obj": {"k": [1, 2]}, "n": 3, "none": None}
    text = ("{{ sample.output_json.city }}|{{item.a.b}}|{{ item.list[1] }}|{{item.list.0}}|{{item.obj}}|{{item.n}}|"
            "{{item.missing.deeper}}|{{item.none}}|{{other.x}}|{{sample.output_json.n}}")
    assert render(text, sample=sample, item=item_) == 'Lyon|deep|y|x|{"k": [1, 2]}|3||||2'


def test_the_sample_of_an_answer():
    plain = sample_of("Paris")
    assert plain == {"output_text": "Paris", "output_json": None, "output_tools": []}
    assert sample_of('```json\n{"a": 1}\n```')["output_json"] == {"a": 1}
    called = sample_of('Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call>')
    assert called["output_text"] == "Checking."
    assert called["output_tools"] == [{"type": "function", "function": {"name": "get_weather",
                                                                         "arguments": '{"city": "Lyon"}'}}]
    assert render("{{sample.output_tools[0].function.name}}", sample=called, item={}) == "get_weather"


# ------------------------------------------------------------------------------------------ graders


def _grade(value, answer="", **row):
    return grade(item(value), sample=sample_of(answer), item=row)


@pytest.mark.parametrize("operation,answer,reference,expected", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "Paris", "paris", 0.0),
    ("ne", "Paris", "Paris", 0.0), ("ne", "Paris", "paris", 1.0),
    ("like", "The capital is Paris.", "Paris", 1.0), ("like", "the capital is paris.", "Paris", 0.0),
    ("ilike", "the capital is PARIS.", "Paris", 1.0), ("ilike", "Lyon", "Paris", 0.0),
])
def test_string_check(operation, answer, reference, expected):
    assert _grade(check(operation), answer, reference=reference) == expected


def test_text_similarity_metrics_by_hand():
    # fuzzy_match: 'abcd' vs 'abce' share 'abc': 2·3 / (4 + 4)
    assert fuzzy_match("abcd", "abce") == pytest.approx(0.75) and fuzzy_match("", "") == 1.0
    # bleu 'a b c d' vs 'a b x d': p1 = 3/4, p2 = 1/3 (ab), p3 = 0/2 -> 1/(2·2), p4 = 0/1 -> 1/(4·1); no brevity
    # penalty: (3/4 · 1/3 · 1/4 · 1/4) ^ (1/4) = (1/64) ^ (1/4) = 2^-1.5
    assert bleu("a b c d", "a b x d") == pytest.approx(2 ** -1.5)
    # 'the cat sat' vs 'the cat sat on the mat': p1 = p2 = p3 = 1, no 4-gram (effective order 3); brevity exp(1 - 6/3)
    assert bleu("the cat sat", "the cat sat on the mat") == pytest.approx(math.exp(-1))
    assert bleu("Paris.", "Paris.") == 1.0 and bleu("x", "y") == 0.0  # tokens: words and marks; no match at all: 0
    # gleu 'a b c d' vs 'a b x d': 10 n-grams (1-4) each side; matched a, b, d, ab = 4; min(4/10, 4/10)
    assert gleu("a b c d", "a b x d") == pytest.approx(0.4)
    # rouge_1 'the cat sat' vs 'the cat sat on the mat': P = 3/3, R = 3/6, F = 2/3
    assert rouge_n("The cat sat", "the cat sat on the mat", n=1) == pytest.approx(2 / 3)
    # rouge_2 'a b c d' vs 'a b x d': bigrams ab bc cd / ab bx xd: P = R = 1/3
    assert rouge_n("a b c d", "a b x d", n=2) == pytest.approx(1 / 3)
    # rouge_5 'a b c d e f' vs 'a b c d e g': abcde bcdef / abcde bcdeg: P = R = 1/2
    assert rouge_n("a b c d e f", "a b c d e g", n=5) == pytest.approx(0.5)
    assert rouge_n("a", "a", n=2) == 1.0 and rouge_n("a", "a b", n=2) == 0.0


@pytest.mark.parametrize("metric,expected", [
    ("fuzzy_match", 0.75), ("bleu", 2 ** -1.5), ("gleu", 0.4), ("rouge_1", 0.75), ("rouge_2", 1 / 3),
    ("rouge_3", 0.0), ("rouge_4", 0.0), ("rouge_5", 0.0), ("rouge_l", 0.75),
])
def test_text_similarity_grader(metric, expected):
    answer, reference = ("abcd", "abce") if metric == "fuzzy_match" else ("a b c d", "a b x d")
    # rouge_l: LCS a b d of 4 tokens each: 3/4;  rouge_1: a b d of 4: 3/4
    assert _grade(similarity(metric), answer, reference=reference) == pytest.approx(expected)


def test_python_grader():
    source = "import json\n\ndef grade(sample, item):\n    return len(sample['output_text']) / item['size']\n"
    assert _grade({"type": "python", "name": "p", "source": source}, "abc", size=4) == 0.75
    mutating = "def grade(sample, item):\n    item['size'] = 0\n    return 1\n"
    row = {"size": 4}
    grade(item({"type": "python", "name": "p", "source": mutating}), sample=sample_of("x"), item=row)
    assert row == {"size": 4}  # the grader had a copy


def test_a_python_grader_that_fails_names_its_line():
    source = "def helper(x):\n    return x / 0\n\ndef grade(sample, item):\n    return helper(1)\n"
    with pytest.raises(GraderError) as info:
        _grade({"type": "python", "name": "ratio", "source": source}, "x")
    assert str(info.value) == "<grader ratio>:2: ZeroDivisionError: division by zero"
    with pytest.raises(GraderError, match=r"<grader words>: grade\(\) returned 'many', not a finite number"):
        _grade({"type": "python", "name": "words", "source": "def grade(s, i):\n    return 'many'\n"})
    built = reward({"type": "python", "name": "ratio", "source": source})
    with pytest.raises(RewardError) as info:
        built(["p"], ["x"])
    assert str(info.value) == "objective.rewards[0] (ratio): <grader ratio>:2: ZeroDivisionError: division by zero"


def _multi(formula, graders):
    return {"type": "multi", "name": "combo", "graders": graders, "calculate_output": formula}


@pytest.mark.parametrize("formula,expected", [
    ("0.5 * a + b ^ 2", 0.5 + 0.5625),  # a = 1 (eq), b = 0.75 (fuzzy); ^ is a power, above + in precedence
    ("0.5 * a + b ** 2", 1.0625),
    ("max(a, b) - min(a, b, 0.9)", 0.25),
    ("sqrt(b) * 2", 2 * math.sqrt(0.75)),
    ("floor(b * 10) / 10 + ceil(b)", 1.7),
    ("exp(0) + log(1) + abs(-b)", 1.75),
    ("log(8, 2)", 3.0),
    ("-a ^ 2", -1.0),  # -(a²), as in arithmetic
    ("2 ^ 3 ^ 2", 512.0),  # right-associative: 2^(3^2)
    ("(a + b) / 2", 0.875),
])
def test_multi_calculates_its_output(formula, expected):
    graders = {"a": check("eq", reference="abcd"), "b": similarity("fuzzy_match")}  # a = 1; b = 0.75 (abcd, abce)
    assert _grade(_multi(formula, graders), "abcd", reference="abce") == pytest.approx(expected)


def test_multi_nests_and_fails_in_one_line():
    inner = _multi("a * 2", {"a": check("eq")})
    outer = _multi("inner + 1", {"inner": inner})
    assert _grade(outer, "x", reference="x") == 3.0
    with pytest.raises(GraderError) as info:
        _grade(_multi("a / (a - a)", {"a": check("eq")}), "x", reference="x")
    assert str(info.value) == ("multi grader 'combo': calculate_output 'a / (a - a)': "
                               "ZeroDivisionError: float division by zero")
    with pytest.raises(GraderError, match="math domain error"):
        _grade(_multi("sqrt(a - 2)", {"a": check("eq")}), "x", reference="x")
    assert calculate("a ^ 0.5", {"a": 4.0}, names=frozenset({"a"})) == 2.0


# ------------------------------------------------------------------------------------------ score_model


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1 replying `reply` (a dict: JSON content; an int: that HTTP status;
    'sleep': no reply in time), recording each request."""

    def __init__(self):
        self.reply, self.requests = {"result": 0.7}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                reply = server.reply.pop(0) if isinstance(server.reply, list) else server.reply  # a list: one each
                if reply == "sleep":
                    time.sleep(1.5)
                if isinstance(reply, int):
                    self.send_response(reply)
                    if reply == 429:
                        self.send_header("Retry-After", "3")
                    self.end_headers()
                    self.wfile.write(b"upstream exploded")
                    return
                content = reply if isinstance(reply, str) else json.dumps(reply)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def chat(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # 127.0.0.1 is reached directly, whatever this machine's proxy
    server = ChatServer()
    yield server
    server.close()


def judge(url, **extra):
    return {"type": "score_model", "name": "judge", "model": "grader-1", "base_url": url,
            "input": [{"role": "developer", "content": "Score the answer from 0 to 1."},
                      {"role": "user", "content": [{"type": "input_text",
                                                    "text": "Q: {{item.question}} A: {{sample.output_text}}"}]}],
            **extra}


def test_score_model_reads_the_result_and_sends_the_key(chat, monkeypatch):
    monkeypatch.setenv("GRADER_KEY", "sekrit")
    value = judge(chat.url, api_key_env="GRADER_KEY", sampling_params={"max_completions_tokens": 16, "seed": 3})
    assert _grade(value, "Paris", question="Capital of France?") == pytest.approx(0.7)
    request = chat.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sekrit"
    assert request["body"] == {
        "model": "grader-1", "temperature": 0, "seed": 3, "max_tokens": 16,
        "messages": [{"role": "system", "content": "Score the answer from 0 to 1."},
                     {"role": "user", "content": [{"type": "text", "text": "Q: Capital of France? A: Paris"}]}]}


def test_score_model_clamps_into_its_range_and_reads_plain_numbers(chat):
    chat.reply = {"result": 7, "steps": []}
    assert _grade(judge(chat.url, range=[0, 5]), "x") == 5.0
    chat.reply = {"result": -3}
    assert _grade(judge(chat.url, range=[-1, 1]), "x") == -1.0
    chat.reply = "I would give it 0.4 out of 1."
    assert _grade(judge(chat.url), "x") == pytest.approx(0.4)
    assert read_score("Step 1: the answer is right. Step 2: it is short. Score: 0.9") == 0.9  # not Step 1's 1
    assert read_score("7/10") is None and read_score("Rating: 7/10") is None  # not 7 on a 0-1 range
    chat.reply = "No idea."
    with pytest.raises(UnreadableScore, match="the reply 'No idea.' holds no score"):
        _grade(judge(chat.url), "x")
    from sdk.evaluation.rewards import build_rewards

    (reward,) = build_rewards(ITEMS.validate_python([judge(chat.url)]))  # as trl calls it: no score, the run goes on
    assert reward(["q"], ["a"], reference=["r"]) == [None]
    assert read_score('```json\n{"result": 0.25}\n```') == 0.25 and read_score("1e-1") == 0.1


def test_score_model_failures_name_the_url(chat, monkeypatch):
    from sdk.evaluation import score_model

    waits: list[float] = []
    monkeypatch.setattr(score_model, "_sleep", waits.append)
    chat.reply = 500
    with pytest.raises(GraderError) as info:
        _grade(judge(chat.url), "x")
    assert str(info.value) == (f"score_model grader 'judge': {chat.url}/chat/completions: HTTP 500 Internal Server "
                               "Error: upstream exploded")
    assert len(chat.requests) == 4 and waits == [1.0, 2.0, 4.0]  # tried again after 1, 2 and 4 s
    chat.reply, waits[:] = [429, 503, {"result": 0.5}], []
    assert _grade(judge(chat.url), "x") == 0.5 and waits == [3.0, 2.0]  # the endpoint's Retry-After first
    chat.reply = 400
    with pytest.raises(GraderError, match="HTTP 400"):
        _grade(judge(chat.url), "x")
    assert waits == [3.0, 2.0]  # a bad request is not tried again
    monkeypatch.setattr(score_model, "RETRIES", 0)
    chat.reply = "sleep"
    started = time.monotonic()
    with pytest.raises(GraderError) as info:
        _grade(judge(chat.url, timeout_s=0.3), "x")
    assert time.monotonic() - started < 1.4
    assert f"{chat.url}/chat/completions: no reply within 0.3s (timeout_s)" in str(info.value)
    with pytest.raises(GraderError, match=r"http://127.0.0.1:9/v1/chat/completions: .*Connection refused"):
        _grade(judge("http://127.0.0.1:9/v1"), "x")


def test_score_model_as_a_reward_runs_rows_concurrently_in_order(chat, monkeypatch):
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(RewardError, match=r"objective.rewards\[0\] \(judge\): score_model grader 'judge': "
                                          "api_key_env NOT_SET_KEY is not set where the run executes"):
        build_rewards([item(judge(chat.url, api_key_env="NOT_SET_KEY"))])
    built = reward(judge(chat.url))
    assert built(["q"] * 5, [f"answer {i}" for i in range(5)], question=["Q"] * 5) == [0.7] * 5
    texts = sorted(r["body"]["messages"][1]["content"][0]["text"] for r in chat.requests)
    assert texts == [f"Q: Q A: answer {i}" for i in range(5)]
    chat.reply = 500
    with pytest.raises(RewardError, match=r"objective.rewards\[0\] \(judge\): score_model grader 'judge': .*HTTP 500"):
        built(["q"] * 3, ["a"] * 3, question=["Q"] * 3)


def test_the_chat_request_of_text_parts():
    value = judge("http://h/v1", sampling_params={"temperature": 0.5, "top_p": 0.9, "reasoning_effort": "low"})
    value["input"][1]["content"].append({"type": "output_text", "text": "ref: {{item.ref}}"})
    body = chat_request(item(value), sample=sample_of("x"), item={"ref": "R", "question": "Q"})
    assert body["messages"][1]["content"] == [{"type": "text", "text": "Q: Q A: x"}, {"type": "text", "text": "ref: R"}]
    assert (body["temperature"], body["top_p"], body["reasoning_effort"]) == (0.5, 0.9, "low")


# ------------------------------------------------------------------------------------------ built-in rewards


def test_text_rewards():
    assert reward("exact_match")(["p"] * 2, ["  Paris\n", "Lyon"], reference=["paris", "Paris"]) == [1.0, 0.0]
    # [the cat sat] vs [the cat sat on the mat]: P = 1, R = 1/2, F1 = 2/3
    assert reward("token_f1")(["p"], ["the cat sat"], reference=["the cat sat on the mat"]) == [pytest.approx(2 / 3)]
    # LCS a b d of [a b c d] and [a c b d]: 3/4 each way
    assert reward("rouge_l")(["p"], ["a b c d"], reference=["a c b d"]) == [0.75]
    custom = reward({"type": "exact_match", "reference": "answer"})
    assert custom(["p"] * 2, ["4", "4"], answer=["4", None]) == [1.0, None]  # no reference: not applicable


def test_json_rewards():
    answers = ['{"a": 1}', '```json\n{"a": 1}\n```', "not json"]
    assert reward("json_valid")(["p"] * 3, answers) == [1.0, 1.0, 0.0]
    wanted = '{"city": "Paris", "date": "2024-05-01", "n": 3}'
    got = '{"city": "Paris", "date": "2024-05-02", "n": 3}'
    assert reward("json_fields")(["p"], [got], reference=[wanted]) == [pytest.approx(2 / 3)]  # city, n of 3
    restricted = reward({"type": "json_fields", "fields": ["city", "date"]})
    assert restricted(["p"], [got], reference=[wanted]) == [0.5]  # city of city, date
    assert restricted(["p"], [got], reference=[{"city": "Paris"}]) == [1.0]  # a decoded object works too
    assert restricted(["p"], [got], reference=['{"other": 1}']) == [None]  # none of the fields: not applicable
    with pytest.raises(RewardError, match=r"objective.rewards\[0\] \(json_fields\): the reference in column "
                                          "'reference' is not a JSON object: 'Paris'"):
        reward("json_fields")(["p"], [got], reference=["Paris"])


def test_regex_reward():
    search = reward({"type": "regex", "pattern": r"\d+"})
    full = reward({"type": "regex", "pattern": r"\d+", "match": "full"})
    assert search(["p"] * 3, ["answer: 42", " 42\n", "none"]) == [1.0, 1.0, 0.0]
    assert full(["p"] * 3, ["answer: 42", " 42\n", "none"]) == [0.0, 1.0, 0.0]  # surrounding whitespace aside


def test_tool_call_reward():
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call>'
    wrong = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    openai_form = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]
    tool = reward("tool_call")
    assert tool(["p"] * 2, [call, wrong], reference=[openai_form, openai_form]) == [1.0, 0.0]
    assert tool(["p"] * 2, [call, call], reference=[json.dumps(openai_form), call]) == [1.0, 1.0]
    assert tool(["p"] * 2, ["It is sunny.", call], reference=["It is sunny.", "It is sunny."]) == [1.0, 0.0]
    message = [{"role": "assistant", "content": None, "tool_calls": openai_form}]  # calls the generator parsed
    assert tool(["p"], [message], reference=[{"tool_calls": openai_form}]) == [1.0]


def test_length_reward():
    # max_chars 10: full reward to 10 characters, half at 15, none from 20
    lengths = reward({"type": "length", "max_chars": 10})
    assert lengths(["p"] * 4, ["a" * 10, "a" * 15, "a" * 20, " " + "a" * 25]) == [1.0, 0.5, 0.0, 0.0]


def test_conversational_completions_read_the_assistant_content():
    completions = [[{"role": "assistant", "content": "Paris"}],
                   [{"role": "assistant", "content": [{"type": "text", "text": "Ly"}, {"type": "text", "text": "on"}]}]]
    prompts = [[{"role": "user", "content": "Capital?"}]] * 2
    assert reward("exact_match")(prompts, completions, reference=["paris", "Lyon"]) == [1.0, 1.0]
    echo = {"type": "python", "name": "echo", "source": (
        "def grade(sample, item):\n    return float(item['prompt'][0]['content'] == 'Capital?')\n")}
    assert reward(echo)(prompts, completions) == [1.0, 1.0]  # the prompt is part of the item


def test_a_missing_reference_column_names_the_columns_present():
    with pytest.raises(RewardError) as info:
        reward({"type": "exact_match", "reference": "answer"})(["p"], ["x"], reference=["x"], topic=["geo"],
                                                                trainer_state=object())
    assert str(info.value) == ("objective.rewards[0] (exact_match): no column 'answer' in the rows "
                               "(columns: prompt, reference, topic)")


def test_json_encoded_columns_are_decoded_for_graders():
    value = {"type": "string_check", "name": "city", "input": "{{sample.output_text}}",
             "reference": "{{item.meta.city}}", "operation": "eq"}
    encoded = [json.dumps({"city": "Lyon"}), json.dumps({"city": "Paris"})]
    built = build_rewards([item(value)], json_columns=["meta"])[0]
    assert built(["p"] * 2, ["Lyon", "Lyon"], meta=encoded) == [1.0, 0.0]
    plain = build_rewards([item({**value, "reference": "{{item.meta}}"})], json_columns=["meta"])[0]
    assert plain(["p"] * 2, ["Lyon", "Lyon"], meta=["Lyon", '"Lyon"']) == [1.0, 1.0]  # a plain string stays as is


# ------------------------------------------------------------------------------------------ function rewards


def write(folder: Path, text: str, name: str = "rewards.py") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_function_reward_from_the_shipped_copy(tmp_path):
    path = write(tmp_path, (
        "def score(prompts, completions, completion_ids=None, **kwargs):\n"
        "    return [len(c) * kwargs['meta'][i]['scale'] for i, c in enumerate(completions)]\n"))
    built = build_rewards(items("rewards.py:score"), files={"rewards.py:score": path}, json_columns=["meta"])[0]
    assert built.__name__ == "score"
    meta = [json.dumps({"scale": 2}), json.dumps({"scale": 0.5})]
    assert built(["p"] * 2, ["abc", "abcd"], meta=meta, trainer_state=object()) == [6.0, 2.0]


def test_two_rewards_from_one_file_load_it_once(tmp_path):
    path = write(tmp_path, ("LOADS = []\nLOADS.append(1)\n\ndef a(prompts, completions, **kwargs):\n"
                            "    return [len(LOADS)] * len(completions)\n\nb = a\n"))
    built = build_rewards(items("rewards.py:a", "rewards.py:b"), files={"rewards.py:a": path, "rewards.py:b": path})
    assert [f.__name__ for f in built] == ["a", "b"] and built[1](["p"], ["x"]) == [1.0]


def test_reward_functions_pickle(tmp_path):
    import pickle

    parsed = items("exact_match", {"type": "regex", "pattern": "x", "match": "full"}, check("eq"),
                   {"type": "multi", "name": "m", "graders": {"a": check("eq")}, "calculate_output": "a"})
    copies = pickle.loads(pickle.dumps(build_rewards(parsed)))
    assert [f.__name__ for f in copies] == ["exact_match", "regex", "check", "m"]
    assert copies[3](["p"], ["x"], reference=["x"]) == [1.0]


def test_a_function_reward_without_a_copy_is_read_relative_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, "def score(prompts, completions, **kwargs):\n    return [None, True]\n", "mine.py")
    monkeypatch.chdir(tmp_path)
    assert reward("mine.py:score")(["p"] * 2, ["a", "b"]) == [None, 1.0]


def test_a_function_that_raises_names_the_users_file_and_line(tmp_path):
    path = write(tmp_path, (
        "def ratio(text):\n"
        "    return len(text) / 0\n"
        "\n"
        "def score(prompts, completions, **kwargs):\n"
        "    return [ratio(c) for c in completions]\n"))
    built = build_rewards(items({"type": "function", "function": "rewards.py:score", "name": "my_reward"}),
                          files={"rewards.py:score": path})[0]
    with pytest.raises(RewardError) as info:
        built(["p"], ["x"])
    assert str(info.value) == "objective.rewards[0] (my_reward): rewards.py:2: ZeroDivisionError: division by zero"
    assert isinstance(info.value, FinetuneError)


@pytest.mark.parametrize("returned,expected", [
    ("'0.5'", "rewards.py:score returned str, not a list of 2 numbers (or None)"),
    ("[1.0]", "rewards.py:score returned 1 rewards for 2 completions"),
    ("[1.0, 'high']", "rewards.py:score returned 'high' for completion 1, not a finite number (or None)"),
    ("[1.0, float('inf')]", "rewards.py:score returned inf for completion 1, not a finite number (or None)"),
])
def test_a_function_returning_no_numbers_is_named(tmp_path, returned, expected):
    path = write(tmp_path, f"def score(prompts, completions, **kwargs):\n    return {returned}\n")
    built = build_rewards(items("rewards.py:score"), files={"rewards.py:score": path})[0]
    with pytest.raises(RewardError) as info:
        built(["p"] * 2, ["a", "b"])
    assert str(info.value) == f"objective.rewards[0] (score): {expected}"


def test_nan_is_not_applicable(tmp_path):
    path = write(tmp_path, "def score(prompts, completions, **kwargs):\n    return [float('nan'), 2]\n")
    built = build_rewards(items("rewards.py:score"), files={"rewards.py:score": path})[0]
    assert built(["p"] * 2, ["a", "b"]) == [None, 2.0]


def test_a_numpy_result_reads_as_numbers(tmp_path):
    pytest.importorskip("numpy")
    path = write(tmp_path, ("import numpy as np\n\ndef score(prompts, completions, **kwargs):\n"
                            "    return np.array([0.5, np.nan], dtype=np.float32)\n"))
    built = build_rewards(items("rewards.py:score"), files={"rewards.py:score": path})[0]
    assert built(["p"] * 2, ["a", "b"]) == [0.5, None]


@pytest.mark.parametrize("source,name,expected", [
    ("def score(prompts, completions):\n    return [\n", "score", "rewards.py:2: SyntaxError: '[' was never closed"),
    ("import json\nraise RuntimeError('no config')\n", "score", "rewards.py:2: RuntimeError: no config"),
    ("import not_a_module_anywhere\n", "score",
     "rewards.py:1: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("def scorer(p, c, **k):\n    return []\n", "score", "rewards.py defines no 'score' (it defines scorer)"),
    ("score = 3\n", "score", "rewards.py: score is a int, not a function"),
])
def test_loading_a_function_fails_in_one_line(tmp_path, source, name, expected):
    path = write(tmp_path, source)
    with pytest.raises(RewardError) as info:
        load_function(path, name, shown="rewards.py")
    assert str(info.value) == expected


def test_a_missing_function_file_fails_at_build(tmp_path):
    with pytest.raises(RewardError, match=r"objective.rewards\[0\] \(score\): gone.py: no such file"):
        build_rewards(items("gone.py:score"), files={"gone.py:score": tmp_path / "gone.py"})


# ------------------------------------------------------------------------------------------ held-out scoring


def test_score_rows_weighs_and_averages():
    parsed = items({"type": "exact_match", "weight": 2}, {"type": "length", "max_chars": 5, "weight": -1},
                   {"type": "regex", "pattern": "Paris", "weight": 0}, {"type": "exact_match", "reference": "other"})
    rows = [{"reference": "Paris", "other": None}, {"reference": "Paris", "other": None},
            {"reference": None, "other": None}]
    answers = ["Paris", "The capital is Paris", "Paris"]
    result = score_rows(parsed, answers=answers, rows=rows, prompts=["Capital?"] * 3)
    # exact: 1, 0, None; length (5 chars): 1, 2 - 20/5 -> 0, 1; regex: 1, 1, 1 (weight 0); other: no reference
    # totals: 2·1 - 1 = 1;  0 - 0 = 0;  (None counts 0) - 1 = -1  -> mean 0
    assert result == {"mean": 0.0, "means": {"exact_match": 0.5, "length": pytest.approx(2 / 3, abs=1e-6),
                                             "regex": 1.0},
                      "counts": {"exact_match": 2, "length": 3, "regex": 3, "exact_match_3": 0}, "n": 3}


def test_score_rows_hands_prompts_to_functions(tmp_path):
    path = write(tmp_path, "def echo(prompts, completions, **kwargs):\n    return [len(p) for p in prompts]\n")
    parsed = items("rewards.py:echo")
    from_rows = score_rows(parsed, answers=["a"], rows=[{"prompt": "four"}], files={"rewards.py:echo": path})
    given = score_rows(parsed, answers=["a"], rows=[{}], prompts=["twelve chars"], files={"rewards.py:echo": path})
    assert from_rows["mean"] == 4.0 and given["means"] == {"echo": 12.0}


def test_the_reward_modules_import_no_torch():
    code = ("import sys, sdk.objectives.rewards, sdk.evaluation.graders, sdk.evaluation.rewards; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
