"""`finetune export`: a run's model as GGUF, an Ollama Modelfile, a merged model or a Hub repo (sdk.exports)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sdk.cli.app import _console, app


@app.command(name="export")
def export_(
    run: str = typer.Argument(..., help="run id or run folder URI (a run that succeeded)"),
    fmt: str = typer.Option(..., "--format", "-f", help="gguf, ollama, merged or hub"),
    out: Path | None = typer.Option(None, "--out", "-o", help="also fetch the export into this folder"),
    quant: list[str] = typer.Option(None, "--quant", "-q", help="gguf/ollama: llama.cpp file type, repeatable "
                                                                "(f16, bf16, q8_0, q4_k_m, q5_k_m …; default q8_0)"),
    adapter_only: bool = typer.Option(None, "--adapter-only", help="gguf/ollama: the LoRA as a GGUF LoRA + base GGUF"),
    tolerance: float = typer.Option(None, "--tolerance", help="points of the task metric an export may lose (5)"),
    rows: int = typer.Option(None, "--rows", help="held-out rows each export answers (default eval.num_samples)"),
    repo: str = typer.Option(None, "--repo", help="hub: the repo id, owner/name"),
    token_env: str = typer.Option(None, "--token-env", help="hub: the variable holding the token (HF_TOKEN)"),
    private: bool = typer.Option(None, "--private", help="hub: create the repo private"),
    merged: bool = typer.Option(None, "--merged", help="hub: upload the merged model instead of the adapter"),
    dry_run: bool = typer.Option(None, "--dry-run", help="hub: list the files and the model card; upload nothing"),
    on: str = typer.Option("auto", "--on", help="where the work runs: local, node (a SkyPilot task on the run's "
                                                "resources) or auto (node for a run trained through SkyPilot)"),
    force: bool = typer.Option(False, "--force", help="replace an earlier export of this format (and -o's folder)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Export a run: each file is loaded by the runtime that will use it (llama.cpp for GGUF) and answers held-out
    rows next to transformers before it is committed to the run folder (exports/<format>/); beyond the tolerance
    the export fails (exit 1) with the numbers and keeps its files."""
    from sdk.core.errors import FinetuneError
    from sdk.exports import export

    if on not in ("auto", "local", "node"):
        raise FinetuneError(f"--on: {on!r} is not one of auto, local, node")
    report = export(run, format=fmt, out=out, force=force, on=on, quants=quant or None, adapter_only=adapter_only,
                    tolerance=tolerance, rows=rows, repo=repo, token_env=token_env, private=private, merged=merged,
                    dry_run=dry_run)
    if json_out:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    _console().print(summary_lines(report), markup=False, highlight=False)


def summary_lines(report: dict) -> str:
    lines = []
    for name, result in (report.get("check") or {}).get("files", {}).items():
        lines.append(f"{name}: {result['metric']} {result['llama_cpp']:.3f} in llama.cpp, "
                     f"{result['transformers']:.3f} in "
                     f"transformers ({result['difference_points']:+.1f} points); first tokens agree on "
                     f"{result['first_token_agreement']:.0%}; loads in {result['load_s']:.2f} s")
    for name, size in (report.get("sizes") or {}).items():
        lines.append(f"  {name}  {size / 2**20:.1f} MiB")
    for key in ("dry_run_listing", "committed", "uploaded", "out"):
        if report.get(key):
            lines.append(f"{key.replace('_', ' ')}: {report[key]}")
    return "\n".join(lines)
