"""Shared fixtures. Tests never reach the network: HF_HUB_OFFLINE is set for every process they start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def run_cli():
    """Run the real `finetune` entry point in a subprocess, as a user would."""

    def run(*args: str, timeout: float = 120, env: dict | None = None, input: str | None = None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "sdk.cli", *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env, input=input,
        )

    return run
