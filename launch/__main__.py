"""Node entrypoint: `python -m launch --run-dir <store URI>/<run_id> [--spec spec.json]`.

Reads the spec (from --spec, else the run folder's spec.json), trains, evaluates and commits the
adapter; status.json ends as succeeded, failed (with the error) or cancelled. Exit codes: 0
succeeded, 1 failed, 2 bad spec or data, 130 cancelled.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def load_run(run_dir: str, spec_file: str | None) -> tuple[Any, Any]:
    """The run folder and its spec (written from --spec by rank 0 when the folder has none yet). Refuses, with
    FinetuneError, a folder holding another run's spec, a run that already succeeded, or one another SkyPilot
    task owns. Returns (folder, None) for a run cancelled before this node started."""
    from sdk.core.errors import FinetuneError
    from sdk.core.spec import FineTuneSpec, parse_spec
    from sdk.store.runfolder import SPEC, RunFolder

    folder = RunFolder.from_uri(run_dir)
    stored = folder.read_json(SPEC)
    if spec_file:
        spec = FineTuneSpec.from_json(Path(spec_file).read_text(encoding="utf-8"), source=spec_file)
        if stored is not None and FineTuneSpec.model_validate(stored) != spec:
            raise FinetuneError(f"{folder.uri}: holds a different run's spec; refusing to overwrite it")
        if stored is None and int(os.environ.get("RANK", "0")) == 0:
            folder.write_json(SPEC, spec.model_dump(mode="json"))
    elif stored is None:
        raise FinetuneError(f"{folder.uri}/{SPEC}: no spec in the run folder (pass --spec)")
    else:
        spec = parse_spec(stored, source=f"{folder.uri}/{SPEC}")
    # A restart (a crash, a preempted VM, a managed-job recovery) resumes the run; a finished one stays finished.
    status = folder.status()
    prior = status.get("state")
    if prior == "succeeded" and folder.adapter_manifest() is not None:
        raise FinetuneError(f"{folder.uri}: this run already succeeded; start a new run instead of overwriting it")
    if prior in ("cancelled", "cancelling"):  # cancelled before this node started (or before a recovery)
        if int(os.environ.get("RANK", "0")) == 0 and prior == "cancelling":
            folder.write_status("cancelled", error="cancelled before the node started")
        return folder, None
    # On SkyPilot the run folder belongs to one task: its recoveries resume it, another task may not.
    task_id, owner = os.environ.get("SKYPILOT_TASK_ID"), status.get("task_id")
    if task_id and owner and owner != task_id:
        raise FinetuneError(f"{folder.uri}: belongs to SkyPilot task {owner}, not {task_id}; refusing to resume it")
    return folder, spec


def train_run(spec: Any, folder: Any, *, sync_interval: float) -> int:
    """Run the node's phases with the sink syncing status and metrics; always leaves a terminal status."""
    from launch.node import Cancelled, run
    from launch.record import keep_rerun_of, write_node_record
    from launch.sink import RunSink
    from sdk.core.errors import FinetuneError

    rank = int(os.environ.get("RANK", "0"))
    sink = RunSink(folder, interval=sync_interval, log_file=os.environ.get("FINETUNE_LOG_FILE"), enabled=rank == 0)
    sink.install_signal_handlers()
    if rank == 0:
        from launch.budget import Budget

        sink.budget = Budget(folder, spec)
    task = {"task_id": os.environ["SKYPILOT_TASK_ID"]} if os.environ.get("SKYPILOT_TASK_ID") else {}
    sink.start("running", phase="starting", **task)
    try:
        if rank == 0:  # the run record's node part (launch.record), before the model loads
            write_node_record(spec, folder)
        summary = run(spec, folder, sink).summary
        if rank == 0:
            keep_rerun_of(folder, summary)  # a rerun's summary names the run it reproduces
            if summary.cost is not None and summary.cost.actual_usd is not None:  # to the trackers too
                sink.metric({"step": summary.steps, "cost_usd": summary.cost.actual_usd})
    except Cancelled as exc:
        reason = str(exc)
        sink.close("cancelled", **({"error": reason} if reason else {}))
        print(f"[finetune] cancelled{': ' + reason if reason else ''}", flush=True)
        return 130
    except FinetuneError as exc:
        sink.close("failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BaseException as exc:  # the node must always leave a terminal status behind
        traceback.print_exc()
        sink.close("failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    # The adapter is committed: the run succeeded, even if a cancel arrived during the last evaluation.
    sink.close("succeeded", step=summary.steps)
    if rank == 0:
        acc = summary.label_accuracy
        line = f"[finetune] succeeded: {summary.steps} steps, loss {summary.first_loss} -> {summary.last_loss}"
        if acc.before and acc.after:
            line += f", label accuracy {acc.before.accuracy:.0%} -> {acc.after.accuracy:.0%}"
        print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="the run folder: <store URI>/<run_id>")
    parser.add_argument("--spec", help="spec JSON file (default: spec.json in the run folder)")
    parser.add_argument("--sync-interval", type=float, default=float(os.environ.get("FINETUNE_SYNC_INTERVAL", 3)))
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError

    try:
        folder, spec = load_run(args.run_dir, args.spec)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if spec is None:
        print(f"[finetune] {folder.uri}: cancelled before this node started; nothing to do", flush=True)
        return 130
    return train_run(spec, folder, sync_interval=args.sync_interval)


if __name__ == "__main__":
    sys.exit(main())
