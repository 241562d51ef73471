"""datatrove's fastText filter scoring a TRAIT dataset with TRAIT's normaliser: the side ``score_throughput``
compares ``trait score`` against. Runs in the benchmark environment (``.venv-bench``, ``infra/setup_bench.sh``),
never in ``.venv``.

    .venv-bench/bin/python -m benchmarks.datatrove_score INPUT_DIR OUTPUT_DIR --model COLUMN=MODEL.bin ...
        [--workers 1]

One ``LocalPipelineExecutor`` task per part file of INPUT_DIR, ``--workers`` at a time: ParquetReader, TRAIT's
``normalise`` (``spark_jobs.text``, the Python reference, which imports only the standard library), per model
``FastTextClassifierFilter`` with ``keep_labels=("pos", 0.0)`` (it scores, keeps every row and saves the label
scores in the metadata; without keep_labels or remove_labels it raises a TypeError), and ParquetWriter (an explicit
schema: id, the raw text, source, a float32 column per model). Prints one JSON line: seconds from before
datatrove's imports to the end, and rows written (datatrove drops a row whose normalised text is empty, where
``trait score`` keeps it with a null score).
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()  # before datatrove's imports: they are part of what a user waits for

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from datatrove.pipeline.filters import FastTextClassifierFilter  # noqa: E402
from datatrove.pipeline.readers import ParquetReader  # noqa: E402
from datatrove.pipeline.writers import ParquetWriter  # noqa: E402

from spark_jobs.text import normalise  # noqa: E402

LABEL = "__label__pos"  # spark_jobs.classifier.POSITIVE


class Normalise(PipelineStep):
    """The text to score becomes TRAIT's normalised text; the raw text waits in the metadata for the writer."""

    name = "TRAIT normalise"

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            doc.metadata["raw_text"] = doc.text
            doc.text = normalise(doc.text)
            yield doc


class Keep(PipelineStep):
    """The filter's score of the positive label, kept under the model's column (the next filter writes the same
    metadata keys)."""

    name = "keep score"

    def __init__(self, column: str):
        super().__init__()
        self.column = column

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            doc.metadata[self.column] = doc.metadata.pop(LABEL)
            yield doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", action="append", required=True, help="COLUMN=PATH of a fastText .bin")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    import glob

    import pyarrow as pa
    import pyarrow.parquet as pq

    models = dict(m.split("=", 1) for m in args.model)
    tasks = len(glob.glob(f"{args.input}/part-*.parquet"))
    steps = [ParquetReader(args.input, glob_pattern="part-*.parquet", recursive=False), Normalise()]
    for column, path in models.items():
        steps += [FastTextClassifierFilter(path, keep_labels=("pos", 0.0)), Keep(column)]

    def adapter(_writer, doc) -> dict:
        return {"id": doc.id, "text": doc.metadata["raw_text"], "source": doc.metadata["source"],
                **{column: doc.metadata[column] for column in models}}

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                        *[(column, pa.float32()) for column in models]])
    steps.append(ParquetWriter(args.output, output_filename="${rank}.parquet", adapter=adapter, schema=schema,
                               compression="zstd"))
    LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=args.workers, logging_dir=f"{args.output}/logs").run()
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in glob.glob(f"{args.output}/*.parquet"))
    print(json.dumps({"seconds": time.perf_counter() - STARTED, "rows": rows, "tasks": tasks}))


if __name__ == "__main__":
    main()
