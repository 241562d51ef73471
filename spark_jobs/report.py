"""``trait report``: a threshold-tuning report over a scored corpus, as one self-contained HTML page.

For each score column: histograms by documents and by tokens, exact document- and token-weighted percentiles and
sample documents from each score bucket; for the domain and quality columns, the documents and tokens kept by
every pair of thresholds; optionally precision, recall and F1 per threshold against validation labels. Every
figure is a Spark aggregation (``report_stats``); the driver only sees tables of bins and thresholds.

Validation labels are a rule, not a column: with ``positive_sources``, a document of the validation dataset (a
finished scored dataset, by default the input itself) is a positive when its ``source`` starts with one of the
prefixes, otherwise a negative. Ingest a labelled set as sources such as ``val/pos`` and ``val/neg``, score it,
and pass ``--validation runs/val_scored --positive-sources val/pos``.

Each classifier that scored the input and was judged on labelled sets it never saw (``trait classifier evaluate``,
or a pipeline's ``selection.validation``) has its card's validation block shown beside its held-out metrics: per
set ROC-AUC and the recall (or share kept) at the thresholds that keep 1/3/5% of the validation negatives.

The output is a directory written like a dataset: ``report.html``, ``report.json`` (every figure as data),
``manifest.json`` and ``_SUCCESS``, staged and moved into place; a rerun with the same config and inputs is a no-op.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from trait.config import ConfigError, field, to_dict

from . import report_stats as stats
from .dataset import DatasetError, JobOutput, finished_manifest, open_dataset, parts_glob
from .report_html import render_report

log = logging.getLogger(__name__)

REPORT_HTML, REPORT_JSON = "report.html", "report.json"  # what the report's directory holds besides a dataset's


@dataclass
class ReportConfig:
    bins: int = field(20, help="histogram bins over [0, 1]")
    percentiles: list[float] = field(default_factory=lambda: [1, 5, 10, 25, 50, 75, 90, 95, 99],
                                     help="percentiles (0-100) to tabulate, by documents and by tokens (the "
                                          "score `trait select` percentile=p cuts at)")
    domain_column: str | None = field(None, help="grid rows; default: the one score_domain_* column")
    quality_column: str | None = field(None, help="grid columns; default: the one score_quality_* column")
    domain_thresholds: list[float] | None = field(None, help="grid thresholds (score >= t); null: quantile-spaced, 0 "
                                                   "and the scores keeping 90/75/50/25/10/5/3/1% of the documents")
    quality_thresholds: list[float] | None = field(None, help="grid thresholds (score >= t); null: quantile-spaced")
    positive_sources: list[str] | None = field(None, help="validation: sources starting with these are positives")
    validation_column: str | None = field(None, help="score judged against the labels; default: the domain column")
    sample_buckets: int = field(10, help="equal-width score buckets over [0, 1] to sample documents from")
    samples_per_bucket: int = field(3, help="documents shown per bucket and score column")
    sample_chars: int = field(600, help="characters of each sample's text shown")
    seed: int = field(0, help="sample choice: the smallest sha1('<seed>:<id>') in each bucket")

    def validate(self) -> None:
        if not 1 <= self.bins <= 1000:
            raise ConfigError(f"bins must be in [1, 1000], got {self.bins}")
        if any(not 0 < p < 100 for p in self.percentiles):
            raise ConfigError(f"percentiles must be in (0, 100) (p: the lowest score left when the lowest p% are "
                              f"dropped), got {self.percentiles}")
        for name in ("domain_thresholds", "quality_thresholds"):
            if getattr(self, name) is None:
                continue
            if not getattr(self, name):
                raise ConfigError(f"{name} needs at least one threshold, or null for quantile-spaced ones")
            setattr(self, name, sorted(set(getattr(self, name))))  # the bucket index needs them ascending
        if not 1 <= self.sample_buckets <= 1000 or not 0 <= self.samples_per_bucket <= 100:
            raise ConfigError("sample_buckets must be in [1, 1000] and samples_per_bucket in [0, 100]")
        if self.sample_chars <= 0:
            raise ConfigError(f"sample_chars must be positive, got {self.sample_chars}")
        if self.positive_sources is not None and not all(self.positive_sources):
            raise ConfigError("positive_sources must be non-empty prefixes, e.g. ['math/']")


def _axis_column(columns: list[str], given: str | None, kind: str) -> str | None:
    """The configured column (which must exist), else the single ``score_<kind>_*`` column, else None."""
    if given is not None:
        if given not in columns:
            raise ConfigError(f"{kind}_column {given!r} not found; score columns are: {columns}")
        return given
    matches = [c for c in columns if c.startswith(f"score_{kind}_")]
    return matches[0] if len(matches) == 1 else None


def classifier_validation(scored_manifest: dict) -> dict:
    """Per score column of a scored dataset: its classifier's held-out metrics and, when the classifier's card holds
    a validation block for the very model that scored (same sha1), that block."""
    out = {}
    models = (scored_manifest.get("config") or {}).get("models") or []
    for model_dir, card in zip(models, (scored_manifest.get("config") or {}).get("cards") or []):
        path = Path(model_dir) / "card.json"
        on_disk = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        block = on_disk.get("validation")
        if block is not None and block.get("model_sha1") != card.get("model_sha1"):
            block = None  # judged a retrained model, not the one that scored
        out[card["score_column"]] = {"model": model_dir, "heldout_metrics": card.get("heldout_metrics"),
                                     "validation": block}
    return out


def build_figures(df, config: ReportConfig, input_path: str, validation=None, classifiers=None) -> dict:
    """Every figure of the report as plain data. ``validation``: (DataFrame, path) labelled by the source rule;
    ``classifiers``: ``classifier_validation`` of the input."""
    columns = [c for c in df.columns if c.startswith("score_")]
    if not columns:
        raise DatasetError(f"{input_path} has no score_* columns; run `trait score` on it first")
    docs, tokens, summaries = stats.column_summaries(df, columns)
    data = {"input": input_path, "documents": docs, "tokens": tokens, "config": to_dict(config),
            "columns": summaries, "histograms": {}, "samples": {}, "grid": None, "validation": None,
            "classifiers": classifiers or {}, "notes": {}}
    if not docs:
        data["notes"]["empty"] = "The corpus is empty: 0 documents, so there is nothing to plot or sample."
    thresholds = {}
    for column in columns:
        hist = stats.histogram_and_percentiles(df, column, config.bins,
                                               sorted({*config.percentiles, *stats.GRID_PERCENTILES}))
        thresholds[column] = stats.quantile_thresholds([c for c in hist["percentiles"]["docs"]
                                                        if c["p"] in stats.GRID_PERCENTILES])
        hist["percentiles"] = {w: [c for c in cuts if c["p"] in config.percentiles]
                               for w, cuts in hist["percentiles"].items()}
        s = summaries[column]
        binned = sum(hist["docs"])
        if binned + s["null"] + s["nan"] != docs:  # two independent aggregations must agree on every row
            raise DatasetError(f"{column}: {binned} binned + {s['null']} null + {s['nan']} NaN != {docs} documents")
        data["histograms"][column] = hist
        if docs and not s["valid"]:
            data["notes"][f"null:{column}"] = f"{column}: no document has a score (all null or NaN)."
        data["samples"][column] = stats.sample_documents(df, column, config.sample_buckets, config.samples_per_bucket,
                                                         config.sample_chars, config.seed) if s["valid"] else []
    domain = _axis_column(columns, config.domain_column, "domain")
    quality = _axis_column(columns, config.quality_column, "quality")
    for column, given in ((domain, config.domain_thresholds), (quality, config.quality_thresholds)):
        if column and given is not None:
            thresholds[column] = given
    if domain and quality and domain != quality:
        data["grid"] = stats.threshold_grid(df, domain, quality, thresholds[domain], thresholds[quality])
    else:
        data["notes"]["grid"] = (f"No threshold grid: it needs two score columns, set domain_column and "
                                 f"quality_column (score columns: {', '.join(columns)}).")
    if validation is not None:
        vdf, vpath = validation
        column = config.validation_column or domain
        if column is None or column not in vdf.columns:
            raise ConfigError(f"validation_column {column!r} not found in {vpath}; score columns there are: "
                              f"{[c for c in vdf.columns if c.startswith('score_')]}")
        # The column is judged at its grid thresholds (given, or quantile-spaced over the scored input).
        data["validation"] = {"path": vpath, **stats.precision_recall(vdf, column, thresholds[column],
                                                                      config.positive_sources)}
    return data


def run_report(spark, config: ReportConfig, input_path: str, output: str, validation_path: str | None = None,
               overwrite: bool = False) -> dict:
    """Write the report of the finished scored dataset ``input_path`` to the directory ``output``; return the
    manifest (with the figures under ``report``)."""
    if validation_path is not None and not config.positive_sources:
        raise ConfigError("--validation needs positive_sources (--positive-sources PREFIX ...) to label documents")
    df, _ = open_dataset(spark, input_path)
    classifiers = classifier_validation(finished_manifest(spark, input_path))
    globs = [parts_glob(input_path)]
    validation = None
    if config.positive_sources:
        if validation_path is None:
            validation = (df, input_path)
        else:
            validation = (open_dataset(spark, validation_path)[0], validation_path)
            globs.append(parts_glob(validation_path))
    job = JobOutput(spark, output, "report", {**to_dict(config), "validation": validation_path,
                                              "classifiers": classifiers}, globs, overwrite,
                    own=(REPORT_JSON, REPORT_HTML), writes_rows=False)
    if (done := job.finished()) is not None:
        return done
    t0 = time.time()
    data = build_figures(df, config, input_path, validation, classifiers)
    log.info("report: figures aggregated in %.1f s", time.time() - t0)
    staging = job.begin()
    job.fs.write_text(f"{staging}/{REPORT_JSON}", json.dumps(data, indent=1, sort_keys=True))
    job.fs.write_text(f"{staging}/{REPORT_HTML}", render_report(data))
    # Every row is described (binned, null or NaN in each column; checked in build_figures); none is written.
    counts = {"rows_in": data["documents"], "rows_described": data["documents"], "tokens_in": data["tokens"]}
    return job.commit(extra={"counts": counts, "report": {"html": f"{job.path}/{REPORT_HTML}",
                                                          "json": f"{job.path}/{REPORT_JSON}"}})
