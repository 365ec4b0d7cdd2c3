"""`python -m launch.tools.eval_run --run RUN --data FILE`: base vs tuned label accuracy as one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.eval_run")
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError, SpecError

    try:
        from sdk.store.runfolder import RunFolder

        run = RunFolder.open(args.run)
        spec = run.spec()
        if not spec.eval.labels:
            raise SpecError("eval.labels: the run's spec names no labels, so label accuracy is undefined")
        from launch.runtime import quiet_libraries

        quiet_libraries()
        from launch.data import labelled_examples
        from launch.evaluate import label_accuracy
        from launch.hardware import capability
        from launch.models import BaseLoader
        from sdk.core.precision import resolve_precision

        summary = run.summary()
        examples = labelled_examples(spec, args.data, text_field=args.text_field, label_field=args.label_field,
                                     template=summary.template if summary else None)
        if args.limit:
            examples = examples[: args.limit]
        unknown = sorted({e.response for e in examples} - set(spec.eval.labels))
        if unknown:
            raise SpecError(f"--data: {args.data}: labels {unknown} are not among the run's labels {spec.eval.labels}")
        with tempfile.TemporaryDirectory() as tmp:
            artifact = run.fetch_adapter(Path(tmp) / "adapter")
            loader = BaseLoader.for_spec(spec, resolve_precision(spec.train.precision, capability=capability()))
            tokenizer = loader.tokenizer()
            kw = {"max_new_tokens": spec.eval.max_new_tokens}
            base = label_accuracy(loader.load(), tokenizer, examples, spec.eval.labels, **kw)
            tuned = label_accuracy(loader.builder.reload(loader.load(), artifact), tokenizer, examples, spec.eval.labels, **kw)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"run": run.run_id, "data": args.data, "rows": len(examples), "labels": spec.eval.labels,
                      "base": base.as_dict(), "tuned": tuned.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
