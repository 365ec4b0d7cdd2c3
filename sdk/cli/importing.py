"""`finetune import`: an Axolotl or LLaMA-Factory config as a recipe (sdk.importers)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sdk.cli.app import _console, app


@app.command(name="import")
def import_(
    file: Path = typer.Argument(..., help="an Axolotl or LLaMA-Factory YAML config"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the recipe here (default: print it)"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="LLaMA-Factory: the folder of dataset_info.json "
                                                                   "(default: the config's dataset_dir)"),
    accelerate_config: Path | None = typer.Option(
        None, "--accelerate-config", help="the accelerate config the tool is launched with (accelerate launch "
                                          "--config_file FILE): LLaMA-Factory's FSDP, offload and mixed precision"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing -o file"),
) -> None:
    """Write a recipe from an Axolotl or LLaMA-Factory config; its header lists every key that changed meaning or
    was dropped. A config the product cannot train exits 2 with one line per missing capability."""
    from sdk.importers import import_config

    if output is not None and output.exists() and not force:
        _console(stderr=True).print(f"error: {output} exists; pass --force to overwrite it", markup=False)
        raise typer.Exit(2)
    result = import_config(file, data_dir=data_dir, accelerate_config=accelerate_config)
    if output is None:
        sys.stdout.write(result.text)
        return
    try:
        output.write_text(result.text, encoding="utf-8")
    except OSError as exc:
        _console(stderr=True).print(f"error: -o {output}: cannot write it: {exc.strerror or exc}", markup=False)
        raise typer.Exit(2) from None
    _console().print(f"wrote {output} from the {result.tool} config {file} ({len(result.notes)} notes in its header); "
                     f"check it with: finetune validate {output}", markup=False)
