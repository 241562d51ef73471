"""The run's outputs: the ablation table (``ablation.{json,csv,md}``) and one summary page (``index.html``).

Rows of the table are arms; columns are bits per byte on the held-out in-domain and general documents and every
configured task score, each with its 95% interval, then the tokens each arm trained on per source. The page shows
the stage graph with each stage's state, wall time, rows and tokens in and out, then the table, the figures, and
links to the threshold report and every manifest.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from pathlib import Path

from .config import ARMS
from .graph import Stage, arm_id

CAVEAT_MACHINERY = ("The passages come from a generator whose outputs failed validation (the embedded random-weight "
                    "model, or rejected passages trained on): the trait, trait_one_stage and "
                    "trait_no_enlightenment rows measure the machinery, not the method.")


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    lo, hi = (entry.get("ci") or [None, None])[:2]
    return f"{_fmt(entry['value'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _records(ctx, stages: list[Stage]) -> dict[str, dict]:
    return {s.name: (ctx.record(s) or {"status": "pending"}) for s in stages}


def _arm_tokens(arm: str, records: dict) -> dict[str, int]:
    """Tokens the arm's model trained on, per source, over every stage it went through (pre-training excluded)."""
    unit_stages = {"seed": [("train_seed", "knowledge")], "seed+random": [("train_seed_random", "knowledge")],
                   "seed+dsir": [("train_seed_dsir", "knowledge")], "seed+trait": [("train_trait", "knowledge")],
                   "trait": [("train_trait", "knowledge"), ("train_trait", "task_alignment")],
                   "trait_no_enlightenment": [("train_trait", "knowledge"),
                                              ("train_trait_no_enlightenment", "task_alignment")],
                   "trait_one_stage": [("train_trait_one_stage", "one_stage")]}.get(arm, [])
    tokens: dict[str, int] = {}
    for unit, stage in unit_stages:
        summary = (records.get(unit) or {}).get("summary") or {}
        for source, n in summary.get("stages", {}).get(stage, {}).get("tokens_by_source", {}).items():
            tokens[source] = tokens.get(source, 0) + n
    return tokens


def ablation_rows(ctx, stages: list[Stage]) -> tuple[list[dict], list[str]]:
    """One row per configured arm (metrics None where the arm's evaluation has not finished)."""
    records = _records(ctx, stages)
    rows = []
    for arm in [a for a in ARMS if a in ctx.config.arms]:
        path = ctx.run_dir / "eval" / arm_id(arm) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() and \
            records.get(f"eval_{arm_id(arm)}", {}).get("status") == "done" else {}
        row = {"arm": arm, "bpb": {}, "tasks": {}, "tokens_by_source": _arm_tokens(arm, records)}
        for name, b in (metrics.get("bpb") or {}).items():
            row["bpb"][name] = {"value": b["bpb"], "ci": [b["ci_low"], b["ci_high"]], "n_docs": b["n_docs"]}
        for task, entries in (metrics.get("tasks") or {}).items():
            for metric, e in entries.items():
                row["tasks"][f"{task}/{metric}"] = {"value": e.get("value"), "ci": e.get("ci"), "n": e.get("n")}
        rows.append(row)
    caveats = []
    synth = records.get("synth", {}).get("summary") or {}
    if ctx.config.training.include_rejected_passages or synth.get("valid_fraction") == 0:
        caveats.append(CAVEAT_MACHINERY)
    return rows, caveats


def classifier_validation(ctx, stages: list[Stage]) -> dict[str, dict]:
    """Per validated classifier: its held-out metrics (its own kind of data) and its finished validation."""
    from spark_jobs.classifier_eval import markdown

    records = _records(ctx, stages)
    out = {}
    for s in stages:
        path = Path(s.output)
        if s.kind != "validate" or records[s.name].get("status") != "done" or not path.is_file():
            continue
        result = json.loads(path.read_text())
        card = json.loads((path.parent / "card.json").read_text())
        out[result["model"]] = {"heldout_metrics": card.get("heldout_metrics"),
                                "markdown": markdown(result, samples=False),
                                "sets": {n: {k: v for k, v in v.items() if k != "samples"}
                                         for n, v in result["sets"].items()},
                                "thresholds": result["thresholds"], "part": result.get("part")}
    return out


