"""The examples run as a user would run them: the script as a program, the notebook through a kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_script(tmp_path, finetune_home):
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "FINETUNE_HOME": str(finetune_home)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished: succeeded" in result.stdout and "label accuracy" in result.stdout
    assert list(out.glob("*-loss.png")) and list(out.glob("*-adapter/adapter_config.json"))


def test_quickstart_notebook(tmp_path, finetune_home, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FINETUNE_EXAMPLE_OUTPUT", str(tmp_path / "runs"))
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "state='succeeded'" in text and "adapter_model.safetensors" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the loss plot rendered
