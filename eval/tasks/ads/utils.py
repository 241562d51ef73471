"""Loaders and scorers of the ads-style tasks (lm-eval ``custom_dataset`` / ``process_results`` hooks).

Every loader reads the public proxies in ``$TRAIT_SHARED_DATA/ads`` (default ``../shared/data/ads``); nothing is
downloaded. Rows are put in a fixed order, by the SHA-1 of their content, so that ``--limit N`` takes a stable
sample that mixes labels (the files are grouped by topic and label). Evaluation uses the test split; few-shot
exemplars come from a train (or validation) split that shares no row with it.

- ``xglue_qadsm_de/{train,dev,test}.tsv``: XGLUE QADSM, German Bing Ads; TSV without header: query, ad title, ad
  description, label ``Good``/``Bad`` (train 9,000, dev 1,000, test 10,000, balanced). Research-use terms.
- ``webis_generative_native_ads/responses-{validation,test}.jsonl`` + ``-labels.jsonl``: English answers of Bing
  Copilot and YouChat to commercial queries (id, service, meta_topic, query, response), some with a native ad
  inserted by GPT-4 Turbo; the labels file gives label 0/1 and the advertised brand by id (test 2,600: 913 ads).
- ``ecommerce_product_matching_ditto/er_magellan__Textual__Abt-Buy__{train,valid,test}.txt.gz``: product-offer pairs
  ("COL name VAL ... COL description VAL ... COL price VAL ...", twice, then the match label); we use the single
  offers (name = title, description), not the pairs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import datasets

from eval.metrics import distinct_1, distinct_2, roc_auc  # noqa: F401  (the YAMLs' aggregations)
from trait.benchmarks import shared_data_file

MAX_DESCRIPTION_CHARS = 600  # ~150 tokens: a 3-shot prompt stays well inside a 2,048-token context
OFFER = re.compile(r"COL name VAL (?P<name>.*?) COL description VAL (?P<description>.*?) COL price VAL")


def _file(*parts: str) -> Path:
    return shared_data_file(Path("ads", *parts))


def _hash_order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: hashlib.sha1(json.dumps(r, sort_keys=True).encode()).hexdigest())


def _splits(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(_hash_order(rows)) for name, rows in splits.items()})


# --- trait_qadsm ---------------------------------------------------------------------------------------------

def _qadsm_rows(split: str) -> list[dict]:
    rows = []
    with open(_file("xglue_qadsm_de", f"{split}.tsv"), encoding="utf-8") as fh:
        for line in fh:
            query, title, description, label = line.rstrip("\n").split("\t")
            rows.append({"query": query, "ad_title": title, "ad_description": description,
                         "label": int(label == "Good")})
    return rows


def load_qadsm(**_) -> datasets.DatasetDict:
    """QADSM: test (10,000) for evaluation, train (9,000) for few-shot exemplars."""
    return _splits(train=_qadsm_rows("train"), test=_qadsm_rows("test"))


# --- trait_webis_ads -----------------------------------------------------------------------------------------

def _webis_rows(split: str) -> list[dict]:
    labels = {}
    with open(_file("webis_generative_native_ads", f"responses-{split}-labels.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            labels[row["id"]] = int(row["label"])
    rows = []
    with open(_file("webis_generative_native_ads", f"responses-{split}.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append({"id": row["id"], "meta_topic": row["meta_topic"], "query": row["query"],
                         "response": row["response"], "label": labels[row["id"]]})
    return rows


def load_webis_ads(**_) -> datasets.DatasetDict:
    """Webis native ads: test (2,600) for evaluation, validation (3,257) for few-shot exemplars (train has no text)."""
    return _splits(validation=_webis_rows("validation"), test=_webis_rows("test"))


# --- trait_product_title -------------------------------------------------------------------------------------

def _offers(split: str) -> dict[str, str]:
    """Unique Abt-Buy offers of a split: title -> description, the leading copy of the title removed from the
    description (about 40% of them start with it, which would make the task a copy)."""
    offers = {}
    with gzip.open(_file("ecommerce_product_matching_ditto", f"er_magellan__Textual__Abt-Buy__{split}.txt.gz"),
                   "rt", encoding="utf-8") as fh:
        for line in fh:
            for side in line.split("\t")[:2]:
                match = OFFER.search(side)
                if not match:
                    continue
                title, description = match["name"].strip(), match["description"].strip()
                description = description.removeprefix(title).strip()
                if title and len(description) >= 20:
                    offers.setdefault(title, description[:MAX_DESCRIPTION_CHARS])
    return offers


def load_product_titles(**_) -> datasets.DatasetDict:
    """Abt-Buy offers: the unique offers of the valid and test pair files for evaluation (1,354), and the train
    file's offers that are not among them as the few-shot pool (195). The pair splits share most offers (only 114
    eval offers are absent from train), and no model is trained on them, so the split that matters is exemplar
    vs evaluated offer: no title is both."""
    evaluated = {**_offers("valid"), **_offers("test")}
    pool = {t: d for t, d in _offers("train").items() if t not in evaluated}
    as_rows = lambda offers: [{"description": d, "title": t} for t, d in offers.items()]  # noqa: E731
    return _splits(train=as_rows(pool), test=as_rows(evaluated))


# --- scoring -------------------------------------------------------------------------------------------------

def relevance_scores(doc: dict, results: list) -> dict:
    """Choices are [negative answer, positive answer]; ``results`` their (log-likelihood, is_greedy) pairs.

    The score is log P(positive) - log P(negative): a per-item value whose ranking ROC-AUC measures against the
    label, free of any threshold. ``acc`` is the 0/1 decision at score 0 (the argmax of the two answers).
    """
    (ll_negative, _), (ll_positive, _) = results
    score = float(ll_positive - ll_negative)
    return {"roc_auc": (score, int(doc["label"])), "acc": float((score > 0) == bool(doc["label"]))}


def title_outputs(doc: dict, results: list) -> dict:
    """The generated title (first line, stripped) for the corpus-level distinct-n aggregations."""
    title = results[0].strip().split("\n")[0].strip()
    return {"distinct_1": title, "distinct_2": title}
