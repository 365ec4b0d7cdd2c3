"""Data formats: one hand-written file per format trains the tiny model, and the first row's training text
(as the trainer tokenized it: data_preview.json) is exactly what is written here; malformed files are
refused before launch with file:line and the reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import sdk
from sdk.objectives import OBJECTIVES
from sdk.store import open_store
from sdk.store.runfolder import RunFolder

HERE = Path(__file__).parent
FORMATS = HERE / "data" / "formats"
MALFORMED = HERE / "data" / "malformed"

# format file -> (detected format, data_preview.json of its first row). `text` is what the model reads,
# `trained` the tokens the loss is on. <|end|> is the tiny tokenizer's EOS; its chat template writes
# <|role|>\n content, with <|end|> after assistant turns (and, rendered with transformers' trim_blocks, no
# newline after a turn: the "\n" that follows `{% endif %}` in the template is trimmed).
FUNCTIONS = ('{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", '
             '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
             '{"type": "function", "function": {"name": "get_time", "description": "Local time in a city", '
             '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}')
TOOLS_SYSTEM = ("<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                f"with function signatures within <tools></tools> XML tags:\n<tools>\n{FUNCTIONS}\n</tools>\n\nFor each "
                "function call, return a json object with function name and arguments within <tool_call></tool_call> XML "
                'tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def CALL(name: str, city: str) -> str:  # noqa: N802 - reads as the text it stands for
    return f'<tool_call>\n{{"name": "{name}", "arguments": {{"city": "{city}"}}}}\n</tool_call>'


EXPECTED = {
    "alpaca": ("alpaca", {  # template auto: the model's chat template (the tiny model has one), as a chat endpoint sends it
        "text": "<|user|>\nName the topic of the headline.\n\nStorm floods the coastal city<|assistant|>\nWorld<|end|>",
        "trained": "World<|end|>"}),
    "sharegpt": ("sharegpt", {  # the first of its two assistant turns (one example per trained turn)
        "text": "<|system|>\nBe brief.<|user|>\nWhat is the capital of France?<|assistant|>\nParis.<|end|>",
        "trained": "Paris.<|end|>"}),
    "messages": ("messages", {  # the weight-0 answer stays in the prompt, unlearned
        "text": "<|user|>\nTranslate 'cat' to French.<|assistant|>\nchatte<|end|><|user|>\nThe masculine, please."
                "<|assistant|>\nchat<|end|>",
        "trained": "chat<|end|>"}),
    "prompt_completion": ("prompt_completion", {"text": "The sky is blue.<|end|>", "trained": " blue.<|end|>"}),
    "text": ("text", {"text": "The quick brown fox jumps over the lazy dog.<|end|>",
                      "trained": "The quick brown fox jumps over the lazy dog.<|end|>"}),
    "preference": ("preference", {"prompt": "Topic of: Striker scores twice in the final",
                                  "chosen": "Sports<|end|>", "rejected": "Business<|end|>"}),
    "preference_implicit": ("preference", {"prompt": "<|user|>\nIs the earth round?<|assistant|>\n",
                                           "chosen": "Yes, roughly a sphere.<|end|>", "rejected": "No, it is flat.<|end|>"}),
    "openai_preference": ("openai_preference", {"prompt": "<|user|>\nGreet me politely.<|assistant|>\n",
                                                "chosen": "Good morning, how can I help?<|end|>",
                                                "rejected": "What do you want?<|end|>"}),
    "messages_parts": ("messages", {  # OpenAI content parts: text parts joined with a newline, as vLLM joins them
        "text": "<|system|>\nAnswer in one word.<|user|>\nHeadline: Storm floods the coastal city\nWhich topic?"
                "<|assistant|>\nWorld<|end|>",
        "trained": "World<|end|>"}),
    "sharegpt_preference": ("preference", {"prompt": "<|system|>\nBe polite.<|user|>\nCan you help me?<|assistant|>\n",
                                           "chosen": "Of course, gladly.<|end|>", "rejected": "No.<|end|>"}),
    "corpus": ("text", {"text": "Rivers carry water from the hills to the sea.\nAlong the way they shape valleys and plains.\n<|end|>",
                        "trained": "Rivers carry water from the hills to the sea.\nAlong the way they shape valleys and plains.\n<|end|>"}),
    "corpus_blocks": ("text", {"text": "The first harbour was built of stone.\nShips came from the south.<|end|>",
                               "trained": "The first harbour was built of stone.\nShips came from the south.<|end|>"}),
    # KTO reads its rows in order, so the node shuffles them first (seeded): the first row is the file's 4th / 3rd
    "feedback": ("feedback", {"prompt": "Topic of: Storm floods the coastal city", "completion": "Business<|end|>",
                              "label": False}),
    "feedback_messages": ("feedback", {"prompt": "<|user|>\nRecommend a short book.<|assistant|>\n",
                                       "completion": "Try The Old Man and the Sea.<|end|>", "label": True}),
    # tool calling (the tiny template has no tool support: the Hermes format in front of it, sdk.data.tools); the
    # first trained turn of a conversation with two calls: the first call, the loss on it only
    "tools": ("messages", {
        "text": TOOLS_SYSTEM + "<|user|>\nWeather in Paris, then in Rome?<|assistant|>\n" + CALL("get_weather", "Paris") + "<|end|>",
        "trained": CALL("get_weather", "Paris") + "<|end|>"}),
    "sharegpt_tools": ("sharegpt", {  # function_call / observation turns, tools as JSON text
        "text": TOOLS_SYSTEM + "<|user|>\nWhat time is it in Lima?<|assistant|>\n" + CALL("get_time", "Lima") + "<|end|>",
        "trained": CALL("get_time", "Lima") + "<|end|>"}),
}
TRAIN_ROWS = {"sharegpt": 5, "corpus": 1, "corpus_blocks": 3, "feedback": 6,  # sharegpt: 4 conversations, 5 assistant turns
              "tools": 6, "sharegpt_tools": 4}  # one row per assistant turn: calls and answers
FIRST_LINE = {"feedback": 4, "feedback_messages": 3}  # the line of the first training row (1 unless shuffled)
FILE_TYPES = {"corpus_blocks": "txt_blocks"}  # the rest: from the suffix
MAX_LENGTH = {"tools": 1024, "sharegpt_tools": 1024}  # the tools' schemas in the system turn: ~700 tiny-tokenizer tokens


def source_of(name: str) -> Path:
    return next(FORMATS.glob(f"{name}.*"))


def objective_for(name: str) -> str:
    return "dpo" if "preference" in name else "kto" if name.startswith("feedback") else "sft"


def format_spec(name: str, output: str) -> sdk.FineTuneSpec:
    source = str(source_of(name))
    return sdk.FineTuneSpec(
        name=f"fmt-{name.replace('_', '-')}", model="tiny:llama", method={"name": "lora", "r": 4, "alpha": 8},
        objective=objective_for(name),
        data={"source": source, "eval_source": source, "max_length": MAX_LENGTH.get(name, 128),
              "file_type": FILE_TYPES.get(name, "auto")},  # eval_source: train rows keep file order
        train={"max_steps": 2, "batch_size": 2, "lr": 1e-3, "precision": "fp32", "logging_steps": 1},
        eval={"num_samples": 2, "generations": 0, "before": False}, output=output, env={"OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def format_runs(tmp_path_factory):
    """All eight formats trained at once (one process each), then read back from the store."""
    root = tmp_path_factory.mktemp("formats")
    with pytest.MonkeyPatch.context() as env:  # restored when the module is done
        env.setenv("FINETUNE_HOME", str(root / "home"))
        runs = {name: sdk.submit(format_spec(name, str(root / "runs"))) for name in EXPECTED}
        deadline = time.time() + 420
        for run in runs.values():
            run.wait(timeout=max(1, deadline - time.time()), progress=False)
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_format_trains_and_renders_exactly(format_runs, name):
    run = format_runs[name]
    status = run.status()
    assert status.state == "succeeded", f"{name}: {status.error}\n{str(run.logs())[-2000:]}"
    fmt, expected = EXPECTED[name]
    folder = RunFolder(*_split(run.uri))
    preview = folder.read_json("data_preview.json")
    assert preview.pop("where") == f"{source_of(name)}:{FIRST_LINE.get(name, 1)}"
    assert preview == expected
    assert f"data.source {fmt}" in str(run.logs())
    summary = run.summary()
    assert summary.train_rows == TRAIN_ROWS.get(name, 4)
    assert summary.steps == 2


def _split(uri: str):
    from sdk.store import split_run_uri

    store_uri, run_id = split_run_uri(uri)
    return open_store(store_uri), run_id


# ------------------------------------------------------------------------------------------ refusals

# file -> (line, what the message says)
REFUSED = {
    "sharegpt_unknown_role.jsonl": (2, "conversations[1]: unknown role 'bot'"),
    "sharegpt_roles_do_not_alternate.jsonl": (3, "conversations[1]: roles do not alternate: user after user"),
    "sharegpt_turn_not_object.jsonl": (1, "conversations[0]: a turn must be an object"),
    "messages_empty_assistant.jsonl": (1, "messages[1]: empty assistant turn"),
    "messages_missing_content.jsonl": (2, "messages[0]: missing field 'content'"),
    "messages_ends_with_user.jsonl": (1, "ends with a user turn"),
    "messages_bad_weight.jsonl": (1, "weight must be 0 or 1"),
    "messages_all_weights_zero.jsonl": (1, "every assistant turn has weight 0"),
    "messages_late_system.jsonl": (1, "messages[1]: a system turn may only come first"),
    "messages_content_not_text.jsonl": (2, "messages[1].content must be text or a list of content parts, not int"),
    "messages_image_part.jsonl": (1, "messages[0].content[1]: a part of type 'image_url': only text parts can be trained"),
    "preference_sharegpt_two_turns.jsonl": (1, "'chosen' must be one assistant turn (the response), not 2 turns"),
    "alpaca_missing_output.jsonl": (3, "missing field 'output'"),
    "alpaca_empty_output.jsonl": (2, "empty 'output'"),
    "preference_chosen_equals_rejected.jsonl": (2, "chosen equals rejected"),
    "preference_repeats_prompt.jsonl": (1, "repeat the prompt"),
    "preference_implicit_as_text.jsonl": (1, "must be conversations that share the prompt turns"),
    "openai_preference_missing_messages.jsonl": (1, "missing field 'input.messages'"),
    "feedback_label_not_boolean.jsonl": (2, "'label' must be true or false (binary feedback: is the answer desirable?), not str 'no'"),
    "feedback_answer_not_last.jsonl": (1, "messages: ends with a user turn; a training conversation ends with the assistant's answer"),
    "tools_bad_arguments.jsonl": (2, "messages[1].tool_calls[0]: arguments is not valid JSON"),
    "tools_result_without_call.jsonl": (1, "messages[1]: a tool result without a call before it"),
    "tools_unknown_function.jsonl": (1, "messages[1]: calls 'get_wether', which is not among the row's tools (get_weather)"),
    "tools_wrong_call_id.jsonl": (1, "messages[2]: tool_call_id 'call_9' answers no call of the assistant's turn before it"),
    "tools_missing.jsonl": (1, "messages[1]: a tool call, but the row has no 'tools'"),
    "sharegpt_tools_call_not_json.jsonl": (1, "conversations[1].value is not valid JSON"),
    "tools_call_unanswered.jsonl": (1, "messages[3]: the call(s) to get_time before it got no tool result"),
    "preference_with_tools.jsonl": (1, "a 'tools' column in preference rows: tool calling trains from chat rows"),
    "not_json.jsonl": (2, "not valid JSON"),
    "not_an_object.jsonl": (2, "must be a JSON object, not list"),
    "extra_cells.csv": (3, "4 cells for 3 header columns"),
    "item_not_object.json": (5, "must be a JSON object, not str"),
    "completion_from_the_user.jsonl": (1, "'completion' must be one assistant turn"),
    "unknown_columns.jsonl": (1, "cannot tell the format from the columns (question, answer)"),
    "not_utf8.jsonl": (2, "not valid UTF-8 (byte 0xe9 at column 49)"),  # never trained as U+FFFD
    "not_utf8.csv": (3, "not valid UTF-8 (byte 0xe9 at column 20)"),
    "nested_too_deeply.jsonl": (2, "JSON nested too deeply"),  # a RecursionError traceback before
}


def test_every_malformed_file_is_hand_written_and_listed():
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(REFUSED) and len(REFUSED) >= 15


@pytest.mark.parametrize("file", sorted(REFUSED))
def test_malformed_file_is_refused_before_launch(cli_here, run_cli, tmp_path, file):
    """Every file through the CLI in this process; the first also through a real `finetune` process."""
    line, reason = REFUSED[file]
    path = MALFORMED / file
    objective = objective_for(file)
    result = (run_cli if file == sorted(REFUSED)[0] else cli_here)("launch", "tiny", "--local", f"--set=data.source={path}", "--set=data.eval_source=null",
                     f"--set=objective={objective}", f"--set=output={tmp_path / 'runs'}",
                     env={"FINETUNE_HOME": str(tmp_path / "home")})
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out
    assert f"{path}:{line}: " in result.stderr and reason in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists(), "nothing is launched: no run folder"


def test_the_first_20_bad_rows_are_listed_with_a_count_of_the_rest(tmp_path):
    from sdk.data.rows import DataError

    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": "" if i % 2 else "a"}]}) + "\n"
                            for i in range(50)))
    spec = format_spec("messages", str(tmp_path / "runs")).model_copy(deep=True)
    spec.data.source = spec.data.eval_source = str(data)
    with pytest.raises(DataError) as caught:
        sdk.submit(spec)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"data.source: 25 bad row(s) of 50 in {data}, format messages")
    assert lines[1] == f"  {data}:2: messages[1]: empty assistant turn"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 5 more"
    assert not (tmp_path / "runs").exists()


def test_preference_rows_need_dpo_and_dpo_needs_preference_rows(tmp_path):
    from sdk.data.rows import DataError

    spec = format_spec("preference", str(tmp_path / "runs")).model_copy(update={"objective": OBJECTIVES["sft"].settings()})
    with pytest.raises(DataError, match="preference rows are preference pairs: set objective: dpo"):
        sdk.submit(spec)
    spec = format_spec("alpaca", str(tmp_path / "runs")).model_copy(update={"objective": OBJECTIVES["dpo"].settings()})
    with pytest.raises(DataError, match="objective dpo trains on preference pairs"):
        sdk.submit(spec)
    for objective in ("sft", "dpo"):  # binary feedback trained as plain examples would learn the bad answers too
        spec = format_spec("feedback", str(tmp_path / "runs")).model_copy(update={"objective": OBJECTIVES[objective].settings()})
        with pytest.raises(DataError, match=r"feedback rows are binary-feedback rows \(one answer with a true/false "
                                            r"label\): set objective: kto"):
            sdk.submit(spec)
    spec = format_spec("alpaca", str(tmp_path / "runs")).model_copy(update={"objective": OBJECTIVES["kto"].settings()})
    with pytest.raises(DataError, match="objective kto trains on binary-feedback rows"):
        sdk.submit(spec)
    assert not (tmp_path / "runs").exists()


def test_validate_reports_format_and_chat_fallback(run_cli):
    args = ["validate", "tiny", f"--set=data.source={FORMATS / 'sharegpt.jsonl'}", "--set=data.eval_source=null"]
    refused = run_cli(*args)  # the tiny recipe writes the instruction template, which has no turns
    assert refused.returncode == 2 and "cannot be written in the instruction template; use template: chat" in refused.stderr
    result = run_cli(*args, "--set=data.template=auto")
    assert result.returncode == 0, result.stderr
    assert f"data.source: {FORMATS / 'sharegpt.jsonl'}: 4 rows, format sharegpt (detected from" in result.stdout
    assert "does not mark assistant turns" in result.stdout and "its own example" in result.stdout


def test_a_named_format_skips_detection_and_mapped_columns_are_read():
    from sdk.data.samples import load_samples

    spec = format_spec("alpaca", "/tmp/unused").model_copy(deep=True)
    spec.data.format = "prompt_completion"
    check = load_samples(spec, str(FORMATS / "alpaca.jsonl"), "data.source")
    assert check.format == "prompt_completion" and check.detected_from is None
    assert check.bad[0][1] == "missing field 'prompt'"
    spec.data.fields = spec.data.fields.model_copy(update={"prompt": "instruction", "completion": "output"})
    check = load_samples(spec, str(FORMATS / "alpaca.jsonl"), "data.source")
    assert not check.bad and check.samples[0].prompt == "Name the topic of the headline."


def test_s3_data_is_checked_streamed_before_launch(s3_env, tmp_path):
    import boto3

    _, bucket = s3_env
    client = boto3.client("s3")
    client.put_object(Bucket=bucket, Key="data/bad.jsonl", Body=(MALFORMED / "sharegpt_unknown_role.jsonl").read_bytes())
    spec = format_spec("sharegpt", str(tmp_path / "runs")).model_copy(deep=True)
    spec.data.source = spec.data.eval_source = f"s3://{bucket}/data/bad.jsonl"
    from sdk.data.rows import DataError

    with pytest.raises(DataError, match=rf"s3://{bucket}/data/bad.jsonl:2: conversations\[1\]: unknown role 'bot'"):
        sdk.submit(spec)
    assert not (tmp_path / "runs").exists()


MARKED_TEMPLATE = (  # the tiny template with the assistant's content marked for the loss
    "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
    "<|end|>{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def marked_model(tmp_path_factory):
    """The tiny model in a local directory whose chat template marks assistant turns ({% generation %})."""
    import shutil

    from launch.tiny import ensure_tiny

    folder = tmp_path_factory.mktemp("marked") / "model"
    shutil.copytree(ensure_tiny("llama"), folder)
    (folder / "chat_template.jinja").write_text(MARKED_TEMPLATE)
    return folder


@pytest.mark.slow
def test_a_template_that_marks_assistant_turns_trains_whole_conversations(marked_model, tmp_path, run_cli):
    spec = format_spec("sharegpt", str(tmp_path / "runs")).model_copy(deep=True)
    spec.model.id = str(marked_model)
    validated = run_cli("validate", "tiny", f"--set=model={marked_model}", f"--set=data.source={FORMATS / 'sharegpt.jsonl'}",
                        "--set=data.eval_source=null", "--set=data.template=auto")
    assert validated.returncode == 0 and "the chat template marks assistant turns" in validated.stdout, validated.stderr
    run = sdk.submit(spec)
    status = run.wait(timeout=300, progress=False)
    assert status.state == "succeeded", f"{status.error}\n{str(run.logs())[-2000:]}"
    preview = RunFolder(*_split(run.uri)).read_json("data_preview.json")
    assert preview["text"] == ("<|system|>\nBe brief.<|user|>\nWhat is the capital of France?<|assistant|>\nParis.<|end|>"
                               "<|user|>\nAnd of Spain?<|assistant|>\nMadrid.<|end|>")
    assert preview["trained"] == "Paris.<|end|>Madrid.<|end|>"  # both answers, nothing of the user's
    assert run.summary().train_rows == 4  # one row per conversation


@pytest.mark.slow
def test_a_tool_conversation_learns_its_calls_and_answer_not_the_tool_results(marked_model, tmp_path, run_cli):
    """Two tool calls, their results and the answer in one training row (the template marks assistant turns): the
    loss covers the two calls and the answer, never the results the tools returned or the user's turn."""
    validated = run_cli("validate", "tiny", f"--set=model={marked_model}", f"--set=data.source={FORMATS / 'tools.jsonl'}",
                        "--set=data.eval_source=null", "--set=data.template=auto", "--set=data.max_length=1024")
    assert validated.returncode == 0, validated.stderr
    assert "tools: 3 row(s) offer tools; the model's chat template has no tool support" in validated.stdout
    spec = format_spec("tools", str(tmp_path / "runs")).model_copy(deep=True)
    spec.model.id = str(marked_model)
    run = sdk.submit(spec)
    status = run.wait(timeout=300, progress=False)
    assert status.state == "succeeded", f"{status.error}\n{str(run.logs())[-2000:]}"
    preview = RunFolder(*_split(run.uri)).read_json("data_preview.json")
    paris, rome = CALL("get_weather", "Paris"), CALL("get_weather", "Rome")
    answer = "Paris: 18 C and sunny. Rome: 24 C and clear."
    assert preview["text"] == (
        f"{TOOLS_SYSTEM}<|user|>\nWeather in Paris, then in Rome?<|assistant|>\n{paris}<|end|>"
        f"<|user|>\n<tool_response>\n18 C, sunny\n</tool_response><|assistant|>\n{rome}<|end|>"
        f"<|user|>\n<tool_response>\n24 C, clear\n</tool_response><|assistant|>\n{answer}<|end|>")
    assert preview["trained"] == f"{paris}<|end|>{rome}<|end|>{answer}<|end|>"  # the calls and the answer only
    summary = run.summary()
    assert summary.train_rows == 3 and summary.tool_calling.parser == "hermes" and not summary.tool_calling.native
    template = RunFolder(*_split(run.uri)).read_text("chat_template.jinja")  # what serve and generate render with
    assert template.endswith(MARKED_TEMPLATE) and "<tool_call>" in template


