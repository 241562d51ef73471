"""``trait score``: add one float32 column per fastText classifier to every row of a contract dataset.

The classifiers travel with the job (``SparkContext.addFile``), each Python worker loads them once (the cache
in ``shipped``), and rows are scored an Arrow batch at a time. Scoring never drops a row: a text that normalises
to nothing gets a null score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from trait.config import ConfigError, field, to_dict

from . import shipped
from .classifier import load_card, positive_probability
from .dataset import JobOutput, open_dataset, parts_glob, read_parts
from .text import normalise

log = logging.getLogger(__name__)


@dataclass
class ScoreConfig:
    models: list[str] = field(help="classifier directories (each with card.json and its .bin)")

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("score needs at least one classifier directory")


def score_batches(models: list[tuple[str, str]]):
    """mapInArrow function: append ``(column, shipped model name)`` scores to each batch."""

    def run(batches):
        loaded = [(column, shipped.fasttext_model(name)) for column, name in models]
        for batch in batches:
            texts = [normalise(t) for t in batch.column("text").to_pylist()]
            present = np.fromiter((bool(t) for t in texts), dtype=bool, count=len(texts))
            scored = [t for t in texts if t]
            columns = []
            for _, model in loaded:
                values = np.zeros(len(texts), dtype=np.float32)
                if scored:
                    values[present] = positive_probability(model, scored)
                columns.append(pa.array(values, type=pa.float32(), mask=~present))
            yield pa.RecordBatch.from_arrays(list(batch.columns) + columns,
                                             names=batch.schema.names + [c for c, _ in models])

    return run


def score_stats(spark, path: str, columns: list[str], rows_in: int) -> dict:
    """Rows by source and each score's mean and null count, aggregated over the written output."""
    from pyspark.sql import functions as F

    aggs = [F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens")]
    for c in columns:
        aggs += [F.avg(c).alias(f"{c}__mean"), F.sum(F.col(c).isNull().cast("long")).alias(f"{c}__nulls")]
    by_source = {}
    for r in read_parts(spark, path).groupBy("source").agg(*aggs).collect():
        by_source[r["source"]] = {"rows": r["rows"], "tokens": r["tokens"],
                                  **{f"{c}_mean": r[f"{c}__mean"] for c in columns},
                                  **{f"{c}_nulls": r[f"{c}__nulls"] for c in columns}}
    return {"rows_in": rows_in, "rows_out": sum(v["rows"] for v in by_source.values()), "rows_quarantined": 0,
            "tokens_out": sum(v["tokens"] or 0 for v in by_source.values()), "by_source": by_source}


def run_score(spark, config: ScoreConfig, input_path: str, output: str, overwrite: bool = False) -> dict:
    """Score the finished dataset at ``input_path`` with every classifier; write all rows to ``output``."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    df, upstream = open_dataset(spark, input_path)
    cards = [load_card(m) for m in config.models]
    columns = [card["score_column"] for card, _ in cards]
    if len(set(columns)) != len(columns):
        raise ConfigError(f"two classifiers write the same column: {columns}")
    job = JobOutput(spark, output, "score", {**to_dict(config), "cards": [c for c, _ in cards]},
                    [parts_glob(input_path), *[str(b) for _, b in cards]], overwrite)
    if (done := job.finished()) is not None:
        return done
    clash = [c for c in columns if c in df.columns]
    if clash:
        raise ConfigError(f"{input_path} already has column(s) {clash}; score the unscored dataset or bump the "
                          "classifier version")
    models = [(card["score_column"], shipped.ship(spark, str(bin_path))) for card, bin_path in cards]
    out_schema = pa.schema(list(to_arrow_schema(df.schema)) + [pa.field(c, pa.float32()) for c in columns])
    scored = df.mapInArrow(score_batches(models), from_arrow_schema(out_schema))
    rows_in = df.count()
    return job.write(scored, stats=lambda s, p: score_stats(s, p, columns, rows_in),
                     extra={"tokenizer": upstream.get("tokenizer"), "score_columns": columns,
                            "classifiers": {c["score_column"]: {"name": c["name"], "version": c["version"],
                                                                "sha1": c["model_sha1"],
                                                                "heldout_metrics": c["heldout_metrics"]}
                                            for c, _ in cards}})
