"""Cut the domain classifier's validation sets (and a training pool disjoint from them) out of ../shared/data.

    python infra/configs/validation/build_sets.py [--data ../shared/data] [--out runs/validation/raw]
    trait ingest --config infra/configs/validation/ingest_math.yaml --output runs/validation/math
    trait ingest --config infra/configs/validation/ingest_general.yaml --output runs/validation/general

Unseen math (positives), one source each so ``--positive runs/validation/math:SOURCE`` picks one style:
- ``math/openstax`` (contemporary_mathematics only): a school textbook left out of the experiment seed (the demo's
  seed holds it: against the demo classifier the set is refused as training data);
- ``wiki/enwiki-2015`` (the articles of WIKI_MATH_TITLES): encyclopedia math whose markup the 2015 plain text lost;
- ``bench/gsm8k-train``, ``bench/math-train``: benchmark TRAIN problems with their answers, Q&A math in plain words
  and in LaTeX (test splits are never used).

Unseen general documents (negatives): ``wiki/enwiki-2015`` articles from the file's last 2,000 lines (math titles
out), ``web/pile/...`` documents of the Pile sample (its DM Mathematics and ArXiv parts out) and the C4 samples
(``web/cc/c4``). The Wikipedia sources keep the demo pool's source name and
ids, so ``trait classifier evaluate`` sees which of them a demo classifier trained on.

``experiment_pool.jsonl`` (written beside them) is the rest of the Wikipedia file less every math title: negatives
for classifiers trained to be judged on these sets; ``experiment_tasks.jsonl`` the benchmark train problems
outside the validation samples (task-aware positives); ``experiment_web.jsonl`` the Pile documents outside the
web validation sample (non-Wikipedia negatives: code, markup, forums, law, medicine); ``experiment_wiki_math.jsonl``
encyclopedia math articles outside the validation titles (plain-text math positives, by TRAIN_WIKI_MATH).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from pathlib import Path

# Mathematics articles of enwiki_2015_part1 (checked present), written down by hand: none is a list or a stub.
WIKI_MATH_TITLES = [
    "Derivative", "Integral", "Prime number", "Group (mathematics)", "Polynomial", "Probability", "Calculus",
    "Euclidean geometry", "Linear algebra", "Number theory", "Set theory", "Complex number", "Logarithm",
    "Statistics", "Standard deviation", "Normal distribution", "Continuous function", "Metric space",
    "Field (mathematics)", "Graph theory", "Combinatorics", "Topology", "Fibonacci number", "Binomial coefficient",
    "Exponential function", "Mean", "Median", "Random variable", "Algebraically closed field", "Algebraic number",
    "Algebraic geometry", "Abelian group", "Binomial distribution", "Banach space", "Brouwer fixed-point theorem",
    "Binomial theorem", "Bessel function", "Bernoulli number", "Cumulative distribution function", "Compact space",
    "Cardinal number", "Connected space", "Cauchy distribution", "Chinese remainder theorem", "Complete metric space",
    "Dual space", "Differential geometry", "Diophantine equation", "Euclidean space", "Elementary algebra",
    "Elliptic integral", "Fundamental group", "Fundamental theorem of arithmetic", "Gamma function",
    "Group homomorphism", "Geometric series", "Galois group", "Group action", "Geometric mean", "Hausdorff space",
    "Holomorphic function", "Imaginary number", "Inner product space", "Intermediate value theorem",
    "Inverse function", "Series (mathematics)", "Integral domain", "Linear equation", "Lie algebra", "Lie group",
    "Basis (linear algebra)", "Mean value theorem", "Measure (mathematics)", "Natural number", "Normed vector space",
    "Normal subgroup", "Sample space", "Probability theory", "Probability distribution", "Perfect number",
    "Prime number theorem", "Quadratic equation", "Riemann zeta function", "Riemann integral",
    "Rational root theorem", "Rank (linear algebra)", "Set (mathematics)", "Statistical inference",
    "Surjective function", "Subgroup", "Symmetric group", "Stokes' theorem", "Sigma-algebra",
]
# Titles left out of every general set and of the experiment pool (math, whether or not in the list above).
MATHLIKE = re.compile(r"theorem|lemma|conjecture|\(mathematics\)|algebra|topolog|manifold|polynomial|integral|"
                      r"equation|matri|statistic|probabilit|geometr|calculus|function\b|group\b|space\b|number\b|"
                      r"series\b|distribution\b|subgroup|\(statistics\)|mean\b", re.I)
# Encyclopedia math for training (plain text like wiki-math, other articles): strict title patterns outside the
# validation titles and the general tail, less the non-math titles they catch (written down after reading them).
TRAIN_WIKI_MATH = re.compile(r"theorem|lemma|conjecture|\((mathematics|linear algebra|statistics|topology|group "
                             r"theory|number theory|geometry|calculus)\)|algebra\b|topolog|manifold|polynomial|"
                             r"integral\b|matrix|matrices|statistic|probabilit|geometry|calculus|subgroup|eigen|"
                             r"isomorphism|homomorphism|differential equation|prime\b", re.I)
NOT_MATH = re.compile(r"Prime [Mm]inister|Prime time|E-Prime|Diagnostic and Statistical|International Statistical|"
                      r"Labor theory|Oxfordian|Knights of the Lambda|Rendering|Baseball statistics|Demographic|"
                      r"dilemma", re.I)
GENERAL_WIKI_TAIL, N_GENERAL_WIKI, N_WEB, N_BENCH = 2000, 1000, 300, 500
PILE_MATH = {"DM Mathematics", "ArXiv"}  # Pile components that are math: not general documents


def _bucket(key: str) -> float:
    return int.from_bytes(hashlib.sha1(f"validation:{key}".encode()).digest()[:8], "big") / 2.0**64


def _jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        yield from (json.loads(line) for line in fh if line.strip())


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{path}: {len(rows)} documents")


def _sample(rows: list[dict], n: int, key: str) -> list[dict]:
    return sorted(rows, key=lambda r: _bucket(str(r[key])))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/validation/raw")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wiki = list(_jsonl(data / "corpora/general/enwiki_2015_part1.jsonl.gz"))
    titles = set(WIKI_MATH_TITLES)
    missing = titles - {r["title"] for r in wiki}
    if missing:
        raise SystemExit(f"not in the Wikipedia file: {sorted(missing)}")
    _write(out / "wiki_math.jsonl", [r for r in wiki if r["title"] in titles])
    general = [r for r in wiki[-GENERAL_WIKI_TAIL:] if r["title"] not in titles and not MATHLIKE.search(r["title"])]
    _write(out / "wiki_general.jsonl", _sample(general, N_GENERAL_WIKI, "id"))
    _write(out / "experiment_pool.jsonl", [r for r in wiki[:-GENERAL_WIKI_TAIL]
                                           if r["title"] not in titles and not MATHLIKE.search(r["title"])])
    _write(out / "experiment_wiki_math.jsonl", [r for r in wiki[:-GENERAL_WIKI_TAIL] if r["title"] not in titles
                                                and TRAIN_WIKI_MATH.search(r["title"])
                                                and not NOT_MATH.search(r["title"])])
    pile = [r for r in _jsonl(data / "corpora/general/web_samples/dsir_toy_pile_data.jsonl")
            if r["metadata"]["pile_set_name"] not in PILE_MATH]
    pile = sorted(pile, key=lambda r: _bucket(r["contents"]))
    _write(out / "web_pile.jsonl", pile[:N_WEB])
    _write(out / "experiment_web.jsonl", pile[N_WEB:])
    gsm = [{"id": f"gsm8k-train-{i}", "text": f"{r['question']}\n{r['answer']}"}
           for i, r in enumerate(_jsonl(data / "benchmarks/gsm8k/train.jsonl"))]
    _write(out / "gsm8k_train.jsonl", _sample(gsm, N_BENCH, "id"))
    math = [{"id": f"math-train-{i}", "text": f"{r['problem']}\nAnswer: {r['answer']}"}
            for i, r in enumerate(_jsonl(data / "benchmarks/math/train_7500_problems_answers.jsonl"))]
    _write(out / "math_train.jsonl", _sample(math, N_BENCH, "id"))
    rest = [r for rows in (gsm, math) for r in sorted(rows, key=lambda r: _bucket(r["id"]))[N_BENCH:]]
    _write(out / "experiment_tasks.jsonl", rest)


if __name__ == "__main__":
    main()
