"""`sdk.evaluate`: label accuracy of a run's base and tuned model on a labelled file.

The client never imports torch, so the work happens in a `python -m launch.eval_run` subprocess
(which needs the `train` extra) and comes back as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from sdk.errors import FinetuneError, LaunchError


def evaluate(run: str, *, data: str, text_field: str = "text", label_field: str = "label", limit: int | None = None) -> dict[str, Any]:
    """{'base': {accuracy, correct, total}, 'tuned': {...}, 'labels': [...], 'rows': n}."""
    command = [sys.executable, "-m", "launch.eval_run", "--run", run, "--data", data, "--text-field", text_field, "--label-field", label_field]
    if limit:
        command += ["--limit", str(limit)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 2:
        raise FinetuneError(result.stderr.strip().removeprefix("error: "))
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise LaunchError(f"evaluation of {run} failed:\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])
