"""The nine math benchmarks of the TRAIT paper as lm-eval documents, read from the shared data files.

The hooks the task YAMLs in ``eval/tasks/math`` name (through ``utils.py`` beside them): ``load_benchmark``
(``custom_dataset``: nothing is downloaded), the few-shot exemplars, the two answer filters and
``process_results``. Questions are rendered as math-evaluation-harness renders them (ZubinGou/math-evaluation-
harness at db77bc6, prompt type ``cot``, the protocol of the published base-model numbers; its
``parse_question``): SVAMP and ASDiv join body and question, TabMWP reads "Read the following table regarding ...",
the multiple-choice sets add "What of the following is the right choice? Explain your answer." and "(A) ..., (B)
..." options, and a yes/no or true/false gold answer adds "(Yes or No)" / "(True or False)" to the question.

Few-shot exemplars come from the installed lm-eval, never from a test file: the 8 GSM8K chain-of-thought
exemplars (``gsm8k/gsm8k-cot.yaml``) for GSM8K, SVAMP, ASDiv, MAWPS and TabMWP (the harness uses the GSM8K prompt
for all five), the 4 Minerva exemplars (``minerva_math.utils.list_fewshot_samples``) for MATH, and the same 4
Minerva problems as multiple choice (the harness's ``mmlu_stem`` prompt: its options below, its letter as the final
answer) for MMLU-STEM, SAT-math and MathQA. The harness's own 4 MathQA exemplars exist only as its prose, and no
MathQA train split is in the shared data, so MathQA uses the multiple-choice Minerva exemplars (4 options, while
MathQA questions have 5).

Every document: ``question`` (MATH: ``problem`` and ``solution``), ``answer`` (the gold answer; MATH: lm-eval's
normalised final answer of the solution), ``kind`` (``eval.answers.ANSWER_KINDS``), ``target`` (what a log shows
as the target; an exemplar's worked solution).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import datasets
import yaml
from lm_eval.tasks.minerva_math.utils import (
    last_boxed_only_string,
    list_fewshot_samples,
    normalize_final_answer,
    remove_boxed,
)

from eval.answers import answers_equal, flexible_answer, parse_number, strict_answer
from trait.answer_match import math_equal
from trait.benchmarks import EVAL_FILES, BenchmarkError, shared_data_file

CHOOSE = "What of the following is the right choice? Explain your answer."
# The harness's multiple-choice versions of the 4 Minerva exemplars: options and the correct letter (facts of its
# prompts/cot/mmlu_stem.md); the worked solutions are lm-eval's.
MINERVA_CHOICES = ((("[-5,-2)", "[2,5)", "[-2,-5)", "[5,2)"), "B"),
                   (("14", "4", "2", "24"), "D"),
                   (("12", "20", "16", "15"), "C"),
                   ((r"$-\frac{2}{3}$", r"$\frac{2}{3}$", r"$\frac{1}{3}$", r"$\frac{4}{9}$"), "A"))
_MINERVA_FINAL = re.compile(r"Final Answer: The final answer is .*\. I hope it is correct\.$")


def _number_text(value: float | int | str) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)


def _options(letters_and_texts: list[tuple[str, str]]) -> str:
    return ", ".join(f"({letter}) {str(text).strip()}" for letter, text in letters_and_texts)


def _gsm8k(r: dict) -> dict:
    return {"question": r["question"], "answer": r["answer"].split("####")[-1].strip(), "kind": "number"}


def _math(r: dict) -> dict:
    boxed = last_boxed_only_string(r["solution"])
    if boxed is None:
        raise KeyError("\\boxed{} answer in 'solution'")
    answer = normalize_final_answer(remove_boxed(boxed))
    return {"question": r["problem"], "problem": r["problem"], "solution": r["solution"], "answer": answer,
            "kind": "math"}


def _svamp(r: dict) -> dict:
    body = r["Body"].strip()
    body = body if body.endswith(".") else body + "."
    return {"question": f"{body} {r['Question'].strip()}", "answer": _number_text(r["Answer"]), "kind": "number"}


def _asdiv(r: dict) -> dict:
    answer = re.sub(r"\(.*?\)", "", r["answer"]).strip()  # "9 (apples)" -> "9"
    return {"question": f"{r['body'].strip()} {r['question'].strip()}", "answer": answer,
            "kind": "number" if parse_number(answer) is not None else "text"}


def _mawps(r: dict) -> dict:
    return {"question": r["input"], "answer": _number_text(r["target"]), "kind": "number"}


def _tabmwp(r: dict) -> dict:
    title = f'regarding "{r["table_title"]}" ' if r["table_title"] else ""
    question = f"Read the following table {title}and answer a question:\n{r['table']}\n{r['question']}"
    if r["choices"]:
        question += f" Please select from the following options: {r['choices']}"
    numeric = r["ans_type"] in ("integer_number", "decimal_number")
    return {"question": question, "answer": r["answer"], "kind": "number" if numeric else "text"}


def _mathqa(r: dict) -> dict:
    options = r["options"].strip()
    if options.startswith("["):  # a few rows hold a Python list literal of "a ) ..." strings
        options = ", ".join(ast.literal_eval(options))
    parts = re.split(r"(?:^|\s*,\s*)([a-e]) \) (?:\1 \) )?", options)  # "a ) 12 , b ) 16" -> ['', 'a', '12', ...]
    problem = r["problem"].strip()
    options = _options([(letter.upper(), text) for letter, text in zip(parts[1::2], parts[2::2], strict=True)])
    return {"question": f"{problem[:1].upper()}{problem[1:]}\n{CHOOSE}\n{options}", "answer": r["correct"].upper(),
            "kind": "choice"}


def _mmlu_stem(r: dict) -> dict:
    options = _options(list(zip("ABCD", r["choices"], strict=True)))
    return {"question": f"{r['question'].strip()}\n{CHOOSE}\n{options}", "answer": "ABCD"[r["answer"]],
            "kind": "choice"}


def _sat_math(r: dict) -> dict:
    options = re.sub(r" ([B-D])\) ", r" (\1) ", "(" + r["options"].strip())  # "A) x B) y" -> "(A) x (B) y"
    return {"question": f"{r['question'].strip()}\n{CHOOSE}\n{options}", "answer": r["Answer"], "kind": "choice"}


def _sat_math_agieval(r: dict) -> dict:
    options = _options([(o[1], o[3:]) for o in r["options"]])  # "(A)2" -> ("A", "2")
    stem = f"{r['passage'].strip()}\n{r['question'].strip()}".strip()
    return {"question": f"{stem}\n{CHOOSE}\n{options}", "answer": r["label"], "kind": "choice"}


DOC_BUILDERS = {"gsm8k": _gsm8k, "math": _math, "math500": _math, "svamp": _svamp, "asdiv": _asdiv, "mawps": _mawps,
                "tabmwp": _tabmwp, "mathqa": _mathqa, "mmlu_stem": _mmlu_stem, "sat_math": _sat_math,
                "sat_math_agieval": _sat_math_agieval}


def benchmark_path(benchmark: str, shared_data: str | Path | None = None) -> Path:
    """The test file of ``benchmark`` (a name of ``trait.benchmarks.EVAL_FILES``) under the shared data dir."""
    if benchmark not in EVAL_FILES:
        raise BenchmarkError(f"unknown math benchmark {benchmark!r}; known: {', '.join(EVAL_FILES)}")
    return shared_data_file(EVAL_FILES[benchmark].path, shared_data)


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) pairs; a line that is not a JSON object is an error naming the file and line."""
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as fh:
            return [(f"{path} record {key}", record) for key, record in json.load(fh).items()]
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkError(f"{path}:{number}: not a JSON line ({err.msg}); the file is damaged") from err
            if not isinstance(record, dict):
                raise BenchmarkError(f"{path}:{number}: a JSON {type(record).__name__}, not an object")
            records.append((f"{path}:{number}", record))
    return records


