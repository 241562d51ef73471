"""``trait demo``: the math selection pipeline on ../shared/data, end to end, and its summary table.

Ingest the seed and the pool, train the domain and quality classifiers, score the pool on Spark, select, and
print documents and tokens scored and kept by source, the resolved thresholds and the held-out metrics. The
configs are the YAML files in ``infra/configs/demo`` (``${data}`` and ``${work}`` are filled in here).
"""

from __future__ import annotations

import logging
import string
import time
from pathlib import Path

import yaml

from trait.config import ConfigError, from_dict

from .classifier import ClassifierConfig, train_classifier
from .ingest import IngestConfig, run_ingest
from .score import ScoreConfig, run_score
from .select import SelectConfig, run_select
from .session import get_spark

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent.parent / "infra" / "configs" / "demo"


def load_demo_config(cls, name: str, values: dict[str, str]):
    """Config ``cls`` from ``infra/configs/demo/<name>`` with ``${data}`` and ``${work}`` filled in."""
    text = string.Template((CONFIGS / name).read_text()).substitute(values)
    return from_dict(cls, yaml.safe_load(text), name)


def summary_table(scored: dict, selected: dict, cards: list[dict]) -> str:
    """Markdown table of documents and tokens scored and kept per source, thresholds and classifier metrics."""
    lines = ["| source | docs scored | docs kept | tokens scored | tokens kept | tokens kept % |",
             "|---|---:|---:|---:|---:|---:|"]
    by_source = selected["counts"]["by_source"]
    for source, s in sorted(by_source.items()):
        share = 100 * s["tokens_out"] / s["tokens_in"] if s["tokens_in"] else 0.0
        lines.append(f"| {source} | {s['rows_in']:,} | {s['rows_out']:,} | {s['tokens_in']:,} | "
                     f"{s['tokens_out']:,} | {share:.2f} |")
    c = selected["counts"]
    lines.append(f"| **total** | {c['rows_in']:,} | {c['rows_out']:,} | {c['tokens_in']:,} | {c['tokens_out']:,} | "
                 f"{100 * c['tokens_out'] / max(c['tokens_in'], 1):.2f} |")
    lines += ["", "| threshold | column | rule | resolved score |", "|---|---|---|---:|"]
    for key, t in selected["thresholds"].items():
        rule = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in t["rule"].items())
        lines.append(f"| {key} | {t['column']} | {rule} | {t['score']:.4f} |")
    lines += ["", "| classifier | train docs | held-out docs | precision | recall | F1 | ROC-AUC |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for card in cards:
        m = card["heldout_metrics"]
        lines.append(f"| {card['score_column']} | {card['data']['train']['n']:,} | {m['n']:,} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['roc_auc']:.3f} |")
    lines.append(f"\nscored in {scored['wall_time_s']:.1f} s on {scored['spark_master']}; tokens counted with "
                 f"'{selected.get('tokenizer')}'")
    return "\n".join(lines)


def run_demo(workdir: str, data: str, master: str | None = None) -> dict:
    """Run the whole demo under ``workdir``; finished steps of an earlier run are reused."""
    started = time.time()
    work = Path(workdir).resolve()
    values = {"data": str(Path(data).resolve()), "work": str(work)}
    if not (Path(values["data"]) / "corpora").is_dir():
        raise ConfigError(f"{data} does not look like the shared data directory (no corpora/ inside); "
                          "pass --data or set TRAIT_SHARED_DATA")
    spark = get_spark("trait-demo", master)
    run_ingest(spark, load_demo_config(IngestConfig, "ingest_seed.yaml", values), str(work / "seed"))
    run_ingest(spark, load_demo_config(IngestConfig, "ingest_pool.yaml", values), str(work / "pool"))
    cards = []
    for name in ("classifier_domain.yaml", "classifier_quality.yaml"):
        cfg = load_demo_config(ClassifierConfig, name, values)
        cards.append(train_classifier(cfg, work / "models" / cfg.name))
    models = [str(work / "models" / c["name"]) for c in cards]
    scored = run_score(spark, from_dict(ScoreConfig, {"models": models}), str(work / "pool"), str(work / "scored"))
    selected = run_select(spark, load_demo_config(SelectConfig, "select.yaml", values), str(work / "scored"),
                          str(work / "selected"))
    table = summary_table(scored, selected, cards)
    (work / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\ndemo finished in {time.time() - started:.0f} s; datasets and models under {work}")
    return {"scored": scored, "selected": selected, "cards": cards}
