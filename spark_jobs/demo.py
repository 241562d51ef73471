"""``trait demo``: the math selection pipeline on ../shared/data, end to end, and its summary tables.

Ingest the seed and the pool; deduplicate the pool; decontaminate both against the nine math benchmarks' test
splits; train the domain and quality classifiers; score the pool on Spark and select (TRAIT); draw a random and a
DSIR selection at the same token budget; write the threshold-tuning report. Prints documents and tokens scored and
kept by source, the resolved thresholds, the held-out metrics, what dedup and decontamination removed, and the
three selections side by side. The configs are the YAML files in ``infra/configs/demo``, loaded by the loader
every command uses, with ``${data}`` and ``${work}`` set to this run's directories (each file's ``vars:`` block
holds the defaults a command run alone uses: ``runs/demo`` and ``../shared/data``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from trait.benchmarks import default_shared_data
from trait.config import ConfigError, field, from_dict, load_config
from trait.decontam import DecontamConfig
from trait.minhash import DedupConfig

from .baselines import RandomConfig, run_random
from .classifier import ClassifierConfig, train_classifier
from .compare import compare_selections, comparison_table
from .decontaminate import run_decontaminate
from .dedup import run_dedup
from .dsir import DsirConfig, run_dsir
from .ingest import IngestConfig, run_ingest
from .report import ReportConfig, run_report
from .score import ScoreConfig, run_score
from .select import SelectConfig, run_select
from .session import get_spark

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent.parent / "infra" / "configs" / "demo"


@dataclass
class DemoConfig:
    """``trait demo``'s settings."""

    data: str = field(default_factory=default_shared_data, help="the shared data directory ($TRAIT_SHARED_DATA, "
                      "else ../shared/data)")
    workdir: str = field("runs/demo", help="where the demo writes its datasets and models")


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


def cleaning_table(dedup: dict, decontaminated: dict[str, dict]) -> str:
    """Markdown: documents the pool's dedup dropped by reason, and what decontamination quarantined per benchmark."""
    c = dedup["counts"]
    lines = ["| step | dataset | documents in | documents out | removed | by reason |", "|---|---|---:|---:|---:|---|"]
    reasons = ", ".join(f"{k}: {v['rows']:,}" for k, v in c["dropped_by_reason"].items()) or "-"
    lines.append(f"| dedup | pool | {c['rows_in']:,} | {c['rows_out']:,} | {c['rows_in'] - c['rows_out']:,} | "
                 f"{reasons} |")
    for name, m in decontaminated.items():
        d = m["counts"]
        hits = sorted(d["quarantined_by_benchmark"].items())
        per = ", ".join(f"{k}: {v['rows']:,}" for k, v in hits if v["rows"]) or "-"
        lines.append(f"| decontaminate | {name} | {d['rows_in']:,} | {d['rows_out']:,} | {d['rows_quarantined']:,} "
                     f"| {per} |")
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
    run_ingest(spark, load_config(IngestConfig, CONFIGS / "ingest_seed.yaml", vars=values), str(work / "raw_seed"))
    run_ingest(spark, load_config(IngestConfig, CONFIGS / "ingest_pool.yaml", vars=values), str(work / "raw_pool"))
    dedup = run_dedup(spark, from_dict(DedupConfig, {}), str(work / "raw_pool"), str(work / "dedup_pool"))
    decontam = from_dict(DecontamConfig, {"shared_data": values["data"]})
    decontaminated = {name: run_decontaminate(spark, decontam, str(work / src), str(work / name))
                      for name, src in (("seed", "raw_seed"), ("pool", "dedup_pool"))}
    cards = []
    for name in ("classifier_domain.yaml", "classifier_quality.yaml"):
        cfg = load_config(ClassifierConfig, CONFIGS / name, vars=values)
        cards.append(train_classifier(cfg, work / "models" / cfg.name))
    models = [str(work / "models" / c["name"]) for c in cards]
    scored = run_score(spark, from_dict(ScoreConfig, {"models": models}), str(work / "pool"), str(work / "scored"))
    selected = run_select(spark, load_config(SelectConfig, CONFIGS / "select.yaml", vars=values), str(work / "scored"),
                          str(work / "selected"))
    # The paper's baselines draw from the same scored pool to the budget the TRAIT selection reached.
    same_budget = {"budget_from": str(work / "selected"), "seed": 0}
    run_random(spark, from_dict(RandomConfig, same_budget), str(work / "scored"), str(work / "random"))
    run_dsir(spark, from_dict(DsirConfig, same_budget), str(work / "scored"), str(work / "seed"), str(work / "dsir"))
    report = run_report(spark, from_dict(ReportConfig, {}), str(work / "scored"), str(work / "report"))
    comparison = compare_selections(spark, {"trait": str(work / "selected"), "random": str(work / "random"),
                                            "dsir": str(work / "dsir")})
    table = "\n\n".join([cleaning_table(dedup, decontaminated), summary_table(scored, selected, cards),
                          comparison_table(comparison)])
    (work / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nreport: {report['report']['html']}")
    print(f"demo finished in {time.time() - started:.0f} s; datasets and models under {work}")
    return {"dedup": dedup, "decontaminated": decontaminated, "scored": scored, "selected": selected,
            "cards": cards, "comparison": comparison, "report": report}