# OpenAI chat's `weight: 0` on an assistant turn: the turn stays in the conversation, out of the loss. Contents are
# distinct (none inside another), so each is found in a rendered row by its text.
THREE_ANSWERS = [  # three assistant turns, the middle one unlearned
    {"role": "system", "content": "Answer about capitals."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "Now guess wrong on purpose."},
    {"role": "assistant", "content": "Lyon, or so I guessed.", "weight": 0},
    {"role": "user", "content": "Capital of Spain?"},
    {"role": "assistant", "content": "Madrid it is.", "weight": 1}]
ONE_LEARNED = [  # a weight-0 turn in a conversation that learns one turn only
    {"role": "user", "content": "Capital of Italy?"},
    {"role": "assistant", "content": "Milan, I think.", "weight": 0},
    {"role": "user", "content": "Check again."},
    {"role": "assistant", "content": "Rome, in fact."}]
UNWEIGHTED = [
    {"role": "user", "content": "Capital of Peru?"},
    {"role": "assistant", "content": "Lima."},
    {"role": "user", "content": "And of Chile?"},
    {"role": "assistant", "content": "Santiago."}]


def _spans(text: str, conversations: list[list[dict]]) -> list[tuple[int, int, dict]]:
    """(start, end, turn) of each turn's content that the rendered row holds."""
    return [(at, at + len(t["content"]), t) for turns in conversations for t in turns
            if (at := text.find(t["content"])) >= 0]


