"""``trait synth annotate``: 0-5 educational-value labels for sampled corpus documents (the FineWeb-Edu recipe).

Draw ``sample_size`` documents from a finished contract dataset by a seeded hash of their ids (the same documents
for the same seed, whatever the file layout), cut each to ``max_chars`` characters at a white space, and ask the
generator for a grade with the ``annotate_v1`` rubric through the same server, client and prompt machinery as
``synth generate``. Structured outputs constrain the reply to {"justification", "score": 0..5}, with a bounded
justification so even a weak model closes the object inside ``max_tokens``. The output is a contract dataset with
the documents' own columns, their full text included, plus an integer ``label`` (the grade) that
``trait classifier train`` reads with ``labelled:`` and ``positive_min_grade``. A document that cannot be graded
(empty text, a prompt longer than the generator's context, a reply without a parseable grade) goes to
``_quarantine`` with its reason, counted in the manifest; a request refused for any other reason (a sampling
field the server rejects, say) would be refused for every document, so it stops the run with the server's
message instead. A ``seed`` in ``sampling`` seeds each document's request with a hash of (seed, document id):
the grades are reproducible, and documents do not share one random stream (with a shared stream a weak model's
grades are all the same). Work is committed in batches through
``synth.store.ChunkStore``, so a killed run resumes where it stopped and grades every document once.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from synth.generate import run_fingerprint
from synth.passage import parse_annotation
from synth.prompts import DEFAULT_ANNOTATE_TEMPLATE, OUTPUT_FORMATS, render_annotate_prompt
from synth.store import ChunkStore
from trait.config import ConfigError, field, to_dict
from trait.contract import BASE_FIELDS, ContractError, finished_dataset
from trait.outputs import check_output
from trait.serving.client import ChatRequest, request_sampling, run_chat_many, too_long_for_context
from trait.serving.server import ServerConfig, VllmServer

log = logging.getLogger(__name__)

MAX_GRADE = 5
# Why a document got no label. Parse failures (the last six) make the manifest's parse_failure_rate.
REJECT_REASONS = ("empty_document",  # no text to grade
                  "too_long_for_context",  # the server refused the prompt as longer than its context (lower max_chars)
                  "truncated",  # no grade, and the reply stopped at max_tokens
                  "empty_output", "invalid_json", "schema_mismatch", "missing_score", "score_out_of_range")
PARSE_FAILURES = REJECT_REASONS[2:]
# A refusal (4xx) whose message says the prompt does not fit the context is about this document: quarantined.
# vLLM: "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input
# tokens"; OpenAI says "maximum context length" too.

# The contract's base columns as the document has them (its own id; the whole text, not the cut the annotator saw),
# then the grade and its provenance.
ANNOTATION_SCHEMA = pa.schema([
    *BASE_FIELDS,
    pa.field("label", pa.int64()),  # the 0-5 grade; null only on quarantined rows
    pa.field("justification", pa.string()),
    pa.field("annotated_chars", pa.int64()),  # characters of the document shown to the annotator
    pa.field("template_version", pa.string()),
    pa.field("model", pa.string()),
    pa.field("sampling", pa.string()),  # what was sent, as sorted JSON (the seed is the document's own)
    pa.field("finish_reason", pa.string()),
    pa.field("reject_reason", pa.string()),  # null: labelled
    pa.field("reject_detail", pa.string()),
    pa.field("raw_output", pa.string()),  # the generator's reply (quarantine and audits only)
])


@dataclass
class AnnotateConfig:
    sample_size: int = field(1000, help="documents to grade, drawn by a seeded hash of their ids (all if fewer)")
    seed: int = field(0, help="seed of the document sample")
    sources: list[str] | None = field(None, help="grade only rows whose source starts with one of these")
    max_chars: int = field(3000, help="longer documents are cut to this many characters (at a white space) "
                           "before the annotator sees them; the output keeps the whole text")
    domain: str = field("mathematics", help="the field the rubric judges educational value for")
    template: str = field(DEFAULT_ANNOTATE_TEMPLATE, help="prompt template (synth/prompts/<name>.txt)")
    output_format: str = field("json", help="json: structured outputs with the template's schema (the grade "
                               "always parses unless cut at max_tokens); text: a last line 'Educational score: N'")
    max_justification_chars: int | None = field(300, help="json: longest justification the schema allows (so "
                                                "the object closes within max_tokens); null: unbounded")
    sampling: dict = field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 256, "seed": 0},
                           help="OpenAI sampling fields sent with every request")
    server: ServerConfig = field(default_factory=ServerConfig, help="the generator: endpoint or local vLLM")
    concurrency: int = field(8, help="requests in flight at once")
    timeout_s: float = field(300.0, help="per-request timeout in seconds")
    max_retries: int = field(4, help="retries of a transient failure (connection, timeout, 429, 5xx)")
    batch_docs: int = field(64, help="documents per committed batch (the unit a rerun skips or redoes)")

    def validate(self) -> None:
        if self.sample_size < 1 or self.batch_docs < 1 or self.concurrency < 1 or self.max_chars < 1:
            raise ConfigError("sample_size, batch_docs, concurrency and max_chars must be >= 1")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if self.max_justification_chars is not None and self.max_justification_chars < 1:
            raise ConfigError("max_justification_chars must be >= 1 or null")
        if not 0 < self.timeout_s < math.inf or self.max_retries < 0:
            raise ConfigError(f"timeout_s must be a positive number of seconds and max_retries >= 0, got "
                              f"{self.timeout_s} and {self.max_retries}")


def _rank(seed: int, ident: str) -> bytes:
    """Sort key of a document in the sample: sha1 of (seed, id), so the draw ignores row and file order."""
    return hashlib.sha1(f"{seed}:annotate:{ident}".encode("utf-8", "surrogatepass")).digest()


def sample_documents(path: str, config: AnnotateConfig) -> tuple[list[dict], dict]:
    """The sampled documents (base contract columns, in sample order) and how many there were to draw from."""
    import pyarrow.compute as pc

    columns = ["id", "source", "text", "url", "n_tokens"]
    dataset = finished_dataset(path, tuple(columns))
    keys = dataset.to_table(columns=["id", "source"])
    if config.sources:
        keys = keys.filter(functools.reduce(pc.or_, [pc.starts_with(keys["source"], p) for p in config.sources]))
    ids = keys.column("id").to_pylist()
    if not ids:
        raise ConfigError(f"{path} has no rows" + (f" with a source starting with {config.sources}"
                                                   if config.sources else ""))
    if None in ids or len(set(ids)) != len(ids):
        dup = next((i for i, n in Counter(ids).items() if n > 1 or i is None), None)
        raise ContractError(f"{path}: ids must be unique and non-null, but {dup!r} is not; deduplicate the "
                            "dataset (trait dedup) before annotating")
    # the sample_size smallest ranks, in rank order: O(n log k), no sort of a whole corpus' ids
    chosen = heapq.nsmallest(config.sample_size, ids, key=lambda i: _rank(config.seed, i))
    if len(chosen) < config.sample_size:
        log.warning("annotate: sample_size %d, but %s has %d documents; grading all", config.sample_size, path,
                    len(chosen))
    table = dataset.to_table(columns=columns, filter=pc.field("id").isin(chosen))
    by_id = {row["id"]: row for row in table.to_pylist()}
    return [by_id[i] for i in chosen], {"available": len(ids), "sampled": len(chosen)}


def cut(text: str, max_chars: int) -> str:
    """``text`` up to ``max_chars`` characters, ending at the last white space of the final fifth when there is one
    (a word cut in half reads as noise to the annotator)."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = max(head.rfind(" "), head.rfind("\n"))
    return head[:space] if space >= max_chars * 4 // 5 else head


