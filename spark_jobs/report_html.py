"""Render the figures of ``trait report`` (a plain dict, also written as report.json) as one self-contained page.

Plots are PNGs drawn with matplotlib's Agg renderer and embedded as ``data:`` URIs, so report.html is a single
file to mail or archive. Every string that comes from the data (texts, sources, ids, column names, paths) goes
through ``html.escape``, and a Content-Security-Policy forbids scripts outright: a web page in the corpus shows as
text and can neither add markup nor run code in the report.
"""

from __future__ import annotations

import base64
import io
from html import escape

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.note{background:#fff6d5;padding:.5em 1em;border-left:4px solid #e0b000}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;margin:.2em 0 1em;font-size:90%}
img{max-width:100%}.doc{font-size:90%;color:#555}"""


def _png(fig) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI (no Software tag: same figures, same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are already escaped or formatted; the first ``left`` columns align left."""
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def histogram_plot(column: str, hist: dict) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    log = hist.get("log")
    edges = list((log or hist)["edges"])
    if log:  # the bin [0, e1) is drawn as [e1 / ratio, e1] on the log axis, and labelled so
        edges[0] = edges[1] ** 2 / edges[2]
    for ax, key, label in zip(fig.subplots(1, 2), ("docs", "tokens"), ("documents", "tokens")):
        widths = [high - low for low, high in zip(edges, edges[1:])]
        ax.bar(edges[:-1], (log or hist)[key], width=widths, align="edge", color="#4878a8", edgecolor="white")
        ax.set_xlim(edges[0], 1)
        ax.set_xlabel(f"{column} (log axis; first bar: < {edges[1]:.2g})" if log else column)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per score bin")
        if log:
            ax.set_xscale("log")
    fig.tight_layout()
    return _png(fig)


def grid_plot(grid: dict, total_tokens: int) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    share = [[100 * t / total_tokens for t in row] for row in grid["kept_tokens"]]
    image = ax.imshow(share, origin="lower", cmap="viridis", aspect="auto", vmin=0, vmax=100)
    ax.set_xticks(range(len(grid["quality_thresholds"])), [f"{t:g}" for t in grid["quality_thresholds"]])
    ax.set_yticks(range(len(grid["domain_thresholds"])), [f"{t:g}" for t in grid["domain_thresholds"]])
    ax.set_xlabel(f"{grid['quality_column']} >=")
    ax.set_ylabel(f"{grid['domain_column']} >=")
    ax.set_title("tokens kept, % of corpus")
    for i, row in enumerate(share):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 50 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _png(fig)


def validation_plot(validation: dict) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    x = [r["threshold"] for r in validation["rows"]]
    for key in ("precision", "recall", "f1"):
        ax.plot(x, [r[key] if r[key] is not None else float("nan") for r in validation["rows"]], marker="o",
                label=key)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{validation['column']} >=")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _columns_section(data: dict) -> list[str]:
    out = ["<h2>Score columns</h2>"]
    rows = [[escape(c), _num(s["valid"]), _num(s["null"]), _num(s["nan"]), _num(s["valid_tokens"]), _num(s["min"]),
             _num(s["mean"]), _num(s["max"])] for c, s in data["columns"].items()]
    out.append(_table(["column", "scored docs", "null", "NaN", "scored tokens", "min", "mean", "max"], rows))
    for column, s in data["columns"].items():
        hist = data["histograms"][column]
        out.append(f"<h3>{escape(column)}</h3>")
        if not s["valid"]:
            out.append(f'<p class="note">No document has a score in {escape(column)} (all null or NaN): '
                       "no histogram or percentiles.</p>")
            continue
        out.append(_img(histogram_plot(column, hist), f"histogram of {column}"))
        pct = hist["percentiles"]
        rows = [[_num(d["p"], 1), _num(d["score"]), _num(t["score"])] for d, t in zip(pct["docs"], pct["tokens"])]
        out.append(_table(["percentile", "by documents", "by tokens"], rows))
    return out


def _grid_section(data: dict) -> list[str]:
    out = ["<h2>Kept by domain x quality threshold</h2>"]
    grid = data.get("grid")
    if grid is None:
        out.append(f'<p class="note">{escape(data["notes"].get("grid", "no grid"))}</p>')
        return out
    if data["tokens"]:
        out.append(_img(grid_plot(grid, data["tokens"]), "tokens kept per threshold pair"))
    header = [f"{escape(grid['domain_column'])} &ge; \\ {escape(grid['quality_column'])} &ge;"] + [
        f"{t:g}" for t in grid["quality_thresholds"]]
    for key, label in (("kept_docs", "Documents kept"), ("kept_tokens", "Tokens kept")):
        out.append(f"<h3>{label}</h3>")
        out.append(_table(header, [[f"{d:g}"] + [_num(v) for v in row]
                                   for d, row in zip(grid["domain_thresholds"], grid[key])]))
    return out


def _validation_section(data: dict) -> list[str]:
    validation = data.get("validation")
    if validation is None:
        return []
    prefixes = ", ".join(escape(p) for p in validation["positive_sources"])
    out = ["<h2>Validation</h2>",
           f"<p>{escape(validation['path'])}: {validation['documents']:,} documents, {validation['positives']:,} "
           f"positives (source starts with {prefixes}); a document is predicted positive when "
           f"{escape(validation['column'])} &ge; threshold.</p>"]
    if validation["documents"]:
        out.append(_img(validation_plot(validation), "precision, recall and F1 per threshold"))
    rows = [[f"{r['threshold']:g}", _num(r["tp"]), _num(r["fp"]), _num(r["fn"]), _num(r["precision"], 3),
             _num(r["recall"], 3), _num(r["f1"], 3)] for r in validation["rows"]]
    out.append(_table(["threshold", "TP", "FP", "FN", "precision", "recall", "F1"], rows))
    return out


def _classifiers_section(data: dict) -> list[str]:
    """Each classifier's held-out metrics (its own kind of data) and its validation on sets it never saw."""
    classifiers = data.get("classifiers") or {}
    if not classifiers:
        return []
    out = ["<h2>Classifiers on data they never saw</h2>",
           "<p>Held-out metrics come from the classifier's own training data; the validation sets are labelled "
           "documents it never trained on. Recall at k%: the share of a positive set scoring at or above the "
           "threshold that keeps k% of the validation negatives (for a negative set: its share kept).</p>"]
    for column, c in classifiers.items():
        held = c.get("heldout_metrics") or {}
        out.append(f"<h3>{escape(column)}</h3><p>held out: ROC-AUC {_num(held.get('roc_auc'), 3)}, F1 "
                   f"{_num(held.get('f1'), 3)} ({escape(c['model'])})</p>")
        block = c.get("validation")
        if block is None:
            out.append('<p class="note">Not validated: run <code>trait classifier evaluate</code> on labelled sets '
                       "it never trained on (or give the pipeline selection.validation).</p>")
            continue
        keeps = list(block["thresholds"])
        rows = []
        for name, s in block["sets"].items():
            at = s.get("recall_at_keep") or s.get("kept_at_keep")
            ci = s.get("roc_auc_ci95") or [None, None]
            rows.append([escape(name), escape(s["label"]), _num(s["n"]), _num(s["roc_auc"], 3),
                         f"{_num(ci[0], 3)}&ndash;{_num(ci[1], 3)}", *(_num(at[k], 3) for k in keeps)])
        out.append(_table(["set", "label", "n", "ROC-AUC", "95% CI", *(f"@{k}% neg" for k in keeps)], rows, left=2))
        out.append("<p>thresholds: " + ", ".join(f"{k}% &rarr; {_num(t)}" for k, t in block["thresholds"].items())
                   + f" (part: {escape(block.get('part', 'all'))})</p>")
    return out


def _samples_section(data: dict) -> list[str]:
    out = ["<h2>Sample documents per score bucket</h2>",
           f"<p>Per bucket, the documents with the smallest sha1(seed:id); texts cut to "
           f"{data['config']['sample_chars']} characters.</p>"]
    for column, buckets in data["samples"].items():
        out.append(f"<h3>{escape(column)}</h3>")
        if not buckets:
            out.append('<p class="note">No scored documents to sample.</p>')
        for b in buckets:
            out.append(f"<h4>{b['low']:g} &le; score &lt; {b['high']:g}</h4>")
            for d in b["docs"]:
                cut = f", cut from {d['chars']:,} characters" if d["chars"] > len(d["text"]) else ""
                out.append(f'<div class="doc">{escape(d["source"])} &middot; {escape(d["id"])} &middot; score '
                           f"{d['score']:.4f} &middot; {d['n_tokens']:,} tokens{cut}</div>"
                           f"<pre>{escape(d['text'])}</pre>")
    return out


def render_report(data: dict) -> str:
    """The whole page for the figures ``data`` (see ``spark_jobs.report.build_figures``)."""
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             f"<title>TRAIT report: {escape(data['input'])}</title><style>{STYLE}</style></head><body>",
             "<h1>Threshold report</h1>",
             f"<p>{escape(data['input'])}: {data['documents']:,} documents, {data['tokens']:,} tokens.</p>"]
    parts += [f'<p class="note">{escape(note)}</p>' for key, note in data["notes"].items() if key != "grid"]
    if data["documents"]:
        parts += _columns_section(data) + _grid_section(data)
    parts += _classifiers_section(data) + _validation_section(data)
    if data["documents"]:
        parts += _samples_section(data)
    parts.append("</body></html>")
    return "\n".join(parts)
