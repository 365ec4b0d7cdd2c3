"""`python -m launch.exports --run URI --options JSON [--force]`: build one export where the weights are, check it,
commit it to the run folder under exports/<format>/ and print the report as the last stdout line.

Exit 0: committed (or a dry run). Exit 2: refused (one line, nothing written). Exit 1: written but it failed its
check: nothing is committed and the files stay in the work folder named in the error, for inspection."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPORT = "export_report.json"


def work_root() -> Path:
    return Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune")) / "exports"


def run_export(run_uri: str, options_json: str, *, force: bool, keep_in_store: bool = False) -> dict[str, Any]:
    from launch.exports import ExportContext
    from launch.runtime import quiet_libraries
    from sdk.core.errors import ExportCheckFailed, FinetuneError
    from sdk.core.exports import FORMATS, ExportOptions, export_name
    from sdk.store.manifest import commit_dir
    from sdk.store.runfolder import RunFolder

    options = ExportOptions.model_validate_json(options_json)
    run = RunFolder.open(run_uri)
    spec = run.spec()
    fmt = FORMATS[options.format]
    reason = fmt.refusal(spec, options)
    if reason:
        raise FinetuneError(reason)
    if run.status().get("state") != "succeeded":
        raise FinetuneError(f"run {run.run_id} is {run.status().get('state')}; export needs a run that succeeded")
    name = export_name(options)
    key = run.key(f"exports/{name}")
    if not force and not options.dry_run and run.store.exists(f"{key}/MANIFEST.json"):
        raise FinetuneError(f"{run.uri}/exports/{name}: already exported (pass --force to replace it)")
    quiet_libraries()
    work_root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{run.run_id}-{name}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=work_root()))
    context = ExportContext(run=run, spec=spec, options=options, out=work / "out", work=work, force=force)
    context.out.mkdir()
    started = time.perf_counter()
    kept = False
    try:
        context.report.update(run=run.run_id, format=options.format, options=options.model_dump(exclude={"format"}))
        context.report["files"] = importlib.import_module(fmt.node_module).build(context)
        context.report["seconds"] = round(time.perf_counter() - started, 1)
        context.report["sizes"] = {p.relative_to(context.out).as_posix(): p.stat().st_size
                                   for p in sorted(context.out.rglob("*")) if p.is_file()}
        (context.out / REPORT).write_text(json.dumps(context.report, indent=2))
        check = context.report.get("check") or {}
        if check and not check.get("passed"):
            kept = not keep_in_store
            where = str(context.out)
            if keep_in_store:  # a node's disk goes with its cluster: the files are kept beside the exports instead
                commit_dir(run.store, context.out, f"{key}.failed")
                where = f"{run.uri}/exports/{name}.failed"
            raise ExportCheckFailed(f"{options.format} export of {run.run_id} failed its check: {failed_line(check)}; "
                                    f"nothing committed as the export, files kept in {where}")
        if options.dry_run:
            return context.report
        try:
            commit_dir(run.store, context.out, key)
        except BaseException:
            kept = True  # the store failed mid-commit: the files stay here for a retry (no manifest, no export)
            raise
        context.report["committed"] = f"{run.uri}/exports/{name}"
        return context.report
    finally:
        if not kept:
            shutil.rmtree(work, ignore_errors=True)


def failed_line(check: dict[str, Any]) -> str:
    parts = []
    for name, result in check.get("files", {}).items():
        carried = result.get("chat_template_carried", True)  # formats without a GGUF carry no template to read back
        if not result.get("passed") or not carried:
            parts.append(f"{name}: {result['metric']} {result['llama_cpp']:.3f} vs {result['transformers']:.3f} in "
                         f"transformers ({result['difference_points']:+.1f} points on {result.get('rows')} rows, "
                         f"tolerance {check.get('tolerance_points')})"
                         + ("" if carried else "; the chat template was not carried"))
    return "; ".join(parts) or "see the report"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.exports", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder URI")
    parser.add_argument("--options", required=True, help="sdk.core.exports.ExportOptions as JSON")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--outcome", help="also write the report (or the error) to this key of the run folder: a "
                                          "node's outcome, read by the client that launched it")
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError

    try:
        outcome = run_export(args.run, args.options, force=args.force, keep_in_store=bool(args.outcome))
        code = 0
    except FinetuneError as exc:
        outcome, code = {"error": str(exc), "exit": exc.exit_code}, exc.exit_code
    if args.outcome:
        from sdk.store.runfolder import RunFolder

        RunFolder.open(args.run).write_json(args.outcome, outcome)
    print(json.dumps(outcome))
    return code


if __name__ == "__main__":
    sys.exit(main())
