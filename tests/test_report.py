"""``trait report``: every figure equals an independent pandas computation; the page is escaped and loads cleanly
in headless Chromium; empty corpora and all-null scores render with a note; reruns are no-ops."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from spark_jobs.dataset import DatasetError
from spark_jobs.report import ReportConfig, build_figures, run_report
from spark_jobs.report_stats import FINE_PER_BIN
from trait.cli import main
from trait.config import ConfigError, from_dict
from trait.contract import finished_dataset

D, Q = "score_domain_math_v1", "score_quality_edu_v1"
EVIL = ('<script>console.error("pwned")</script><img src=x onerror="console.error(\'pwned\')">'
        "<b>bold</b> &amp; </pre><style>body{display:none}</style>")
CONFIG = {"positive_sources": ["wiki/"], "validation_column": Q}


def _write_dataset(path: Path, table: pa.Table) -> str:
    """A finished dataset directory holding ``table`` (as the jobs write them: part, manifest, marker)."""
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-00000.parquet")
    (path / "manifest.json").write_text("{}")
    (path / "_SUCCESS").write_text("")
    return str(path)


def _evil_id() -> str:
    """An id whose sample key sha1('0:<id>') starts with 0000, so it is the sample of its bucket."""
    for n in itertools.count():
        if hashlib.sha1(f"0:evil-{n}".encode()).hexdigest().startswith("0000"):
            return f"evil-{n}"


@pytest.fixture(scope="module")
def corpus(scored, tmp_path_factory):
    """The scored pool plus a script-injecting web page, a NaN score and a row without scores."""
    base = finished_dataset(scored).to_table()
    extra = pa.table({"id": [_evil_id(), "nan-row", "null-row"], "source": ["web/<b>evil</b>", "web/x", "web/x"],
                      "text": [EVIL, "a NaN domain score", "no scores"], "url": [None, None, None],
                      "n_tokens": pa.array([12, 4, 2], pa.int64()),
                      D: pa.array([0.97, float("nan"), None], pa.float32()),
                      Q: pa.array([0.55, 0.3, None], pa.float32())}).select(base.schema.names).cast(base.schema)
    root = tmp_path_factory.mktemp("report")
    return _write_dataset(root / "corpus", pa.concat_tables([base, extra]))


@pytest.fixture(scope="module")
def report(spark, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_out") / "report"
    manifest = run_report(spark, from_dict(ReportConfig, CONFIG), corpus, str(out))
    return out, manifest, json.loads((out / "report.json").read_text())


def _pandas(corpus):
    frame = finished_dataset(corpus).to_table().to_pandas()
    for c in (D, Q):
        frame[c] = frame[c].astype("float64")  # Spark compares float32 scores as doubles
    return frame


def _percentile(frame, column, weights, p):
    """The lowest score left when the lowest-scoring p% of the weight is dropped (integer p: exact arithmetic)."""
    valid = frame[frame[column].notna()].sort_values(column, kind="stable")
    w = np.ones(len(valid), dtype=np.int64) if weights == "docs" else valid["n_tokens"].to_numpy()
    cum = np.cumsum(w)
    return float(valid[column].to_numpy()[np.argmax(cum * 100 > p * cum[-1])])


def test_figures_equal_independent_pandas_computations(report, corpus):
    out, manifest, data = report
    frame = _pandas(corpus)
    assert (out / "_SUCCESS").exists() and manifest["counts"]["rows_in"] == len(frame)
    assert data["documents"] == len(frame) and data["tokens"] == frame["n_tokens"].sum()
    for c in (D, Q):
        valid = frame[frame[c].notna()]
        s = data["columns"][c]
        arrow = finished_dataset(corpus).to_table().column(c)
        nans = pc.sum(pc.is_nan(arrow)).as_py()
        assert (s["valid"], s["null"], s["nan"]) == (len(valid), arrow.null_count, nans)
        assert nans == (c == D)  # the injected NaN row
        assert s["valid_tokens"] == valid["n_tokens"].sum()
        index = np.clip(np.floor(valid[c].to_numpy() * 20), 0, 19).astype(int)
        hist = data["histograms"][c]
        assert hist["docs"] == np.bincount(index, minlength=20).tolist()
        assert hist["tokens"] == np.bincount(index, weights=valid["n_tokens"], minlength=20).astype(int).tolist()
        for weights in ("docs", "tokens"):
            got = {r["p"]: r["score"] for r in hist["percentiles"][weights]}
            assert got == {p: _percentile(frame, c, weights, p) for p in (1, 5, 10, 25, 50, 75, 90, 95, 99)}
    grid = data["grid"]
    assert (grid["domain_column"], grid["quality_column"]) == (D, Q)
    assert grid["domain_thresholds"][0] == 0.0 and len(grid["domain_thresholds"]) > 3  # quantile-spaced
    for i, j in itertools.product(range(len(grid["domain_thresholds"])), range(len(grid["quality_thresholds"]))):
        kept = frame[(frame[D] >= grid["domain_thresholds"][i]) & (frame[Q] >= grid["quality_thresholds"][j])]
        assert (grid["kept_docs"][i][j], grid["kept_tokens"][i][j]) == (len(kept), kept["n_tokens"].sum())
    positive = frame["source"].str.startswith("wiki/")
    v = data["validation"]
    assert (v["column"], v["documents"], v["positives"]) == (Q, len(frame), positive.sum())
    for row in v["rows"]:
        predicted = frame[Q] >= row["threshold"]
        tp, fp = (predicted & positive).sum(), (predicted & ~positive).sum()
        precision, recall = tp / (tp + fp), tp / positive.sum()
        assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, positive.sum() - tp)
        assert row["precision"] == pytest.approx(precision) and row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


@pytest.mark.parametrize("column, p", [(D, 50), (Q, 90)])
def test_select_cuts_where_the_report_shows_the_percentile(spark, report, corpus, tmp_path, column, p):
    """One convention (trait.ranks): ``trait select`` percentile=p keeps scores >= the report's p row, by documents."""
    from spark_jobs.select import SelectConfig, run_select

    data = report[2]
    shown = {r["p"]: r["score"] for r in data["histograms"][column]["percentiles"]["docs"]}[p]
    manifest = run_select(spark, from_dict(SelectConfig, {"domain": {"column": column, "percentile": p}}), corpus,
                          str(tmp_path / "selected"))
    assert manifest["thresholds"]["domain"]["score"] == shown


