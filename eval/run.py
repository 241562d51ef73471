"""``trait eval``: lm-evaluation-harness on our tasks (``eval/tasks``), a 95% interval on every score, and the files.

``run_eval(model, tasks, backend=..., limit=..., output=...)`` resolves the task names, opens the backend
(eval/backends.py), runs ``lm_eval.simple_evaluate`` once over all tasks, and returns (and writes to
``output/results.json``)::

    {"model": ..., "backend": ..., "limit": ..., "tasks": {task: {key: {"value", "ci", "ci_method", "n",
     "metric", "filter", "higher_is_better"}}}, "versions": {...}, "config": {...}, "judge": {...}}

``key`` is the metric name under lm-eval's default filter (``none``), else ``metric,filter`` (lm-eval's own form,
e.g. ``exact_match,strict-match``). Intervals come from the per-sample values (eval/metrics.py). A task whose
metadata asks for a judge (``judge: pairwise_title``) also gets ``win_rate`` when a judge is configured, and
otherwise a ``win_rate`` entry with ``value: null`` and the reason, never a silent gap. Beside results.json:
``results.md`` (one row per score) and ``samples/<task>.jsonl`` (doc, prompt, output, extracted answer, verdict).
``output`` must be new, empty or an earlier eval's folder, and apart from the model's directory
(``trait.outputs``); ``evaluate`` is the same run without that check, for ``trait curves``, which keeps each
export's results inside the export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import lm_eval
from lm_eval.tasks import TaskManager

from eval.backends import open_backend
from eval.metrics import score_ci, stratified_bootstrap_ci
from eval.results import write_outputs
from trait import UserError
from trait.config import ConfigError, field, from_dict, to_dict
from trait.outputs import check_output

log = logging.getLogger(__name__)
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
ALIASES = {"math": "trait_math_all", "ads": "trait_ads_all"}
RESULT_FILES = ("results.json", "results.md", "samples")  # what eval.results.write_outputs writes into ``output``


@dataclasses.dataclass
class EvalOptions:
    """What else varies per evaluation run (the CLI's flags beyond --model, --tasks, --backend, --limit)."""

    endpoint: str | None = field(None, help="OpenAI-compatible base URL for --backend openai")
    api_key_env: str | None = field(None, help="environment variable holding the endpoint's API key (never logged)")
    batch_size: int = field(1, help="requests per forward pass (hf) or per HTTP request (vllm, openai)")
    device: str | None = field(None, help="hf: cpu or cuda (default: cuda when available)")
    num_fewshot: int | None = field(None, help="override every task's few-shot count (a task fixed at 0 stays 0)")
    judge: str | None = field(None, help="judge for win rates: an OpenAI-compatible URL, or 'local' (a vLLM server "
                                         "started for the run); empty: win rates are reported as not computed")
    judge_api_key_env: str | None = field(None, help="environment variable holding the judge endpoint's key")
    judge_model: str | None = field(None, help="model the local judge serves (default: the embedded tiny model)")
    reference_samples: str | None = field(None, help="another run's samples/trait_product_title.jsonl to judge "
                                                     "against (default: the dataset's reference titles)")
    max_gen_toks: int | None = field(None, help="cap every generation task's new tokens (smoke runs; the scores "
                                                "then differ from the protocol's)")
    num_concurrent: int = field(4, help="concurrent HTTP requests (vllm, openai)")
    chat: bool = field(False, help="prompts as chat messages with the model's chat template (vllm, openai: the "
                                   "chat completions API, generation tasks only; hf: the tokenizer's template)")
    seed: int = field(0, help="seed of lm-eval (python, numpy, torch, few-shot sampling), the server and bootstraps")

    def validate(self) -> None:
        if self.batch_size < 1 or self.num_concurrent < 1:
            raise ConfigError(f"batch_size and num_concurrent must be >= 1, got {self.batch_size} and "
                              f"{self.num_concurrent}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.max_gen_toks is not None and self.max_gen_toks < 1:
            raise ConfigError(f"max_gen_toks must be >= 1, or empty for each task's own; got {self.max_gen_toks}")


def resolve_tasks(names: list[str], manager) -> list[str]:
    """``math`` / ``ads`` -> our groups; ``gsm8k`` -> ``trait_gsm8k`` when that exists; else the name as given,
    if it is one of ours. Unknown names fail with the list of what exists."""
    ours = sorted(n for n in manager.all_tasks if n.startswith("trait_"))
    resolved = []
    for name in names:
        for candidate in (ALIASES.get(name), f"trait_{name}", name):
            if candidate in ours:
                resolved.append(candidate)
                break
        else:
            raise UserError(f"unknown task {name!r}; known: math, ads, {', '.join(ours)} (a bare name like gsm8k "
                            "means trait_gsm8k)")
    return list(dict.fromkeys(resolved))


def run_eval(model: str, tasks: list[str], *, backend: str = "hf", limit: int | None = None,
             output: str | None = None, **options) -> dict:
    """Evaluate ``model`` on ``tasks``; see the module docstring for the returned dict. Writes files if ``output``,
    which must be new, empty or hold only an earlier eval's files, and may not overlap a local model directory."""
    if output:
        check_output(output, inputs=[model] if Path(model).exists() else [], own=RESULT_FILES, dataset=False)
    return evaluate(model, tasks, backend=backend, limit=limit, output=output, **options)


def evaluate(model: str, tasks: list[str], *, backend: str = "hf", limit: int | None = None,
             output: str | None = None, **options) -> dict:
    """``run_eval`` without the check of ``output``, which may be anywhere (a curves cache inside the model)."""
    opts = from_dict(EvalOptions, options, "eval options")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of items per task, got {limit}")
    # Only our task files: indexing lm-eval's thousands of built-in YAMLs costs 15-20 s a call and none is used.
    manager = _KeepingTaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    names = resolve_tasks(tasks, manager)
    if opts.chat and backend != "hf":
        scored = _loglikelihood_tasks(names, manager)
        if scored:
            raise UserError(f"--chat: {', '.join(scored)} score(s) log-likelihoods, which the chat completions API "
                            "does not return; run them without --chat (the completions API)")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        lm, backend_info = open_backend(stack, backend, model, device=opts.device, batch_size=opts.batch_size,
                                        endpoint=opts.endpoint, api_key_env=opts.api_key_env,
                                        num_concurrent=opts.num_concurrent, seed=opts.seed, chat=opts.chat)
        raw = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, num_fewshot=opts.num_fewshot,
                                      task_manager=manager, log_samples=True, bootstrap_iters=0,
                                      apply_chat_template=opts.chat,
                                      gen_kwargs={"max_gen_toks": opts.max_gen_toks} if opts.max_gen_toks else None,
                                      random_seed=opts.seed, numpy_random_seed=opts.seed,
                                      torch_random_seed=opts.seed, fewshot_random_seed=opts.seed)
    scores = {task: _task_scores(task, raw, manager.loaded["tasks"][task], opts.seed) for task in raw["samples"]}
    scores.update(_group_scores(raw, manager.loaded["tasks"], opts.seed))
    result = {"model": model, "backend": backend, "limit": limit, "tasks": scores,
              "requested_tasks": tasks, "resolved_tasks": names,
              "versions": {"lm_eval": _version("lm_eval"), "trait": _version("trait"), "tasks": raw["versions"]},
              "config": {**to_dict(opts), **backend_info, "n_shot": raw["n-shot"], "n_samples": raw["n-samples"]},
              "seconds": None}
    samples = {task: [_sample_row(s) for s in rows] for task, rows in raw["samples"].items()}
    judged = _judge(raw, samples, opts, scores)
    result["seconds"] = round(time.monotonic() - started, 1)
    if output:
        write_outputs(Path(output), result, samples, judged)
    return result


def _loglikelihood_tasks(names: list[str], manager: TaskManager) -> list[str]:
    """The tasks among ``names`` (groups expanded) that are not generation tasks, from the task index's configs."""
    found, todo = [], list(names)
    while todo:
        entry = manager.task_index[todo.pop(0)]
        cfg = entry.cfg or {}
        if entry.kind.name == "GROUP":
            todo.extend(t if isinstance(t, str) else t["task"] for t in cfg.get("task", []))
        elif cfg.get("output_type", "generate_until") != "generate_until":
            found.append(entry.name)
    return found


class _KeepingTaskManager(TaskManager):
    """lm-eval's TaskManager, keeping what ``load`` returned: the Task objects carry each metric's aggregation,
    which the intervals recompute on resamples."""

    loaded: dict = {}

    def load(self, task_list):
        self.loaded = super().load(task_list)
        return self.loaded


def _task_scores(task: str, raw: dict, task_obj, seed: int) -> dict:
    aggregations, higher = task_obj.aggregation(), task_obj.higher_is_better()
    out = {}
    for key, value in raw["results"][task].items():
        if "," not in key or "_stderr" in key:
            continue
        metric, filt = key.split(",", 1)
        values = [s[metric] for s in raw["samples"][task] if s["filter"] == filt]
        entry = {"value": None if value != value else float(value), "n": len(values), "metric": metric,
                 "filter": filt, "higher_is_better": higher.get(metric),
                 **score_ci(values, aggregations[metric], seed=seed)}
        out[metric if filt == "none" else key] = entry
    return out


def _group_scores(raw: dict, tasks: dict, seed: int) -> dict:
    """Group scores lm-eval computed (e.g. trait_math_all's unweighted mean of its tasks' exact_match), each with a
    stratified bootstrap interval: every resample redraws each task's items and recomputes the task means."""
    out = {}
    for group, subtasks in raw.get("group_subtasks", {}).items():
        entries = {}
        for key, value in raw["results"].get(group, {}).items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            strata = [([s[metric] for s in raw["samples"][t] if s["filter"] == filt], tasks[t].aggregation()[metric])
                      for t in subtasks if t in raw["samples"]]
            lo, hi = stratified_bootstrap_ci(strata, seed=seed)
            entries[metric if filt == "none" else key] = {
                "value": float(value), "ci": [lo, hi], "ci_method": "stratified_bootstrap",
                "n": sum(len(v) for v, _ in strata), "metric": metric, "filter": filt, "higher_is_better": True,
                "subtasks": list(subtasks)}
        if entries:
            out[group] = entries
    return out


def _sample_row(sample: dict) -> dict:
    """One per-sample log line: what was asked, what came back, what was extracted, and how it scored."""
    # A chat request's prompt comes logged as a one-item list holding its messages as JSON: keep the JSON string.
    prompts = [args[0][0] if isinstance(args[0], (list, tuple)) else args[0] for args in sample["arguments"]]
    outputs = [resp[0] for resp in sample["resps"]]
    generated = isinstance(outputs[0], str)  # else (log-likelihood, is_greedy) per choice
    return {"doc_id": sample["doc_id"], "filter": sample["filter"], "doc": sample["doc"], "target": sample["target"],
            "prompt": prompts[0],
            "choices": None if generated else [args[1] for args in sample["arguments"]],
            "output": outputs[0] if generated else [float(o[0]) for o in outputs],
            "extracted": _strip(sample["filtered_resps"][0]) if generated else
            max(range(len(outputs)), key=lambda i: outputs[i][0]),
            "verdict": {m: sample[m] for m in sample["metrics"]}}


def _strip(answer):
    """The extracted answer: a string filter's text, or the ``answer`` of a math filter's dict (eval.math_tasks)."""
    if isinstance(answer, dict):
        answer = answer.get("answer")
    return answer.strip() if isinstance(answer, str) else answer


def _judge(raw: dict, samples: dict, opts: EvalOptions, scores: dict) -> dict:
    """Win rates for the tasks whose metadata asks for a judge; returns {task: judge result with details}."""
    from eval.judge import judge_titles, reference_titles
    from trait.serving.server import ServerConfig, VllmServer

    wanted = [t for t in samples if (raw["configs"][t].get("metadata") or {}).get("judge") == "pairwise_title"]
    judged = {}
    for task in wanted:
        if not opts.judge:
            scores[task]["win_rate"] = _not_computed("no judge configured: pass --judge-endpoint URL or --judge local")
            continue
        rows = [{"doc": r["doc"], "output": r["extracted"]} for r in samples[task] if r["filter"] == "none"]
        config = ServerConfig(model=opts.judge_model) if opts.judge == "local" else \
            ServerConfig(endpoint=opts.judge, api_key_env=opts.judge_api_key_env, model=opts.judge_model)
        try:
            with VllmServer(config) as server:
                judged[task] = judge_titles(server, rows, reference_titles(opts.reference_samples, rows),
                                            seed=opts.seed, max_concurrency=opts.num_concurrent)
        except UserError as exc:  # the scores already computed are kept; the win rate says why it is missing
            log.error("judge: %s", exc)
            scores[task]["win_rate"] = _not_computed(f"the judge failed: {exc}")
            continue
        entry = {k: v for k, v in judged[task].items() if k != "details"}
        scores[task]["win_rate"] = {**entry, "metric": "win_rate", "filter": "none", "higher_is_better": True,
                                    "computed": True, "reference": opts.reference_samples or "dataset titles"}
    return judged


def _not_computed(reason: str) -> dict:
    return {"value": None, "ci": [None, None], "n": 0, "metric": "win_rate", "filter": "none", "computed": False,
            "reason": reason}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
