"""``trait synth generate``: task-oriented passages from problem sets, end to end and resumable.

Load the problem sets' problems, group them into passages (problems from different tasks sharing an entity
or the same knowledge), and cut the groups into numbered batches whose composition depends only on the config
(so a rerun, or another Slurm array task, sees the same batches). For every batch not yet committed: render the
prompts, ask the generator (a local vLLM server this process starts, or a configured endpoint) with bounded
concurrency, validate each output, and commit the batch atomically (``synth.store``). At the end, passages are
deduplicated across the whole run (the smallest id of a cluster kept) and the contract dataset is written with
per-reason counts, coverage, the valid fraction and the parse-failure rate in its manifest. A ``--chunk i
--num-chunks n`` run handles the groups with ``index % n == i`` and writes its own dataset ``<output>/chunk-<i>``.

Every run ends with a line of valid/total passages and the top reject reasons (a WARNING when any was rejected).
A run whose output holds no passage at all (every one rejected under ``on_failure: drop``) still commits the dataset
with its quarantine, for reading the reasons, and then fails with ``NoPassagesError`` (exit 2 from the CLI), so a
pipeline stops here rather than at a training stage minutes later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from synth.grouping import GroupingConfig, ProblemGroup, group_problems
from synth.passage import PARSE_REASONS
from synth.problem_sets import load_problem_sets, load_problems, problem_set_files
from synth.prompts import DEFAULT_PASSAGE_TEMPLATE, PromptProblem, render_passage_prompt
from synth.store import ROW_SCHEMA, ChunkStore, passage_id
from synth.validate import PassageValidator, ValidationConfig, Verdict
from trait import UserError
from trait.config import ConfigError, field, to_dict
from trait.contract import QUARANTINE_DIR
from trait.outputs import check_folder
from trait.progress import ProgressLog
from trait.serving.client import ChatRequest, request_sampling, run_chat_many, too_long_for_context
from trait.serving.server import ServerConfig, VllmServer

log = logging.getLogger(__name__)

SOURCE = "synth/passage"


@dataclass
class SynthConfig:
    problem_sets: list[str] = field(help="problem sets the passages are written about (synth/problem_sets/*.yaml: "
                                         "downstream tasks' training problems), at least two")
    shared_data: str | None = field(None, help="shared data dir (default $TRAIT_SHARED_DATA, else ../shared/data)")
    max_problems_per_task: int | None = field(None, help="use only each task's first N problems (smoke runs)")
    domain: str = field("mathematics", help="the field named in the prompt's teacher persona")
    template: str = field(DEFAULT_PASSAGE_TEMPLATE, help="prompt template (synth/prompts/<name>.txt)")
    output_format: str = field("json", help="json: vLLM structured outputs with the template's schema; text: a "
                               "checked plain-text layout for endpoints without structured outputs")
    max_paragraph_chars: int | None = field(1200, help="structured outputs: longest problem or enlightenment "
                                            "paragraph the schema allows (keeps a weak model from running to "
                                            "max_tokens); null: unbounded")
    max_answer_chars: int | None = field(64, help="structured outputs: longest final answer the schema allows")
    sampling: dict = field(default_factory=lambda: {"temperature": 0.7, "top_p": 0.95, "max_tokens": 768, "seed": 0},
                           help="OpenAI sampling fields sent with every request (part of each passage id); a seed "
                                "is the run's: each passage samples from a hash of it and its own id")
    grouping: GroupingConfig = field(default_factory=GroupingConfig, help="how problems are combined")
    validation: ValidationConfig = field(default_factory=ValidationConfig, help="what a passage must satisfy")
    server: ServerConfig = field(default_factory=ServerConfig, help="the generator: endpoint or local vLLM")
    concurrency: int = field(8, help="requests in flight at once")
    timeout_s: float = field(300.0, help="per-request timeout in seconds")
    max_retries: int = field(4, help="retries of a transient failure (connection, timeout, 429, 5xx)")
    batch_groups: int = field(16, help="passages per committed batch (the unit a rerun skips or redoes)")
    limit: int | None = field(None, help="generate at most this many passages (smoke runs); knowledge-centric "
                              "problems are then embedded only as far as these passages need (seeded samples)")

    def validate(self) -> None:
        if len(self.problem_sets) < 2:
            raise ConfigError("a passage combines problems from different tasks: give at least two problem_sets")
        if self.batch_groups < 1 or self.concurrency < 1:
            raise ConfigError("batch_groups and concurrency must be >= 1")
        for key in ("max_problems_per_task", "limit", "max_paragraph_chars", "max_answer_chars"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, or null for no limit; got {getattr(self, key)}")
        if not 0 < self.timeout_s < math.inf or self.max_retries < 0:
            raise ConfigError(f"timeout_s must be a positive number of seconds and max_retries >= 0, got "
                              f"{self.timeout_s} and {self.max_retries}")


def plan_groups(config: SynthConfig, embed=None) -> tuple[list[ProblemGroup], dict, dict, dict]:
    """(groups, problems by id, the problem sets by name, report with loading and coverage counts)."""
    definitions = {d.name: d for d in load_problem_sets(config.problem_sets)}
    problems, loading = [], {}
    for name, definition in definitions.items():
        loaded, report = load_problems(definition, config.shared_data)
        loaded = loaded[:config.max_problems_per_task] if config.max_problems_per_task else loaded
        problems += loaded
        loading[name] = {"version": definition.version, "problems": len(loaded),
                         "malformed": dict(report.malformed)}
    # The limit bounds the embedding too (seeded per-task samples), not just the groups kept: the same groups
    # whatever the chunking, since they depend on the config alone.
    groups, coverage = group_problems(problems, {n: d.kind for n, d in definitions.items()}, config.grouping, embed,
                                      config.limit)
    return groups, {p.id: p for p in problems}, definitions, {"problem_sets": loading, "coverage": coverage}


def _rows(batch: list[ProblemGroup], by_id: dict, definitions: dict, config: SynthConfig, model: str,
          client_kwargs: dict, validator: PassageValidator, stats: dict | None = None) -> list[dict]:
    """Generate, validate and describe one batch of groups: one row per group (accepted or with its reason).
    ``stats``: request and token counts, added to."""
    prompts, members = [], []
    for group in batch:
        problems = [by_id[i] for i in group.problem_ids]
        members.append(problems)
        prompts.append(render_passage_prompt(
            [PromptProblem(p.task, p.text, definitions[p.task].instruction) for p in problems], group.kind,
            domain=config.domain, entity=group.entity, output_format=config.output_format, template=config.template,
            max_paragraph_chars=config.max_paragraph_chars, max_answer_chars=config.max_answer_chars))
    ids = [passage_id(list(g.problem_ids), p.template_version, model, config.sampling)
           for g, p in zip(batch, prompts)]
    # Each passage samples from its own seed (a hash of the run's seed and the passage id), the same on every rerun.
    samplings = [request_sampling(config.sampling, pid) for pid in ids]
    completions = run_chat_many(client_kwargs, [ChatRequest(p.messages, s, p.schema)
                                                for p, s in zip(prompts, samplings)], return_exceptions=True)
    refused = [too_long_for_context(c) for c in completions]
    for c, r in zip(completions, refused):
        if isinstance(c, BaseException) and not r:
            raise c  # the server is gone, failing, or refuses the settings: stop; committed batches stay
    if any(refused):
        log.warning("synth: the generator refused %d of %d prompts as longer than its context (quarantined as "
                    "too_long_for_context), e.g. %s", sum(refused), len(completions),
                    completions[refused.index(True)])
    if stats is not None:  # the server's own token counts (usage) of the answered requests
        answered = [c for c, r in zip(completions, refused) if not r]
        stats["requests"] += len(completions)
        stats["refused_too_long"] += sum(refused)
        stats["prompt_tokens"] += sum(c.prompt_tokens for c in answered)
        stats["completion_tokens"] += sum(c.completion_tokens for c in answered)
    # Near-duplicates are removed over the whole run at the end, not per batch.
    verdicts = [Verdict("too_long_for_context", str(c)[:500]) if r
                else validator.check(c.text, m, config.output_format, c.finish_reason)
                for c, r, m in zip(completions, refused, members)]
    if config.validation.decontaminate:
        validator.decontaminate(verdicts)
    return [{"id": pid, "source": f"{SOURCE}_{p.template_version}", "text": v.text or "", "url": None,
             "n_tokens": len((v.text or "").split()), "problem_ids": list(g.problem_ids), "tasks": list(g.tasks),
             "template_version": p.template_version, "model": model, "sampling": json.dumps(s, sort_keys=True),
             "finish_reason": None if r else c.finish_reason,
             "reject_reason": v.reason, "reject_detail": v.detail,
             "enlightenment": v.passage.enlightenment if v.passage else None, "raw_output": "" if r else c.text}
            for pid, g, p, s, c, r, v in zip(ids, batch, prompts, samplings, completions, refused, verdicts)]


def _dedup_run(store: ChunkStore, validator: PassageValidator) -> pa.Table:
    """Every committed row, with near-duplicates among the accepted rejected (smallest id kept) across batches."""
    rows = store.rows()
    accepted = [i for i, r in enumerate(rows.column("reject_reason").to_pylist()) if r is None]
    if not validator.config.deduplicate or len(accepted) < 2:
        return rows
    from trait.minhash import find_duplicates

    ids, texts = rows.column("id").to_pylist(), rows.column("text").to_pylist()
    dropped = find_duplicates([ids[i] for i in accepted], [texts[i] for i in accepted], validator.config.dedup)
    reasons, details = rows.column("reject_reason").to_pylist(), rows.column("reject_detail").to_pylist()
    for i in accepted:
        if ids[i] in dropped:
            reasons[i], kept = dropped[ids[i]]
            details[i] = f"duplicates {kept}"
    rows = rows.set_column(rows.schema.get_field_index("reject_reason"), "reject_reason", pa.array(reasons))
    return rows.set_column(rows.schema.get_field_index("reject_detail"), "reject_detail", pa.array(details))


# Knobs that change how fast a run goes, not what it writes: they may differ between a run and its resumption.
_EXECUTION_ONLY = ("concurrency", "timeout_s", "max_retries")


def run_fingerprint(config: SynthConfig) -> str:
    """sha1 of everything in the config that fixes the batches and their content."""
    settings = {k: v for k, v in to_dict(config).items() if k not in _EXECUTION_ONLY}
    settings["server"] = {k: v for k, v in settings["server"].items()
                          if k in ("model", "dtype", "max_model_len", "tiny_model", "compact_json")
                          or (k == "chat_template" and v)}  # the prompt's text (left out when unset: old runs)
    settings["columns"] = ROW_SCHEMA.names  # batches committed with other columns are refused, not mixed in
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def run_generate(config: SynthConfig, output: str, chunk: int = 0, num_chunks: int = 1, embed=None) -> dict:
    """Generate the passages of chunk ``chunk`` of ``num_chunks`` into ``output`` (``output/chunk-<i>`` when
    chunked); returns the manifest. A rerun skips committed batches; a finished output is returned as it is."""
    if not 0 <= chunk < num_chunks:
        raise ConfigError(f"chunk must be in [0, {num_chunks}), got {chunk}")
    started = time.time()
    target = f"{output.rstrip('/')}/chunk-{chunk:05d}" if num_chunks > 1 else output
    if num_chunks > 1:  # the output holds the chunks' datasets (and their batches and staging), nothing else
        check_folder(output, ("chunk-*",), dataset=False)
    inputs = problem_set_files(load_problem_sets(config.problem_sets), config.shared_data)
    store = ChunkStore(target, run_fingerprint(config), inputs=inputs)
    groups, by_id, definitions, report = plan_groups(config, embed)
    groups = groups[chunk::num_chunks]
    batches = [groups[i:i + config.batch_groups] for i in range(0, len(groups), config.batch_groups)]
    todo = [b for b in range(len(batches)) if b not in store.committed()]
    log.info("synth: %d passages in %d batches, %d to generate", len(groups), len(batches), len(todo))
    validator = PassageValidator(config.validation)
    # This invocation's requests and the server's token counts (usage); a resumed run counts only its own.
    generation = {"requests": 0, "refused_too_long": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
    if todo:  # a rerun after every batch committed needs no generator
        with VllmServer(config.server) as server:
            client_kwargs = {"base_url": server.base_url, "model": server.model, "api_key": server.api_key,
                             "max_concurrency": config.concurrency, "timeout_s": config.timeout_s,
                             "max_retries": config.max_retries}
            generating = time.time()
            progress = ProgressLog(log, "synth: generated", sum(len(batches[b]) for b in todo), "passages", 0)
            valid = 0
            for b in todo:
                rows = _rows(batches[b], by_id, definitions, config, server.model, client_kwargs, validator,
                             generation)
                store.commit(b, rows)
                valid += sum(r["reject_reason"] is None for r in rows)
                progress.update(len(rows), f"; batch {b} committed, {valid} valid so far (before run-wide dedup)")
            generation["seconds"] = round(time.time() - generating, 3)
    rows = _dedup_run(store, validator)
    model = sorted(set(rows.column("model").to_pylist()) - {None})
    reasons = [r for r in rows.column("reject_reason").to_pylist() if r is not None]
    embedded = config.server.model is None and config.server.endpoint is None
    manifest = {"job": "synth_generate", "config": to_dict(config), "models": model, "chunk": chunk,
                # said plainly: the default generator is a random-weight model and its passages are noise
                "generator": "embedded tiny random-weight model" if embedded else "configured",
                "num_chunks": num_chunks, **report, "wall_time_s": round(time.time() - started, 3),
                "generation": generation, "valid": rows.num_rows - len(reasons),
                "valid_fraction": (rows.num_rows - len(reasons)) / rows.num_rows if rows.num_rows else None,
                "parse_failure_rate": (sum(r in PARSE_REASONS for r in reasons) / rows.num_rows
                                       if rows.num_rows else 0.0)}
    manifest = store.finish(manifest, keep_flagged=config.validation.on_failure == "flag", rows=rows)
    report_validity(manifest, target)
    return manifest


class NoPassagesError(UserError):
    """A generation run's output holds no passage to train on (every one rejected and dropped, or none planned)."""


