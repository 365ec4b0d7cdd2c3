"""`finetune export RUN --format gguf|ollama|merged|hub` and `Run.export(...)`: the client side.

Everything a bad request can be refused for is refused here, before a weight is read: the format, its options,
the method (sdk.core.exports), a run that did not succeed, an export already in the run folder, a Hub token
variable not set. The work is node code (`python -m launch.exports`) run where the weights are: a subprocess here,
like `finetune merge`. It commits the files to the run folder under `exports/<format>/` (sha256 manifest, last),
and `fetch_export` brings them back verified.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from sdk.core.errors import FinetuneError, LaunchError
from sdk.core.exports import FORMATS, ExportOptions, export_name, format_of

EXPORTS = "exports"
REPORT = "export_report.json"


def export_key(run_folder: Any, name: str) -> str:
    return run_folder.key(f"{EXPORTS}/{name}")


def flag(option: str) -> str:
    """The command-line flag of an ExportOptions field (quants is the repeatable --quant)."""
    return "--quant" if option == "quants" else "--" + option.replace("_", "-")


def parse_options(fmt: str, **given: Any) -> ExportOptions:
    """The options for `fmt`, each named field checked; an option the format does not read is refused by name."""
    from pydantic import ValidationError

    try:
        chosen = format_of(fmt)
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    given = {k: v for k, v in given.items() if v is not None}
    extra = sorted(k for k in given if k not in chosen.options)
    if extra:
        raise FinetuneError(f"{', '.join(flag(k) for k in extra)}: not an option of --format {fmt} (it takes "
                        f"{', '.join(flag(o) for o in chosen.options) or 'no options'})")
    try:
        return ExportOptions(format=fmt, **given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = flag(str(first["loc"][0])) if first["loc"] else "--format"
        raise FinetuneError(f"{field}: {first['msg'].removeprefix('Value error, ')}") from None


def check_export(run: str, options: ExportOptions, *, force: bool = False) -> Any:
    """The run's folder once every refusal has been passed; raises FinetuneError naming what is wrong."""
    from sdk.runs import get_run
    from sdk.runs.tools import require_succeeded
    from sdk.store.runfolder import RunFolder

    uri = require_succeeded(run, "export")
    folder = RunFolder.open(uri)
    spec = get_run(run).spec()
    reason = FORMATS[options.format].refusal(spec, options)
    if reason:
        raise FinetuneError(reason)
    if FORMATS[options.format].sends and not options.dry_run and not os.environ.get(options.token_env):
        raise FinetuneError(f"--token-env: {options.token_env} is not set in this environment (it holds the Hub "
                            "token; --dry-run lists what would be uploaded without one)")
    name = export_name(options)
    if not force and not options.dry_run and folder.store.exists(f"{export_key(folder, name)}/MANIFEST.json"):
        raise FinetuneError(f"{folder.uri}/{EXPORTS}/{name}: already exported (pass --force to replace it)")
    return folder


def export(run: str, *, format: str, out: str | Path | None = None, force: bool = False,
           on: Literal["auto", "local", "node"] = "auto", **options: Any) -> dict[str, Any]:
    """Export a run that succeeded; returns the export report (files with sizes, the runtime's check against
    transformers, tool versions). `out`: also fetch the committed files there. `on`: where the work runs: here, or
    on a node of the run's own resources through SkyPilot (auto: a node for a run that trained through SkyPilot).
    Raises ExportCheckFailed (files kept, where in the message) when the export answers beyond the tolerance."""
    from sdk.runs import get_run
    from sdk.store.runfolder import LAUNCH

    if on not in ("auto", "local", "node"):
        raise FinetuneError(f"on: {on!r} is not one of auto, local, node")
    parsed = parse_options(format, **options)
    if out is not None:
        _check_destination(Path(out), force=force)
    folder = check_export(run, parsed, force=force)
    handle = get_run(run)
    backend = handle.backend or (folder.read_json(LAUNCH) or {}).get("backend")  # a run found by URI: its record
    if on == "node" or (on == "auto" and backend == "skypilot" and FORMATS[format].needs_weights(parsed)):
        from sdk.exports.remote import export_on_node

        secrets = [parsed.token_env] if FORMATS[format].sends and not parsed.dry_run else []
        report = export_on_node(folder, handle.spec(), parsed.model_dump_json(), name=export_name(parsed), force=force,
                                secrets=secrets)
    else:
        args = ["--run", folder.uri, "--options", parsed.model_dump_json()] + (["--force"] if force else [])
        report = _run_node(args, f"export of {run} to {format}")
    if out is not None and report.get("committed"):
        report["out"] = str(fetch_export(run, export_name(parsed), out, overwrite=force))
    return report


def fetch_export(run: str, name: str, dest: str | Path, *, overwrite: bool = False) -> Path:
    """The committed export `name` (a format, or gguf-adapter / ollama-adapter for --adapter-only) into dest, every
    file checked against its manifest; all or nothing."""
    from sdk.runs import get_run
    from sdk.store.manifest import fetch_dir, read_manifest

    fmt = name.removesuffix(".failed").removesuffix("-adapter")  # .failed: a node export that failed its check
    try:
        format_of(fmt)
    except ValueError as exc:
        raise FinetuneError(str(exc).replace("--format", "--export")) from None
    folder = get_run(run).folder
    key = export_key(folder, name)
    if read_manifest(folder.store, key) is None:
        how = f"--format {fmt}" + (" --adapter-only" if name != fmt else "")
        raise FinetuneError(f"{folder.uri}/{EXPORTS}/{name}: no committed export (finetune export {run} {how})")
    dest = Path(dest).expanduser().resolve()
    _check_destination(dest, force=overwrite)
    return fetch_dir(folder.store, key, dest, overwrite=overwrite)


def _check_destination(dest: Path, *, force: bool) -> None:
    from sdk.store.manifest import check_replaceable

    dest = dest.expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise FinetuneError(f"{dest}: exists and is not a folder")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise FinetuneError(f"{dest}: exists and is not empty (pass --force to replace a previous export)")
        check_replaceable(dest)


def _run_node(args: list[str], what: str) -> dict[str, Any]:
    """`python -m launch.exports`, its progress on this process's stderr; its last stdout line is the report, or
    {"error": ...} for a refusal (exit 2) or an export that failed its check (exit 1, files kept)."""
    from sdk.core.errors import ExportCheckFailed

    process = subprocess.run([sys.executable, "-m", "launch.exports", *args], stdout=subprocess.PIPE, text=True)
    lines = process.stdout.strip().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else {}
    except ValueError:
        last = {}
    if "error" in last and process.returncode in (1, 2):
        raise (ExportCheckFailed if process.returncode == 1 else FinetuneError)(last["error"])
    if process.returncode != 0 or not last:
        raise LaunchError(f"{what} failed (exit {process.returncode}); its output is above")
    return last