def test_samples_are_the_smallest_hashes_per_bucket_cut_to_600_characters(report, corpus):
    _, _, data = report
    frame = _pandas(corpus)
    for c in (D, Q):
        valid = frame[frame[c].notna()].copy()
        valid["bucket"] = np.clip(np.floor(valid[c] * 10), 0, 9).astype(int)
        valid["key"] = [hashlib.sha1(f"0:{i}".encode()).hexdigest() for i in valid["id"]]
        expected = {b: g.sort_values(["key", "id"]).head(3) for b, g in valid.groupby("bucket")}
        got = {b["bucket"]: b["docs"] for b in data["samples"][c]}
        assert sorted(got) == sorted(expected)
        for b, docs in got.items():
            assert [d["id"] for d in docs] == expected[b]["id"].tolist()
            assert [d["text"] for d in docs] == [t[:600] for t in expected[b]["text"]]
            assert [d["chars"] for d in docs] == [len(t) for t in expected[b]["text"]]
    assert data["samples"][D][-1]["docs"][0]["text"] == EVIL  # the injected page is shown


def _open_in_chromium(html: Path) -> dict:
    """Load the page in headless Chromium; console messages, page errors, images and the DOM facts we check."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "chromium not on PATH: run infra/setup.sh (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page()
        console, errors = [], []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri(), wait_until="load")
        facts = page.evaluate("""() => ({
            widths: Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0),
            scripts: document.querySelectorAll('script').length,
            bold: document.querySelectorAll('b').length,
            styles: document.querySelectorAll('style').length,
            pres: Array.from(document.querySelectorAll('pre')).map(p => p.textContent),
            notes: Array.from(document.querySelectorAll('.note')).map(p => p.textContent),
            visible: document.body.offsetHeight > 0})""")
        browser.close()
    return {"console": console, "errors": errors, **facts}


def test_page_loads_in_chromium_with_every_plot_and_web_text_escaped(report):
    out, _, data = report
    page = _open_in_chromium(out / "report.html")
    assert page["console"] == [] and page["errors"] == []
    # Two histograms, the threshold grid and the validation curve; the injected <img src=x> is not an element.
    assert len(page["widths"]) == 4 and all(w > 0 for w in page["widths"])
    assert (page["scripts"], page["bold"], page["styles"], page["visible"]) == (0, 0, 1, True)
    assert EVIL in page["pres"]
    raw = (out / "report.html").read_text()
    assert "<script" not in raw and "&lt;script&gt;" in raw and "web/&lt;b&gt;evil&lt;/b&gt;" in raw


def test_rerun_with_same_config_and_inputs_is_a_noop_through_the_cli(report, corpus, tmp_path, capsys):
    out, manifest, _ = report
    before = (out / "report.html").stat().st_mtime_ns
    config = tmp_path / "report.yaml"
    config.write_text(yaml.safe_dump({"validation_column": Q}))
    argv = ["report", "--config", str(config), "--input", corpus, "--output", str(out), "--positive-sources", "wiki/"]
    assert main(argv) == 0
    assert (out / "report.html").stat().st_mtime_ns == before
    assert json.loads((out / "manifest.json").read_text())["wall_time_s"] == manifest["wall_time_s"]
    assert json.loads(capsys.readouterr().out)["rows_in"] == manifest["counts"]["rows_in"]


def test_empty_corpus_renders_with_a_note(spark, scored, tmp_path):
    empty = _write_dataset(tmp_path / "empty", finished_dataset(scored).to_table().slice(0, 0))
    run_report(spark, from_dict(ReportConfig, {}), empty, str(tmp_path / "out"))
    data = json.loads((tmp_path / "out/report.json").read_text())
    assert (data["documents"], data["tokens"]) == (0, 0)
    assert data["grid"]["kept_docs"][0][0] == 0 and data["samples"] == {D: [], Q: []}
    page = _open_in_chromium(tmp_path / "out/report.html")
    assert page["console"] == [] and page["errors"] == [] and page["widths"] == []
    assert any("corpus is empty" in n for n in page["notes"])


def test_all_null_score_column_renders_with_a_note(spark, scored, tmp_path):
    table = finished_dataset(scored).to_table()
    nulls = pa.nulls(len(table), pa.float32())
    table = table.set_column(table.schema.get_field_index(D), table.schema.field(D), nulls)
    corpus = _write_dataset(tmp_path / "nulls", table)
    run_report(spark, from_dict(ReportConfig, {}), corpus, str(tmp_path / "out"))
    data = json.loads((tmp_path / "out/report.json").read_text())
    assert data["columns"][D]["null"] == len(table) and data["histograms"][D]["docs"] == [0] * 20
    assert all(r["score"] is None for r in data["histograms"][D]["percentiles"]["docs"])
    assert data["samples"][D] == [] and data["grid"]["kept_docs"][0][0] == 0
    page = _open_in_chromium(tmp_path / "out/report.html")
    assert page["console"] == [] and page["errors"] == []
    assert len(page["widths"]) == 2 and all(w > 0 for w in page["widths"])  # the quality histogram and the grid
    assert any(f"{D}: no document has a score" in n for n in page["notes"])


def test_bad_requests_say_what_to_do(spark, scored, small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="not found; score columns are"):
        run_report(spark, from_dict(ReportConfig, {"domain_column": "score_x_v1"}), scored, str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="needs positive_sources"):
        run_report(spark, ReportConfig(), scored, str(tmp_path / "b"), validation_path=scored)
    with pytest.raises(DatasetError, match="run `trait score`"):
        run_report(spark, ReportConfig(), small_corpus["pool"], str(tmp_path / "c"))
    for outside in (0, 100):  # 100: no score is left when all of the weight is dropped
        with pytest.raises(ConfigError, match="percentiles must be in"):
            from_dict(ReportConfig, {"percentiles": [outside]})


def test_skewed_scores_get_a_quantile_grid_and_a_log_histogram(spark):
    # 900 of 1000 domain scores sit below 0.01 (as a domain classifier's do on a general pool): a 0.1-step grid
    # would show 100% kept at 0 and <= 10% at 0.1, nothing between; one bar at 0 would be the histogram.
    rng = np.random.default_rng(0)
    domain = np.r_[10 ** rng.uniform(-5, -2, 900), rng.uniform(0.05, 1, 100)]
    quality = rng.uniform(0, 1, 1000)
    rows = [(f"d{i}", "web/x", "text", 3, float(d), float(q)) for i, (d, q) in enumerate(zip(domain, quality))]
    df = spark.createDataFrame(rows, f"id string, source string, text string, n_tokens long, {D} double, {Q} double")
    data = build_figures(df, from_dict(ReportConfig, {}), "skewed")
    grid = data["grid"]
    # Thresholds keeping 100, 90, 75, 50, 25, 10, 5, 3, 1% of the documents (distinct scores: exactly so).
    assert [row[0] for row in grid["kept_docs"]] == [1000, 900, 750, 500, 250, 100, 50, 30, 10]
    assert grid["domain_thresholds"][1:] == pytest.approx(np.sort(domain)[[100, 250, 500, 750, 900, 950, 970, 990]])
    hist = data["histograms"][D]
    assert hist["docs"][0] == 900 and data["histograms"][Q]["log"] is None
    log = hist["log"]
    fine_bins = 20 * FINE_PER_BIN
    bounds = np.rint(np.array(log["edges"]) * fine_bins)
    index = np.searchsorted(bounds, np.floor(domain * fine_bins), side="right") - 1
    assert log["docs"] == np.bincount(np.minimum(index, len(bounds) - 2), minlength=len(bounds) - 1).tolist()
    assert log["edges"][0] == 0 and log["edges"][-1] == 1 and sum(d > 0 for d in log["docs"]) >= 10


def test_classifiers_validation_is_shown_for_the_model_that_scored(scored, tmp_path):
    """A classifier judged on labelled sets it never saw has its validation table beside its held-out metrics; a
    validation of a retrained model (another sha1) is not shown as this one's."""
    from spark_jobs.classifier_eval import EvaluateConfig, evaluate_classifier
    from spark_jobs.report import classifier_validation
    from spark_jobs.report_html import render_report
    from trait.contract import write_text_dataset

    manifest = json.loads((Path(scored) / "manifest.json").read_text())
    models = manifest["config"]["models"]
    copy = tmp_path / "domain_math"  # the session's classifier stays unvalidated for the other tests
    shutil.copytree(models[0], copy)
    manifest["config"]["models"] = [str(copy), *models[1:]]
    before = classifier_validation(manifest)
    assert before[D]["validation"] is None and before[D]["heldout_metrics"]["roc_auc"] > 0.5
    unseen = write_text_dataset(tmp_path / "unseen_math", "math/x", [
        f"Let $f(x) = x^{i}$; the derivative is ${i}x^{i - 1}$ by the power rule, a theorem of calculus."
        for i in range(2, 12)])
    general = write_text_dataset(tmp_path / "unseen_general", "wiki/x", [
        f"The village of Example {i} lies on the river and had a population of {100 * i} at the census."
        for i in range(12)])
    evaluate_classifier(from_dict(EvaluateConfig, {"model": str(copy), "positive": [unseen], "negative": [general],
                                                   "bootstrap": 20}))
    shown = classifier_validation(manifest)
    block = shown[D]["validation"]
    assert set(block["sets"]) == {"unseen_math", "unseen_general"} and block["sets"]["unseen_math"]["n"] == 10
    assert shown[Q]["validation"] is None
    page = render_report({"input": scored, "documents": 0, "tokens": 0, "notes": {}, "classifiers": shown})
    assert "Classifiers on data they never saw" in page and "unseen_math" in page
    assert f"{block['sets']['unseen_math']['roc_auc']:.3f}" in page and "Not validated" in page
    manifest["config"]["cards"][0]["model_sha1"] = "0" * 40  # the scores came from another model
    assert classifier_validation(manifest)[D]["validation"] is None