def _schema(prompt, config: AnnotateConfig) -> dict | None:
    if prompt.schema is None or config.max_justification_chars is None:
        return prompt.schema
    prompt.schema["properties"]["justification"]["maxLength"] = config.max_justification_chars  # a private copy
    return prompt.schema


def _rows(batch: list[dict], config: AnnotateConfig, model: str, client_kwargs: dict) -> list[dict]:
    """Grade one batch of documents: one row each, labelled or with the reason it is not."""
    rows, asks, requests = [], [], []
    for doc in batch:
        shown = cut(doc["text"] or "", config.max_chars)
        sampling = request_sampling(config.sampling, doc["id"])
        row = {**doc, "text": doc["text"] or "", "label": None, "justification": None,
               "annotated_chars": len(shown), "template_version": None, "model": model,
               "sampling": json.dumps(sampling, sort_keys=True),
               "finish_reason": None, "reject_reason": None, "reject_detail": None, "raw_output": None}
        rows.append(row)
        if not shown.strip():
            row.update(reject_reason="empty_document", reject_detail="the document has no text")
            continue
        prompt = render_annotate_prompt(shown, domain=config.domain, output_format=config.output_format,
                                        template=config.template)
        row["template_version"] = prompt.template_version
        asks.append(row)
        requests.append(ChatRequest(prompt.messages, sampling, _schema(prompt, config)))
    replies = run_chat_many(client_kwargs, requests, return_exceptions=True) if requests else []
    for row, reply in zip(asks, replies):
        if too_long_for_context(reply):
            row.update(reject_reason="too_long_for_context", reject_detail=str(reply)[:500])
            continue
        if isinstance(reply, BaseException):
            raise reply  # the server is gone, failing, or refuses the settings: stop; committed batches stay
        score, reason = parse_annotation(reply.text, config.output_format)
        row.update(finish_reason=reply.finish_reason, raw_output=reply.text)
        if score is None:
            reason = "truncated" if reply.finish_reason == "length" else reason
            row.update(reject_reason=reason, reject_detail=f"reply: {reply.text[:200]!r}")
            continue
        row["label"] = score
        why = (json.loads(reply.text, strict=False).get("justification") if config.output_format == "json"
               else reply.text)
        row["justification"] = why if why is None or isinstance(why, str) else json.dumps(why)
    return rows


