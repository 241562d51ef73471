"""Nothing the user owns is lost (issue 15): every job refuses an output folder that is not its own, whatever
``--overwrite`` says, and an output equal to, inside or containing one of its inputs; the refusal is one line
(exit 2 from the CLI) naming what is there, and the folder is left byte for byte. ``--overwrite`` still replaces a
TRAIT dataset.

A few jobs run through the ``trait`` command; the rest through their Python entry points, which is where the check
lives (trait.outputs), before any generator, model or Spark work that could write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from trait.config import from_dict
from trait.contract import MANIFEST_NAME, SUCCESS_MARKER, finished_dataset
from trait.outputs import OutputError

from .conftest import SHARED_DATA, read_jsonl, write_jsonl
from .support.cli import trait

FOREIGN = {"thesis.txt": b"Chapter 1. What I found\n", "data.csv": b"x,y\n1,2\n"}
D, Q = "score_domain_math_v1", "score_quality_edu_v1"


def foreign_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, data in FOREIGN.items():
        (path / name).write_bytes(data)
    return path


def contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(call, folder: Path, before: dict | None = None) -> str:
    """Run ``call``, which must raise OutputError naming the foreign files; ``folder`` must be as it was."""
    before = FOREIGN if before is None else before
    with pytest.raises(OutputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in FOREIGN if name in before), message
    assert contents(folder) == before
    return message


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A folder of two small JSONL files (30 Wikipedia articles each)."""
    root = tmp_path_factory.mktemp("raw") / "raw"
    wiki = read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 60)
    write_jsonl(root / "a.jsonl", wiki[:30])
    write_jsonl(root / "b.jsonl", wiki[30:])
    return root


# --- through the command ------------------------------------------------------------------------------------------

def test_cli_ingest_into_a_foreign_folder_exits_2_and_leaves_it(raw, tmp_path):
    out = foreign_folder(tmp_path / "thesis")
    proc = trait("ingest", "--input", str(raw / "a.jsonl"), "--source", "wiki", "--output", str(out), "--overwrite",
                 "--master", "local[1]")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("trait: error:")]
    assert "is a folder that is not a TRAIT dataset" in line and "thesis.txt" in line and "data.csv" in line
    assert "Traceback" not in proc.stderr
    assert contents(out) == FOREIGN and not Path(f"{out}._staging").exists()


