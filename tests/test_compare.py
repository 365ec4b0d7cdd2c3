"""`finetune compare`: the base and two runs answer the same held-out rows; the generation metrics per column and
a static HTML page, opened in headless Chromium (Debian's package): its DOM holds every prompt, reference and
answer, and its screenshot shows the table with the matched and missed answers coloured."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import needs_service

import sdk

HERE = Path(__file__).parent
ALPACA = HERE / "data" / "formats" / "alpaca.jsonl"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow


def tiny(name: str, output: Path, lr: float) -> sdk.FineTuneSpec:
    return sdk.FineTuneSpec(
        name=name, model="tiny:llama", method={"name": "lora", "r": 4, "alpha": 8},
        data={"source": str(ALPACA), "eval_source": str(ALPACA), "max_length": 128},
        train={"max_steps": 12, "batch_size": 2, "lr": lr, "precision": "fp32"},
        eval={"before": False, "after": False, "generations": 0}, output=str(output), env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FINETUNE_HOME", str(root / "home"))
        runs = [sdk.submit(tiny("cmp-slow", root / "runs", 1e-4)), sdk.submit(tiny("cmp-fast", root / "runs", 2e-2))]
        for run in runs:
            assert run.wait(timeout=300, progress=False).state == "succeeded", str(run.logs())[-2000:]
        yield runs, root


@pytest.fixture(scope="module")
def compared(two_runs, tmp_path_factory):
    runs, root = two_runs
    page = tmp_path_factory.mktemp("page") / "compare.html"
    result = sdk.compare([r.uri for r in runs], data=str(ALPACA), html=page)
    return result, page


def test_every_column_answers_every_row_and_is_scored(compared, two_runs):
    result, _ = compared
    runs, _ = two_runs
    assert [c["name"] for c in result["columns"]] == ["base", runs[0].id, runs[1].id]
    assert result["rows"] == 4 and result["references"] == ["World", "Sports", "Hello!", "Business"]
    assert result["prompts"][0] == "Name the topic of the headline.\n\nStorm floods the coastal city"  # as the user turn
    from sdk.evaluation.metrics import exact_match, score, score_all

    for column in result["columns"]:
        assert len(column["answers"]) == 4
        expected = score_all([score(a, r) for a, r in zip(column["answers"], result["references"], strict=True)])
        assert column["metrics"]["exact_match"] == pytest.approx(expected.means["exact_match"])
        assert column["metrics"]["counts"]["exact_match"] == 4
    fast = result["columns"][2]  # lr 2e-2 for 12 steps on 4 rows: the tiny model learns them
    assert sum(exact_match(a, r) for a, r in zip(fast["answers"], result["references"], strict=True)) >= 2, fast["answers"]


@needs_service("chromium", None if CHROMIUM else "no chromium on PATH (apt-get install chromium)")
def test_the_page_opens_in_headless_chromium_with_the_table(compared, tmp_path):
    from html import escape

    from PIL import Image

    result, page = compared
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90).stdout
    assert dom.count("<tr") == 2 + result["rows"]  # the header, the metrics, one per row
    for column in result["columns"]:
        assert f"<th>{escape(column['name'])}</th>" in dom
        assert all(escape(answer) in dom for answer in column["answers"])
    assert all(escape(prompt) in dom for prompt in result["prompts"])
    shot = tmp_path / "compare.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,800", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=90, check=True)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    count = {rgb: n for n, rgb in colours}
    assert count.get((240, 240, 240), 0) > 2000, "the header row's grey"
    assert count.get((223, 245, 225), 0) > 2000, "answers equal to the reference, green"
    assert count.get((253, 226, 225), 0) > 2000, "answers that miss, red"


def test_refusals_name_what_is_wrong(two_runs, run_cli, tmp_path):
    runs, root = two_runs
    missing = run_cli("compare", runs[0].uri, "--data", str(tmp_path / "nope.jsonl"), env={"FINETUNE_HOME": str(root / "home")})
    assert missing.returncode == 2 and "--data" in missing.stderr and "nope.jsonl" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": ""}) + "\n")
    refused = run_cli("compare", runs[0].uri, "--data", str(bad), env={"FINETUNE_HOME": str(root / "home")})
    assert refused.returncode == 2 and f"{bad}:1" in refused.stderr and "empty 'output'" in refused.stderr


def test_finetune_eval_scores_any_format_for_a_run_without_labels(compared, two_runs, run_cli):
    """`finetune eval RUN --data FILE` on a generative run: the base and tuned generation metrics (the same
    answers compare gives)."""
    result, _ = compared
    runs, root = two_runs
    out = run_cli("eval", runs[1].uri, "--data", str(ALPACA), "--json", env={"FINETUNE_HOME": str(root / "home")}, timeout=300)
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert scores["rows"] == 4 and scores["tuned"] == result["columns"][2]["metrics"]
    assert scores["base"] == result["columns"][0]["metrics"]
