"""The files of an evaluation run: ``results.json``, ``results.md`` and ``samples/<task>.jsonl``.

results.json holds what ``run_eval`` returns (no API key ever enters it: keys are read from the environment by
name and only the name is kept). results.md is one Markdown table row per score: task, metric, filter
(lm-eval's, e.g. strict-match / flexible-extract; ``none`` when there is one), value, 95% CI, n.
``samples/<task>.jsonl`` has one line per item and filter (doc, prompt, output, extracted answer, verdict), and
``samples/<task>.judgements.jsonl`` the judge's replies when a win rate was computed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def markdown_table(result: dict) -> str:
    """The scores of ``result`` as a Markdown table (a not-computed score shows its reason in the value cell)."""
    lines = [f"# {result['model']} ({result['backend']}, limit {result['limit']})", "",
             "| task | metric | filter | value | 95% CI | n |", "|---|---|---|---|---|---|"]
    for task, metrics in result["tasks"].items():
        for key, s in metrics.items():
            lo, hi = s.get("ci") or (None, None)
            ci = "n/a" if lo is None or hi is None else f"[{lo:.4f}, {hi:.4f}]"
            value = _fmt(s["value"]) if s.get("computed", True) else f"not computed: {s['reason']}"
            lines.append(f"| {task} | {s.get('metric', key)} | {s.get('filter', 'none')} | {value} | {ci} | "
                         f"{s['n']} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Write via a temporary sibling and a rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_outputs(out: Path, result: dict, samples: dict[str, list[dict]], judged: dict[str, dict]) -> None:
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for task, rows in samples.items():
        _write(out / "samples" / f"{task}.jsonl",
               "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    for task, judgement in judged.items():
        _write(out / "samples" / f"{task}.judgements.jsonl",
               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in judgement["details"]))
    _write(out / "results.md", markdown_table(result))
    _write(out / "results.json", json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n")