def test_cli_ingest_of_a_folder_into_itself_keeps_the_inputs(raw):
    """The probe's case: ``--input 'dir/*.jsonl' --output dir`` deleted its own inputs."""
    before = contents(raw)
    proc = trait("ingest", "--input", f"{raw}/*.jsonl", "--source", "wiki", "--output", str(raw), "--overwrite",
                 "--master", "local[1]")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--output {raw} is the folder of the input {raw}/*.jsonl" in proc.stderr
    assert contents(raw) == before


def test_cli_synth_generate_into_a_foreign_folder(tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({"problem_sets": ["gsm8k", "math"], "max_problems_per_task": 5}))
    out = foreign_folder(tmp_path / "thesis")
    proc = trait("synth", "generate", "--config", str(config), "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "thesis.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert contents(out) == FOREIGN and not Path(f"{out}._chunks").exists()


# --- every Spark job ----------------------------------------------------------------------------------------------

def spark_jobs(spark, raw, small_corpus, classifiers, scored):
    """(name, call(output, overwrite)) for every Spark job, each with valid inputs."""
    from spark_jobs.baselines import RandomConfig, run_random
    from spark_jobs.decontaminate import run_decontaminate
    from spark_jobs.dedup import run_dedup
    from spark_jobs.dsir import DsirConfig, run_dsir
    from spark_jobs.ingest import IngestConfig, run_ingest
    from spark_jobs.report import ReportConfig, run_report
    from spark_jobs.score import ScoreConfig, run_score
    from spark_jobs.select import SelectConfig, run_select
    from trait.decontam import DecontamConfig
    from trait.minhash import DedupConfig

    ingest = from_dict(IngestConfig, {"inputs": [{"path": str(raw / "a.jsonl"), "source": "wiki"}]})
    select = from_dict(SelectConfig, {"domain": {"column": D, "min": 0.5}})
    return {
        "ingest": lambda out, ow: run_ingest(spark, ingest, out, ow),
        "score": lambda out, ow: run_score(spark, from_dict(ScoreConfig, {"models": classifiers}),
                                           small_corpus["pool"], out, ow),
        "select": lambda out, ow: run_select(spark, select, scored, out, ow),
        "random": lambda out, ow: run_random(spark, from_dict(RandomConfig, {"token_budget": 1000}), scored, out, ow),
        "dsir": lambda out, ow: run_dsir(spark, from_dict(DsirConfig, {"token_budget": 1000}), scored,
                                         small_corpus["seed"], out, ow),
        "dedup": lambda out, ow: run_dedup(spark, DedupConfig(), small_corpus["pool"], out, ow),
        "decontaminate": lambda out, ow: run_decontaminate(spark, from_dict(DecontamConfig, {"benchmarks": ["gsm8k"]}),
                                                           small_corpus["pool"], out, ow),
        "report": lambda out, ow: run_report(spark, ReportConfig(), scored, out, None, ow),
    }


@pytest.mark.parametrize("job", ["ingest", "score", "select", "random", "dsir", "dedup", "decontaminate", "report"])
def test_a_spark_job_refuses_a_foreign_folder_even_with_overwrite(spark, raw, small_corpus, classifiers, scored,
                                                                  tmp_path, job):
    run = spark_jobs(spark, raw, small_corpus, classifiers, scored)[job]
    out = foreign_folder(tmp_path / "thesis")
    for overwrite in (False, True):
        message = refused(lambda ow=overwrite: run(str(out), ow), out)
        assert "is a folder that is not a TRAIT dataset" in message
    assert not Path(f"{out}._staging").exists()


def test_overlapping_inputs_are_refused(spark, scored, tmp_path):
    from spark_jobs.select import SelectConfig, run_select

    select = from_dict(SelectConfig, {"domain": {"column": D, "min": 0.5}})
    before = contents(Path(scored))
    for output, how in ((scored, "is the input"), (f"{scored}/selected", "is inside the input"),
                        (str(Path(scored).parent), "contains the input")):
        with pytest.raises(OutputError, match=how):
            run_select(spark, select, scored, output, overwrite=True)
    assert contents(Path(scored)) == before


def test_overwrite_replaces_a_trait_dataset_but_not_one_with_a_foreign_file(spark, scored, tmp_path):
    from spark_jobs.dataset import DatasetError, JobOutput, parts_glob, read_parts
    from spark_jobs.select import SelectConfig, run_select

    out = str(tmp_path / "selected")
    high, low = (from_dict(SelectConfig, {"domain": {"column": D, "min": m}}) for m in (0.5, 0.1))
    first = run_select(spark, high, scored, out)
    with pytest.raises(DatasetError, match="another config"):
        run_select(spark, low, scored, out)
    second = run_select(spark, low, scored, out, overwrite=True)
    assert second["config"]["domain"]["min"] == 0.1 and second["counts"]["rows_out"] > first["counts"]["rows_out"]
    assert finished_dataset(out).count_rows() == second["counts"]["rows_out"]
    assert not Path(f"{out}._staging").exists()

    # a file of the user's inside a TRAIT dataset: the dataset is no longer ours to replace
    dataset = contents(Path(out))
    (Path(out) / "thesis.txt").write_bytes(FOREIGN["thesis.txt"])
    message = refused(lambda: run_select(spark, high, scored, out, overwrite=True), Path(out),
                      {**dataset, "thesis.txt": FOREIGN["thesis.txt"]})
    assert "holds a TRAIT dataset and also thesis.txt" in message

    # ... and the check is made again just before the old output is deleted
    (Path(out) / "thesis.txt").unlink()
    job = JobOutput(spark, out, "select", {"other": True}, [parts_glob(scored)], overwrite=True)
    (Path(out) / "thesis.txt").write_bytes(FOREIGN["thesis.txt"])
    refused(lambda: job.write(read_parts(spark, scored).limit(3)), Path(out),
            {**dataset, "thesis.txt": FOREIGN["thesis.txt"]})


def test_a_staging_folder_holding_foreign_files_is_not_deleted(spark, scored, tmp_path):
    from spark_jobs.select import SelectConfig, run_select

    staging = foreign_folder(tmp_path / "selected._staging")
    message = refused(lambda: run_select(spark, from_dict(SelectConfig, {"domain": {"column": D, "min": 0.5}}),
                                         scored, str(tmp_path / "selected")), staging)
    assert message.startswith("staging folder")


def test_classifier_train_refuses_a_foreign_folder(small_corpus, tmp_path):
    from spark_jobs.classifier import ClassifierConfig, train_classifier

    cfg = from_dict(ClassifierConfig, {"name": "domain_math", "positives": [small_corpus["seed"]],
                                       "negatives": [small_corpus["pool"]], "seed": 1})
    out = foreign_folder(tmp_path / "thesis")
    refused(lambda: train_classifier(cfg, out), out)
    with pytest.raises(OutputError, match="is inside the input"):
        train_classifier(cfg, Path(small_corpus["seed"]) / "model")


# --- synth ----------------------------------------------------------------------------------------------------------

def test_synth_generate_and_annotate_refuse_foreign_and_overlapping_outputs(small_corpus, tmp_path):
    from synth.annotate import AnnotateConfig, run_annotate
    from synth.generate import SynthConfig, run_generate

    synth = from_dict(SynthConfig, {"problem_sets": ["gsm8k", "math"], "max_problems_per_task": 5})
    out = foreign_folder(tmp_path / "thesis")
    refused(lambda: run_generate(synth, str(out)), out)
    refused(lambda: run_generate(synth, str(out), chunk=0, num_chunks=2), out)  # the chunks' folder, too
    task_file = SHARED_DATA / "benchmarks/gsm8k/train.jsonl"
    with pytest.raises(OutputError, match="is the input"):
        run_generate(synth, str(task_file))

    annotate = from_dict(AnnotateConfig, {"sample_size": 5})
    refused(lambda: run_annotate(annotate, small_corpus["seed"], str(out)), out)
    with pytest.raises(OutputError, match="is the input"):
        run_annotate(annotate, small_corpus["seed"], small_corpus["seed"])
    with pytest.raises(OutputError, match="is inside the input"):
        run_annotate(annotate, small_corpus["seed"], f"{small_corpus['seed']}/labels")
    assert not any(tmp_path.glob("*._chunks"))


def test_chunk_store_refuses_foreign_side_folders_and_another_runs_dataset(tmp_path):
    from synth.store import ChunkStore

    chunks = foreign_folder(tmp_path / "passages._chunks")
    refused(lambda: ChunkStore(tmp_path / "passages", "run-a"), chunks)

    out = tmp_path / "labels"
    store = ChunkStore(out, "run-a")
    row = {"id": "p1", "source": "synth/passage_v1", "text": "a passage", "n_tokens": 2}
    store.commit(0, [row])
    manifest = store.finish({"job": "synth_test"}, keep_flagged=False)
    assert manifest["fingerprint"] == "run-a" and manifest["counts"]["rows_out"] == 1
    assert ChunkStore(out, "run-a").finish({"job": "synth_test"}, keep_flagged=False)["counts"]["rows_out"] == 1
    for path in Path(f"{out}._chunks").iterdir():  # the batches gone: the finished dataset still says whose it is
        path.unlink()
    with pytest.raises(ValueError, match="holds a finished run with another config"):
        ChunkStore(out, "run-b")


# --- trainer and eval -----------------------------------------------------------------------------------------------

def test_training_refuses_a_foreign_output_dir_and_one_over_its_inputs(tiny_model, datasets, tmp_path):
    from trainer.config import TrainConfig
    from trainer.train import run_training

    from .support.training import tiny_config

    base = tiny_config(tmp_path, tiny_model, datasets)
    out = foreign_folder(tmp_path / "thesis")
    refused(lambda: run_training(from_dict(TrainConfig, {**base, "output_dir": str(out)})), out)
    with pytest.raises(OutputError, match="output_dir .* is the input"):
        run_training(from_dict(TrainConfig, {**base, "output_dir": str(tiny_model)}))
    with pytest.raises(OutputError, match="output_dir .* contains the input"):
        run_training(from_dict(TrainConfig, {**base, "output_dir": str(Path(datasets["in_domain"]).parent)}))


def test_eval_curves_and_datamap_refuse_foreign_folders(tiny_model, datasets, tmp_path):
    from eval.curves import run_curves
    from eval.datamap import run_datamap
    from eval.run import run_eval

    out = foreign_folder(tmp_path / "thesis")
    refused(lambda: run_eval(str(tiny_model), ["gsm8k"], limit=1, output=str(out)), out)
    with pytest.raises(OutputError, match="is inside the input"):
        run_eval(str(tiny_model), ["gsm8k"], limit=1, output=str(tiny_model / "results"))
    refused(lambda: run_curves(tmp_path / "run", ["gsm8k"], out, evaluate=lambda *a, **k: {}), out)
    with pytest.raises(OutputError, match="is inside the input"):
        run_curves(tmp_path / "run", ["gsm8k"], tmp_path / "run" / "curves", evaluate=lambda *a, **k: {})
    sources = [f"in_domain={datasets['in_domain']}", f"general={datasets['replay_general']}"]
    refused(lambda: run_datamap(sources, out, per_source=2, embedder=object()), out)
    with pytest.raises(OutputError, match="is inside the input"):
        run_datamap(sources, Path(datasets["replay_general"]) / "map", per_source=2, embedder=object())


def test_reruns_into_a_jobs_own_files_are_allowed(tmp_path):
    """A folder holding only what the job writes (an earlier eval's results) is the job's own: no refusal."""
    from eval.run import RESULT_FILES
    from trait.outputs import check_output

    out = tmp_path / "eval"
    (out / "samples").mkdir(parents=True)
    for name in RESULT_FILES[:2]:
        (out / name).write_text("{}")
    check_output(out, own=RESULT_FILES, dataset=False)
    (out / MANIFEST_NAME).write_text(json.dumps({"job": "x"}))
    (out / SUCCESS_MARKER).write_text("")
    with pytest.raises(OutputError, match=re.escape(f"holds {SUCCESS_MARKER}, {MANIFEST_NAME}, which this job")):
        check_output(out, own=RESULT_FILES, dataset=False)
    many = foreign_folder(tmp_path / "many")
    for i in range(6):
        (many / f"notes{i}.md").write_text("")
    with pytest.raises(OutputError, match=re.escape("holds data.csv, notes0.md, notes1.md, notes2.md, notes3.md and "
                                                    "3 more, which")):
        check_output(many, own=RESULT_FILES, dataset=False)
