"""A comparison of runs as one static HTML page: each prompt, its reference and every column's answer (the base
first), the metrics per column on top; an answer that equals the reference (exact match) is green, one that
differs is red, and an answer that changed from the base's is marked. Standard library only, every text escaped."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1a1a1a; }
h1 { font-size: 20px; } p.meta { color: #555; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 6px 8px; vertical-align: top; text-align: left; white-space: pre-wrap; }
th { background: #f0f0f0; }
tr.metrics td { background: #fafafa; font-weight: 600; }
td.match { background: #dff5e1; } td.miss { background: #fde2e1; }
td.changed::before { content: "changed from base · "; color: #8a5a00; font-size: 11px; font-weight: 600; }
"""


def _metric_cell(metrics: dict[str, Any]) -> str:
    shown = [f"{name.replace('_', ' ')} {value:.3f}" for name, value in metrics.items() if name != "counts"]
    counts = metrics.get("counts") or {}
    rows = max(counts.values()) if counts else 0
    return "<br>".join(shown) + (f"<br><small>{rows} rows</small>" if rows else "")


def comparison_html(result: dict[str, Any], *, title: str = "finetune compare") -> str:
    """The page for a `compare` result ({prompts, references, columns: [{name, answers, metrics}]})."""
    from sdk.evaluation.metrics import exact_match

    columns = result["columns"]
    base = next((c for c in columns if c["name"] == "base"), None)
    head = "".join(f"<th>{escape(c['name'])}</th>" for c in columns)
    metrics = "".join(f"<td>{_metric_cell(c['metrics'])}</td>" for c in columns)
    body = []
    for i, (prompt, reference) in enumerate(zip(result["prompts"], result["references"], strict=True)):
        cells = []
        for column in columns:
            answer = column["answers"][i]
            kind = "match" if exact_match(answer, reference) else "miss"
            if base is not None and column is not base and answer.strip() != base["answers"][i].strip():
                kind += " changed"
            cells.append(f'<td class="{kind}">{escape(answer)}</td>')
        body.append(f"<tr><td>{i + 1}</td><td>{escape(prompt)}</td><td>{escape(reference)}</td>{''.join(cells)}</tr>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1><p class='meta'>{result['rows']} rows of {escape(str(result['data']))}, greedy, "
            f"at most {result['max_new_tokens']} new tokens</p>"
            f"<table><thead><tr><th>#</th><th>prompt</th><th>reference</th>{head}</tr></thead><tbody>"
            f"<tr class='metrics'><td></td><td>metrics</td><td></td>{metrics}</tr>{''.join(body)}</tbody></table></body></html>")
