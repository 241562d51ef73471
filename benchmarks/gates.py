"""Benchmark gates: the one way a benchmark reports a result, and the summary table ``make bench`` ends with.

A benchmark judges each of its goals as a ``Gate`` (its figure, the measured ratio, the goal: PASS when the ratio
is at least the goal) and hands them to ``record``, which prints one line per gate and writes
``<results>/<benchmark>.json`` (the gates, the command, the date, the benchmark's own details). ``<results>`` is
``runs/bench`` (``runs/bench-quick`` for a reduced run), or ``$TRAIT_BENCH_RESULTS``.

    python -m benchmarks.gates begin [--quick]     a new run: later results carry its id
    python -m benchmarks.gates summary [--quick]   the table of this run's gates -> <results>/summary.json

The summary lists every gate of the benchmarks that ``begin`` expects, this run's results only: a benchmark that
crashed or was not run is a FAIL row ("no result"), never an older run's PASS. It exits 1 when any row fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Gate:
    """One goal of one benchmark: ``ratio`` (ours / theirs, or another dimensionless figure) >= ``goal``."""

    benchmark: str
    figure: str
    ratio: float | None  # None: not measured (the benchmark failed before it got there)
    goal: float

    @property
    def passed(self) -> bool:
        return self.ratio is not None and self.ratio >= self.goal

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        value = "no result" if self.ratio is None else f"{self.ratio:.3f}"
        return f"{self.figure}: {value} ({self.verdict}, goal >= {self.goal:g})"


def results_dir(quick: bool) -> Path:
    return Path(os.environ.get("TRAIT_BENCH_RESULTS") or REPO / "runs" / ("bench-quick" if quick else "bench"))


def _run_id(directory: Path) -> str | None:
    path = directory / RUN_FILE
    return json.loads(path.read_text())["run"] if path.exists() else None


def record(benchmark: str, gates: list[Gate], quick: bool, details: dict | None = None) -> Path:
    """Print each gate's line and write ``<results>/<benchmark>.json``; returns its path."""
    directory = results_dir(quick)
    directory.mkdir(parents=True, exist_ok=True)
    print()
    for gate in gates:
        print(gate.line())
    path = directory / f"{benchmark}.json"
    path.write_text(json.dumps({
        "benchmark": benchmark, "run": _run_id(directory), "quick": quick,
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{benchmark}", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "gates": [asdict(g) for g in gates], "details": details or {}}, indent=1))
    print(f"results: {path}")
    return path


def summary(directory: Path, expected: list[str]) -> tuple[list[Gate], str]:
    """This run's gates (a "no result" gate for each expected benchmark without a result) and the Markdown table."""
    run = _run_id(directory)
    gates: list[Gate] = []
    for name in expected:
        path = directory / f"{name}.json"
        result = json.loads(path.read_text()) if path.exists() else None
        if result is None or result["run"] != run or not result["gates"]:
            gates.append(Gate(name, "no result from this run (see its output above)", None, 1.0))
        else:
            gates += [Gate(**g) for g in result["gates"]]
    rows = ["| benchmark | figure | ratio | goal | result |", "|---|---|---:|---:|---|"]
    rows += [f"| {g.benchmark} | {g.figure} | {'-' if g.ratio is None else f'{g.ratio:.3f}'} | >= {g.goal:g} | "
             f"{g.verdict} |" for g in gates]
    return gates, "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["begin", "summary"])
    parser.add_argument("--quick", action="store_true", help="the reduced run's results (runs/bench-quick)")
    parser.add_argument("--expect", nargs="*", default=[], help="begin: the benchmarks this run will record")
    args = parser.parse_args(argv)
    directory = results_dir(args.quick)
    directory.mkdir(parents=True, exist_ok=True)
    if args.action == "begin":
        run = datetime.datetime.now().astimezone().isoformat(timespec="microseconds")
        (directory / RUN_FILE).write_text(json.dumps({"run": run, "expected": args.expect}))
        return 0
    expected = json.loads((directory / RUN_FILE).read_text())["expected"] if (directory / RUN_FILE).exists() else []
    gates, table = summary(directory, expected)
    print(f"\n{table}\n")
    (directory / SUMMARY_FILE).write_text(json.dumps({
        "run": _run_id(directory), "quick": args.quick,
        "gates": [{**asdict(g), "result": g.verdict} for g in gates]}, indent=1))
    failed = sum(not g.passed for g in gates)
    print(f"{len(gates) - failed} of {len(gates)} gates pass; table: {directory / SUMMARY_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