def annotate_fingerprint(config: AnnotateConfig, docs: list[dict]) -> str:
    """sha1 of the config's content settings and of the sampled documents (ids and texts, in order)."""
    digest = hashlib.sha1(run_fingerprint(config).encode())
    for doc in docs:
        digest.update(f"{doc['id']}\0{hashlib.sha1((doc['text'] or '').encode()).hexdigest()}\0".encode())
    return digest.hexdigest()


def run_annotate(config: AnnotateConfig, input_path: str, output: str) -> dict:
    """Grade a seeded sample of ``input_path`` into the dataset ``output``; returns the manifest. A rerun skips
    the committed batches (and starts no server when every batch is committed)."""
    started = time.time()
    check_output(output, inputs=[input_path])  # before reading the sample: a refusal costs nothing
    docs, drawn = sample_documents(input_path, config)
    store = ChunkStore(output, annotate_fingerprint(config, docs), ANNOTATION_SCHEMA, inputs=[input_path])
    batches = [docs[i:i + config.batch_docs] for i in range(0, len(docs), config.batch_docs)]
    todo = [b for b in range(len(batches)) if b not in store.committed()]
    log.info("annotate: %d documents in %d batches, %d to grade", len(docs), len(batches), len(todo))
    if todo:
        with VllmServer(config.server) as server:
            client_kwargs = {"base_url": server.base_url, "model": server.model, "api_key": server.api_key,
                             "max_concurrency": config.concurrency, "timeout_s": config.timeout_s,
                             "max_retries": config.max_retries}
            for n, b in enumerate(todo, start=1):
                t0 = time.time()
                store.commit(b, _rows(batches[b], config, server.model, client_kwargs))
                log.info("annotate: batch %d committed (%d of %d this run) in %.1f s", b, n, len(todo),
                         time.time() - t0)
    rows = store.rows()
    reasons = Counter(r for r in rows.column("reject_reason").to_pylist() if r is not None)
    labels = Counter(x for x in rows.column("label").to_pylist() if x is not None)
    manifest = {"job": "synth_annotate", "config": to_dict(config), "input": input_path, **drawn,
                "models": sorted(set(rows.column("model").to_pylist()) - {None}),
                "labels": {str(g): labels.get(g, 0) for g in range(MAX_GRADE + 1)},
                "parse_failure_rate": (sum(reasons[r] for r in PARSE_FAILURES) / rows.num_rows
                                       if rows.num_rows else 0.0),
                "wall_time_s": round(time.time() - started, 3)}
    return store.finish(manifest, keep_flagged=False, rows=rows)