def read_benchmark(benchmark: str, shared_data: str | Path | None = None) -> list[dict]:
    """The test documents of one benchmark, in file order (see the module docstring for their fields)."""
    path = benchmark_path(benchmark, shared_data)
    build = DOC_BUILDERS[benchmark]
    docs = []
    for where, record in _records(path):
        try:
            doc = build(record)
        except (KeyError, IndexError, TypeError, ValueError, SyntaxError) as err:
            raise BenchmarkError(f"{where}: cannot read a {benchmark} problem ({type(err).__name__}: {err}); "
                                 f"fields are {sorted(record)}") from err
        for yes_no in (("yes", "no"), ("true", "false")):  # the harness's hint for a yes/no or true/false answer
            if doc["answer"].lower() in yes_no:
                doc["question"] += f" ({yes_no[0].title()} or {yes_no[1].title()})"
        docs.append({**doc, "target": doc["answer"]})
    return docs


def load_benchmark(benchmark: str, shared_data: str | None = None, **_task_metadata) -> datasets.DatasetDict:
    """lm-eval's ``custom_dataset`` hook (called with the task's metadata and ``dataset_kwargs``)."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_benchmark(benchmark, shared_data))})


def gsm8k_exemplars() -> list[dict]:
    """lm-eval's 8 GSM8K chain-of-thought exemplars (Wei et al. 2022), as ``question`` / ``target``."""
    import lm_eval.tasks

    config = Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k-cot.yaml"
    samples = yaml.safe_load(config.read_text(encoding="utf-8"))["fewshot_config"]["samples"]
    return [{"question": s["question"], "target": s["target"]} for s in samples]