@pytest.mark.parametrize("template, conversations, route", [
    ("tiny", [THREE_ANSWERS], "per_turn"),  # no {% generation %} marks: one example per trained turn
    ("marked", [THREE_ANSWERS], "per_turn"),  # marks, but a weight-0 turn: assistant masks would train it
    ("marked", [ONE_LEARNED, UNWEIGHTED], "per_turn"),  # the weight-0 row learns one turn: still per turn
    ("marked", [UNWEIGHTED], "assistant_masks"),  # no weight 0: whole conversations under the template's masks
], ids=["tiny-template", "marked-template", "marked-one-learned-turn", "marked-unweighted"])
def test_a_weight_0_answer_is_out_of_the_loss_the_trainer_computes(marked_model, tmp_path, template, conversations,
                                                                    route):
    """Rows through the node's data path (launch.data.prepare) and trl's SFTTrainer as the node builds it
    (launch.train.build_trainer): in the labels it prepared, every token of a weight-0 answer and of a system or user
    turn is -100 (as are the role headers), and each weight-1 answer is learned, every token of it, in one row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.data import prepare
    from launch.hardware import hardware
    from launch.tiny import ensure_tiny
    from launch.train import build_trainer
    from sdk.data.check import check_data

    model_dir = marked_model if template == "marked" else ensure_tiny("llama")
    source = tmp_path / "weighted.jsonl"
    source.write_text("".join(json.dumps({"messages": turns}) + "\n" for turns in conversations))
    spec = sdk.FineTuneSpec(model=str(model_dir), data={"source": str(source), "eval_split": 0, "max_length": 256},
                            train={"max_steps": 1, "batch_size": 1, "precision": "fp32"}, output=str(tmp_path / "runs"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare(spec, tokenizer, model_type="llama")
    assert data.assistant_only_loss == (route == "assistant_masks"), data.notes
    if template == "marked" and route == "per_turn":
        assert any("weight 0" in note for note in data.notes), data.notes
    chat = [note for note in data.notes if note.startswith("chat: ")]
    assert chat and chat[0] in check_data(spec).notes  # `finetune validate` says the route the node takes
    trainer = build_trainer(spec, AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, data, precision="fp32",
                            hardware=hardware(), attention="sdpa", workdir=tmp_path, sink=None)
    assert trainer.args.completion_only_loss and trainer.args.assistant_only_loss == (route == "assistant_masks")

    learned: dict[str, int] = {}  # weight-1 answer -> the rows that train every token of it
    unlearned_seen = set()
    for row in trainer.train_dataset:
        ids, labels = row["input_ids"], row["labels"]
        pieces = [tokenizer.decode([i]) for i in ids]
        text = "".join(pieces)
        assert text == tokenizer.decode(ids)
        starts = [sum(map(len, pieces[:i])) for i in range(len(pieces))]
        tokens = [(a, a + len(p), label != -100) for a, p, label in zip(starts, pieces, labels, strict=True)]
        assert any(trained for *_, trained in tokens), text
        for piece, (*_, trained) in zip(pieces, tokens, strict=True):  # headers: never trained
            assert not (trained and piece in ("<|system|>", "<|user|>", "<|assistant|>")), text
        answers = []  # the weight-1 answers this row trains, and their <|end|>
        for start, end, turn in _spans(text, conversations):
            inside = [trained for a, b, trained in tokens if a < end and b > start]
            if turn["role"] != "assistant" or turn.get("weight", 1) == 0:
                assert not any(inside), f"{turn} is trained in {text!r}"
                unlearned_seen.update([turn["content"]] if turn["role"] == "assistant" else [])
            elif all(inside):
                learned[turn["content"]] = learned.get(turn["content"], 0) + 1
                answers.append((start, end + len("<|end|>")))
            else:
                assert not any(inside), f"{turn} is partly trained in {text!r}"
        for a, b, trained in tokens:  # and nothing else is
            assert not trained or any(start <= a and b <= end for start, end in answers), (text[a:b], text)
    weight_1 = [t["content"] for turns in conversations for t in turns
                if t["role"] == "assistant" and t.get("weight", 1) == 1]
    weight_0 = {t["content"] for turns in conversations for t in turns if t.get("weight", 1) == 0}
    assert learned == dict.fromkeys(weight_1, 1)  # each learned once
    assert unlearned_seen == weight_0  # and each weight-0 answer was there, in a prompt, its tokens checked


@pytest.mark.slow
def test_the_client_counts_tokens_as_the_model_tokenizer_does(run_cli):
    from transformers import AutoTokenizer

    from launch.tiny import ensure_tiny
    from sdk.data.formats import FORMATS as REGISTERED
    from sdk.data.formats import Context

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny("llama"))
    first = json.loads((FORMATS / "sharegpt.jsonl").read_text().splitlines()[0])
    turns = REGISTERED["sharegpt"].normalize(first, Context(fields=sdk.FineTuneSpec(model="m", data="d").data.fields)).turns
    n = len(tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"])
    result = run_cli("validate", "tiny", f"--set=data.source={FORMATS / 'sharegpt.jsonl'}", "--set=data.eval_source=null",
                     "--set=data.template=auto", f"--set=data.max_length={n - 1}")
    assert result.returncode == 0, result.stderr
    assert f"data.source: 1 of 4 rows are longer than max_length {n - 1} tokens (longest {n}) and will be truncated" in result.stdout
    # a tool conversation: the client renders the Hermes prologue + the template with jinja2 as transformers does
    from sdk.data.tools import tool_template

    first = json.loads((FORMATS / "tools.jsonl").read_text().splitlines()[0])
    sample = REGISTERED["messages"].normalize(first, Context(fields=sdk.FineTuneSpec(model="m", data="d").data.fields))
    text = tokenizer.apply_chat_template(sample.turns, tools=sample.tools, tokenize=False,
                                         chat_template=tool_template(tokenizer.chat_template, "llama").source)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    result = run_cli("validate", "tiny", f"--set=data.source={FORMATS / 'tools.jsonl'}", "--set=data.eval_source=null",
                     "--set=data.template=auto", f"--set=data.max_length={n - 1}")
    assert result.returncode == 0, result.stderr
    assert f"data.source: 1 of 3 rows are longer than max_length {n - 1} tokens (longest {n}) and will be truncated" in result.stdout


def test_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    from sdk.data.samples import load_samples

    spec = format_spec("alpaca", str(tmp_path / "runs"))
    for name, body in (("bom.jsonl", '{"instruction": "Say hi", "output": "Hi"}\n'), ("bom.csv", "instruction,output\nSay hi,Hi\n"),
                       ("bom.json", '[{"instruction": "Say hi", "output": "Hi"}]')):
        path = tmp_path / name
        path.write_bytes("\ufeff".encode() + body.encode())  # as spreadsheet tools on Windows save them
        check = load_samples(spec, str(path), "data.source")
        assert not check.bad and check.format == "alpaca" and check.samples[0].completion == "Hi", (name, check.bad)


def test_plain_text_files_follow_the_documented_rule(tmp_path):
    """txt: one document per file (a folder of .txt files is a corpus); txt_blocks: one per blank-line block,
    each located by its first line. An empty file is refused where it is."""
    from sdk.data.rows import BadRow, iter_rows

    rows = list(iter_rows(str(FORMATS / "corpus_blocks.txt"), declared="txt_blocks"))
    assert [(r.where.rsplit(":", 1)[1], r.value["text"]) for r in rows] == [
        ("1", "The first harbour was built of stone.\nShips came from the south."),
        ("4", "In winter the port froze\nand the town waited for spring."), ("8", "Markets opened again in April.")]
    whole = list(iter_rows(str(FORMATS / "corpus_blocks.txt")))  # the suffix says txt: the file is one document
    assert len(whole) == 1 and whole[0].value["text"] == (FORMATS / "corpus_blocks.txt").read_text()
    (tmp_path / "a.txt").write_text("First book.\n")
    (tmp_path / "b.txt").write_text("Second book.\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    rows = list(iter_rows(str(tmp_path)))
    assert [r.value["text"] for r in rows if not isinstance(r, BadRow)] == ["First book.\n", "Second book.\n"]
    assert [(r.where, r.reason) for r in rows if isinstance(r, BadRow)] == [
        (f"{tmp_path / 'empty.txt'}:1", "an empty text file: nothing to train on")]


@pytest.mark.parametrize("name", ["messages_parts", "sharegpt_preference", "corpus", "corpus_blocks", "feedback",
                                  "feedback_messages"])
def test_validate_reports_each_new_form(cli_here, name):
    source = source_of(name)
    fmt, _ = EXPECTED[name]
    args = ["validate", "tiny", f"--set=data.source={source}", "--set=data.eval_source=null", "--set=data.template=auto",
            f"--set=data.file_type={FILE_TYPES.get(name, 'auto')}", f"--set=objective={objective_for(name)}"]
    result = cli_here(*args)
    assert result.returncode == 0, result.stderr
    assert f"data.source: {source}: {TRAIN_ROWS.get(name, 4)} rows, format {fmt}" in result.stdout, result.stdout


def _detected(row: dict, **fields):
    from sdk.core.spec import FieldMap
    from sdk.data.formats import Context, detect, normalize

    ctx = Context(fields=FieldMap(**fields))
    fmt = detect(row, ctx)
    return fmt.name if fmt else None, (normalize(fmt, row, ctx, "x") if fmt else None)


def test_a_label_column_makes_feedback_only_when_it_is_true_or_false():
    """A `label` holding anything but a boolean (or CSV's true/false) is the row's metadata: the row keeps its format."""
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert _detected({"messages": chat, "label": "math"})[0] == "messages"
    assert _detected({"conversations": chat, "label": 1})[0] == "sharegpt"
    assert _detected({"prompt": "2+2?", "completion": "4", "label": "arithmetic"})[0] == "prompt_completion"
    assert _detected({"text": "Shares rally", "label": 2}, input="text", output="label")[0] == "text"  # AG-News rows
    name, sample = _detected({"prompt": "2+2?", "completion": "4", "label": "TRUE"})  # a CSV cell
    assert name == "feedback" and sample.label is True
    name, sample = _detected({"messages": chat, "label": False})
    assert name == "feedback" and sample.label is False and sample.completion == "4"


def test_feedback_from_a_csv_file_is_read_and_its_balance_reported(tmp_path, cli_here):
    data = tmp_path / "feedback.csv"
    data.write_text("prompt,completion,label\nSay hi,Hello!,true\nSay hi,Go away.,false\nSay bye,Goodbye!,true\n")
    result = cli_here("validate", "tiny", f"--set=data.source={data}", "--set=data.eval_source=null",
                      "--set=objective=kto", "--set=data.template=auto")
    assert result.returncode == 0, result.stderr
    assert f"data.source: {data}: 3 rows, format feedback (detected from {data}:2) (2 desirable, 1 undesirable)" in result.stdout


def test_sharegpt_system_column_reaches_preference_and_feedback_prompts():
    turns = [{"from": "human", "value": "Hi"}]
    _, sample = _detected({"system": "Be kind.", "conversations": turns, "chosen": {"from": "gpt", "value": "Hello!"},
                           "rejected": {"from": "gpt", "value": "What?"}})
    assert sample.prompt[0] == {"role": "system", "content": "Be kind."}
    _, sample = _detected({"system": "Be kind.", "conversations": [*turns, {"from": "gpt", "value": "Hello!"}], "label": True})
    assert sample.prompt[0] == {"role": "system", "content": "Be kind."}


def test_content_parts_read_as_vllm_reads_them():
    from sdk.data.formats import RowError

    parts = [{"type": "text", "text": ""}, {"type": "text", "text": "q"}, {"type": "refusal", "refusal": "r"}]
    _, sample = _detected({"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "a"}]})
    assert sample.turns[0]["content"] == "q\nr"  # an empty part is skipped, not joined as a blank line
    with pytest.raises(RowError, match=r"messages\[0\].content\[0\]: a part of type \['text'\]: only text parts"):
        _detected({"messages": [{"role": "user", "content": [{"type": ["text"], "text": "q"}]},
                                {"role": "assistant", "content": "a"}]})


def test_a_folder_reads_its_data_files_not_its_notes(tmp_path):
    from sdk.data.rows import iter_rows

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n')
    (tmp_path / "README.txt").write_text("How this data was made.\n")
    assert [r.value for r in iter_rows(str(tmp_path))] == [{"text": "one"}]  # beside data files a .txt is a note
    assert [r.value for r in iter_rows(str(tmp_path), declared="txt_blocks")] == [{"text": "How this data was made."}]
    assert [r.value for r in iter_rows(str(tmp_path), declared="jsonl")] == [{"text": "one"}]