def validation_markdown(classifiers: dict[str, dict]) -> str:
    """The classifiers' held-out metrics beside their validation tables."""
    lines = []
    for column, c in classifiers.items():
        held = c["heldout_metrics"] or {}
        lines += ["", f"held-out metrics of {column} (its own kind of data): ROC-AUC {_fmt(held.get('roc_auc'), 3)}, "
                      f"F1 {_fmt(held.get('f1'), 3)}; on labelled sets it never saw:", "",
                  c["markdown"].replace("# Validation", "### Validation", 1).rstrip()]
    return "\n".join(lines) + "\n" if lines else ""


def _columns(rows: list[dict]) -> tuple[list[str], list[str]]:
    tasks = sorted({k for r in rows for k in r["tasks"]})
    sources = sorted({k for r in rows for k in r["tokens_by_source"]})
    return tasks, sources


def ablation_markdown(rows: list[dict], caveats: list[str]) -> str:
    tasks, sources = _columns(rows)
    head = ["arm", "bpb in-domain [95% CI]", "bpb general [95% CI]", *tasks, *(f"tokens {s}" for s in sources)]
    lines = [f"> {c}" for c in caveats] + ([""] if caveats else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arm"], _interval(r["bpb"].get("in_domain")), _interval(r["bpb"].get("general")),
                 *(_interval(r["tasks"].get(t)) for t in tasks),
                 *(f"{r['tokens_by_source'].get(s, 0):,}" for s in sources)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("\nbits per byte: lower is better; task scores: higher is better; intervals: bootstrap over "
                 "documents (bpb) and the task's own interval (eval).")
    return "\n".join(lines) + "\n"


def ablation_csv(rows: list[dict]) -> str:
    tasks, sources = _columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["arm"]
    for name in ("bpb_in_domain", "bpb_general", *tasks):
        head += [name, f"{name}_ci_low", f"{name}_ci_high"]
    w.writerow(head + [f"tokens_{s}" for s in sources])
    for r in rows:
        cells = [r["arm"]]
        for entry in (r["bpb"].get("in_domain"), r["bpb"].get("general"), *(r["tasks"].get(t) for t in tasks)):
            ci = (entry or {}).get("ci") or [None, None]
            cells += [(entry or {}).get("value"), ci[0], ci[1]]
        w.writerow(cells + [r["tokens_by_source"].get(s, 0) for s in sources])
    return buf.getvalue()


def _layers(stages: list[Stage]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for s in stages:
        depth[s.name] = 1 + max((depth[n] for n in s.inputs), default=-1)
    return depth


STATE_COLOURS = {"done": "#cde8c4", "running": "#f8e3a3", "failed": "#f2b8b5", "pending": "#e6e6e6"}


def stage_graph_svg(stages: list[Stage], records: dict[str, dict]) -> str:
    """The stage graph as an inline SVG: one column per depth, edges from each input, boxes coloured by state."""
    depth = _layers(stages)
    columns: dict[int, list[str]] = {}
    for s in stages:
        columns.setdefault(depth[s.name], []).append(s.name)
    w, h, gx, gy = 150, 26, 40, 10
    pos = {name: (20 + d * (w + gx), 20 + i * (h + gy)) for d, names in columns.items()
           for i, name in enumerate(names)}
    width = 40 + len(columns) * (w + gx)
    height = 40 + max(len(v) for v in columns.values()) * (h + gy)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="stage graph">']
    for s in stages:
        x2, y2 = pos[s.name]
        for n in s.inputs:
            x1, y1 = pos[n]
            parts.append(f'<line x1="{x1 + w}" y1="{y1 + h / 2}" x2="{x2}" y2="{y2 + h / 2}" stroke="#999"/>')
    for s in stages:
        x, y = pos[s.name]
        state = records[s.name].get("status", "pending")
        parts.append(f'<g><title>{html.escape(s.name)}: {state}</title><rect x="{x}" y="{y}" width="{w}" '
                     f'height="{h}" rx="4" fill="{STATE_COLOURS.get(state, "#fff")}" stroke="#555"/>'
                     f'<text x="{x + 6}" y="{y + 17}" font-size="11" font-family="sans-serif">'
                     f'{html.escape(s.name[:22])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _link(run_dir: Path, path: str | Path, label: str) -> str:
    rel = os.path.relpath(path, run_dir)
    return f'<a href="{html.escape(rel)}">{html.escape(label)}</a>'


def _summary_cell(summary: dict | None) -> str:
    if not summary:
        return ""
    keys = ("rows_in", "rows_out", "rows_quarantined", "rows_heldout", "tokens_in", "tokens_out", "valid_fraction",
            "bpb_in_domain", "bpb_general", "heldout_roc_auc")
    shown = [f"{k}: {summary[k]:,}" if isinstance(summary[k], int) else f"{k}: {summary[k]:.4g}"
             for k in keys if isinstance(summary.get(k), (int, float))]
    for stage, s in (summary.get("stages") or {}).items():
        shown.append(f"{stage}: {s['tokens']:,} tokens, loss {_fmt(s.get('final_loss'), 3)}")
    return "<br>".join(html.escape(x) for x in shown)


def index_html(ctx, stages: list[Stage], rows: list[dict], caveats: list[str], validation: str) -> str:
    records = _records(ctx, stages)
    run = ctx.run_dir
    table_rows = []
    for s in stages:
        r = records[s.name]
        manifests = [p / "manifest.json" for p in map(Path, s.outputs.values()) if (p / "manifest.json").is_file()]
        links = " ".join(_link(run, m, f"manifest ({m.parent.name})") for m in manifests)
        state = html.escape(r.get("status", "pending"))
        error = f"<br><small>{html.escape(r['error'][:300])}</small>" if r.get("error") else ""
        table_rows.append(f"<tr class='{state}'><td>{html.escape(s.name)}</td><td>{html.escape(s.kind)}</td>"
                          f"<td>{state}{error}</td><td>{r.get('wall_s', '')}</td>"
                          f"<td>{', '.join(map(html.escape, s.inputs))}</td><td>{_summary_cell(r.get('summary'))}"
                          f"</td><td>{links}</td></tr>")
    figures = []
    for png in sorted((run / "figures").glob("*/*.png")):
        name = html.escape(png.parent.name)
        figures.append(f"<figure><img src='{html.escape(os.path.relpath(png, run))}' alt='{name}' "
                       f"style='max-width:100%'><figcaption>{name}</figcaption></figure>")
    report = run / "report" / "report.html"
    links = [_link(run, report, "threshold report")] if report.is_file() else []
    links.append(_link(run, run / "ablation.md", "ablation.md"))
    links.append(_link(run, run / "ablation.csv", "ablation.csv"))
    md = ablation_markdown(rows, caveats)
    compared = run / "selections" / "selections.md"
    selections = (f"<h2>Selections side by side</h2><pre>{html.escape(compared.read_text())}</pre>"
                  if compared.is_file() else "")
    caveat_html = "".join(f"<p class='caveat'><strong>Note:</strong> {html.escape(c)}</p>" for c in caveats)
    if validation:
        selections = f"<h2>Classifiers on data they never saw</h2><pre>{html.escape(validation)}</pre>" + selections
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TRAIT pipeline: {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}}tr.failed{{background:#fbe3e1}}
tr.running{{background:#fdf3d6}}.caveat{{background:#fff4d6;padding:.5em;border-left:4px solid #e0a800}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style></head><body>
<h1>TRAIT pipeline run <code>{html.escape(str(run))}</code></h1>
<p>{' · '.join(links)}</p>
<h2>Stages</h2>
{stage_graph_svg(stages, records)}
<table><tr><th>stage</th><th>kind</th><th>state</th><th>wall s</th><th>inputs</th><th>summary</th>
<th>manifests</th></tr>
{''.join(table_rows)}</table>
<h2>Ablation</h2>
{caveat_html}
<pre>{html.escape(md)}</pre>
{selections}
<h2>Figures</h2>
{''.join(figures) or '<p>none yet</p>'}
</body></html>
"""


def write_outputs(ctx, stages: list[Stage]) -> dict:
    """ablation.{json,csv,md} and index.html in the run folder; returns the rows."""
    rows, caveats = ablation_rows(ctx, stages)
    classifiers = classifier_validation(ctx, stages)
    run = ctx.run_dir
    run.mkdir(parents=True, exist_ok=True)
    (run / "ablation.json").write_text(json.dumps({"caveats": caveats, "rows": rows, "classifiers": {
        c: {k: v for k, v in entry.items() if k != "markdown"} for c, entry in classifiers.items()}}, indent=1))
    (run / "ablation.csv").write_text(ablation_csv(rows))
    validation = validation_markdown(classifiers)
    (run / "ablation.md").write_text(ablation_markdown(rows, caveats) + validation)
    (run / "index.html").write_text(index_html(ctx, stages, rows, caveats, validation))
    return {"rows": rows, "caveats": caveats}