def minerva_exemplars() -> list[dict]:
    """lm-eval's 4 Minerva MATH exemplars (Lewkowycz et al. 2022), as ``problem`` / ``target``."""
    return [{"problem": s["problem"], "target": s["solution"]} for s in list_fewshot_samples()]


def choice_exemplars() -> list[dict]:
    """The 4 Minerva exemplars as multiple choice: options added, the final answer a letter."""
    exemplars = []
    for sample, (options, letter) in zip(list_fewshot_samples(), MINERVA_CHOICES, strict=True):
        boxed = remove_boxed(last_boxed_only_string(sample["solution"]))
        if options["ABCD".index(letter)].strip("$") != boxed:
            raise BenchmarkError(f"lm-eval's Minerva exemplar answer {boxed!r} is not option {letter} "
                                 f"{options}; update MINERVA_CHOICES for this lm-eval version")
        solution = _MINERVA_FINAL.sub(f"Final Answer: The final answer is ({letter}).", sample["solution"])
        exemplars.append({"question": f"{sample['problem']}\n{CHOOSE}\n{_options(list(zip('ABCD', options)))}",
                          "target": solution})
    return exemplars


def _extracted(extract, extraction: str, resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    return [[{"extraction": extraction, "answer": extract(doc["kind"], out), "output": out} for out in outputs]
            for outputs, doc in zip(resps, docs, strict=True)]


def strict_filter(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    """lm-eval ``custom`` filter: each output's strict answer (``eval.answers.strict_answer``)."""
    return _extracted(strict_answer, "strict", resps, docs)


def flexible_filter(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    """lm-eval ``custom`` filter: each output's flexible answer (``eval.answers.flexible_answer``)."""
    return _extracted(flexible_answer, "flexible", resps, docs)


def process_results(doc: dict, results: list[dict]) -> dict[str, int]:
    """0/1 per sample: ``exact_match`` of the filter's answer; for MATH under ``flexible-extract`` also
    ``math_verify``: math-verify on the whole output against the reference solution, as lm-eval's minerva_math."""
    result = results[0]
    scores = {"exact_match": int(answers_equal(doc["kind"], doc["answer"], result["answer"]))}
    if "solution" in doc and result["extraction"] == "flexible":
        scores["math_verify"] = int(math_equal(doc["solution"], result["output"], short=False))
    return scores