def report_validity(manifest: dict, output: str) -> None:
    """Say at the end of every run how many passages are valid and why the others are not: a WARNING when any was
    rejected. Raise NoPassagesError when the output holds no row at all: the dataset and its quarantine are
    committed first (``_SUCCESS`` included: a complete, truthful record), so the reasons can be read there."""
    counts = manifest["counts"]
    total, valid = counts["rows_in"], manifest["valid"]
    reasons = ", ".join(f"{n} {r}" for r, n in Counter(counts["rejected_by_reason"]).most_common(3))
    more = len(counts["rejected_by_reason"]) - 3
    reasons += f" and {more} other reason(s)" if more > 0 else ""
    if total and valid == total:
        log.info("synth: all %d passages valid", total)
    elif total:
        flagged = (f"; {counts['rows_flagged']} rejected ones are kept, flagged with their reject_reason "
                   "(on_failure: flag; the trainer skips them unless a source sets include_rejected: true)"
                   if counts["rows_flagged"] else "")
        dropped = (f"; the {counts['rows_quarantined']} dropped are in {output}/{QUARANTINE_DIR} with their reasons"
                   if counts["rows_quarantined"] else "")
        log.warning("synth: %d of %d passages valid (%.0f%%); rejected: %s%s%s", valid, total, 100 * valid / total,
                    reasons, flagged, dropped)
    if counts["rows_out"]:
        return
    if total:
        raise NoPassagesError(
            f"synth: none of the {total} passages can be trained on (rejected: {reasons}); the output {output} holds "
            f"only its quarantine ({QUARANTINE_DIR}, with each reason); use a stronger generator (server.model or "
            "--endpoint), loosen validation, or set validation.on_failure: flag to keep rejected passages that have "
            "text")
    if manifest["num_chunks"] == 1:
        raise NoPassagesError(f"synth: no passages were planned for {output}: grouping found no groups of problems "
                              f"(coverage: {manifest['coverage']['ungrouped']}); add problem sets or problems, or "
                              "lower grouping.min_similarity")
