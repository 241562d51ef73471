"""The ``trait`` front door: help, clear errors, the whole chain through subprocesses, and the demo."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import pytest

from trait.cli import COMMANDS, build_parser, load_command_config, main
from trait.config import describe, show

from .conftest import REPO, SHARED_DATA, read_jsonl, write_jsonl
from .support.cli import trait as run_trait

trait = partial(run_trait, check=True)  # these tests expect success unless a call says check=False




def test_help_lists_every_command():
    out = trait("--help").stdout
    # The COMMAND entries, one per line at four spaces (their wrapped descriptions are indented further): a word
    # that merely appears in another command's help line does not count.
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed == ["ingest", "classifier", "score", "select", "decontaminate", "report", "dedup", "baseline",
                      "synth", "train", "eval", "curves", "datamap", "pipeline", "model", "demo"]
    assert "token_budget" in trait("select", "--help").stdout


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    proc = trait("select", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--domain", "score_x_v1>0.5",
                 check=False)
    assert proc.returncode == 2 and "trait: error: threshold 'score_x_v1>0.5'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = trait("classifier", "train", "--name", "x", "--positives", str(tmp_path), "--negatives", str(tmp_path),
                 "--output", str(tmp_path / "m"), check=False)
    assert proc.returncode == 2 and "not a finished dataset" in proc.stderr


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_help_shows_every_config_field_with_its_default(words, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: an option's help is on its line or the next
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines() + [""]
    for doc in describe(COMMANDS[words].config_class()):
        option = f"--{doc.key.replace('_', '-')}"  # '--lr LR', or '--export, --no-export' for a switch
        at = [i for i, x in enumerate(lines)
              if x.split(" ", 3)[2:3] in ([option], [option + ","]) or x.startswith(f"  {doc.key} (")]
        assert at, f"{doc.key} is not in trait {' '.join(words)} --help"
        line = lines[at[0]] + lines[at[0] + 1] * lines[at[0] + 1].startswith(" " * 24)
        if doc.default is dataclasses.MISSING:
            assert "required" in line, line
        elif not dataclasses.is_dataclass(doc.default):
            assert f"default: {show(doc.default)}" in line, line


def config_of(*argv):
    """The validated config ``trait ARGV`` would run with."""
    args = build_parser(list(argv)).parse_args(list(argv))
    return load_command_config(args.command_spec, args)


def test_options_aliases_and_set_reach_the_config(tmp_path):
    assert config_of("score", "--input", "i", "--output", "o", "--model", "a", "b").models == ["a", "b"]
    # A list option given twice adds to the list (it kept only the last before).
    assert config_of("score", "--input", "i", "--output", "o", "--model", "a", "--model", "b").models == ["a", "b"]
    ingest = config_of("ingest", "--input", "x/*.jsonl", "y.jsonl", "--source", "web", "--url-field", "none",
                       "--text-field", "body", "--output", "o").inputs
    assert [(i.path, i.source, i.url_field, i.text_field) for i in ingest] == [
        ("x/*.jsonl", "web", None, "body"), ("y.jsonl", "web", None, "body")]
    select = config_of("select", "--input", "i", "--output", "o", "--domain", "score_d_v1:token_budget=1e6",
                       "--set", "quality.column=score_q_v1", "--set", "quality.percentile=50")
    assert (select.domain.token_budget, select.quality.column, select.quality.percentile) == (10**6, "score_q_v1",
                                                                                              50.0)
    synth = config_of("synth", "generate", "--output", "o", "--problem-sets", "gsm8k", "math", "--endpoint",
                      "http://h/v1", "--set", "server.tiny_model.seed=3", "--set", "sampling.temperature=0")
    assert (synth.server.endpoint, synth.server.tiny_model.seed, synth.sampling["temperature"]) == ("http://h/v1", 3, 0)
    ev = config_of("eval", "--model", "m", "--tasks", "ads", "--judge-endpoint", "http://j/v1", "--chat",
                   "--batch-size", "4")
    assert (ev.judge, ev.chat, ev.batch_size) == ("http://j/v1", True, 4)
    decontam = config_of("decontaminate", "--input", "i", "--output", "o", "--data", str(SHARED_DATA), "-n", "8",
                         "--benchmarks", "gsm8k")
    assert (decontam.shared_data, decontam.n, decontam.benchmarks) == (str(SHARED_DATA), 8, ["gsm8k"])
    # The file, then the options, then --set.
    config = tmp_path / "dedup.yaml"
    config.write_text("threshold: 0.9\nbands: 20\nrows: 5\n")
    dedup = config_of("dedup", "--input", "i", "--output", "o", "--config", str(config), "--bands", "16",
                      "--rows", "10", "--set", "rows=8")
    assert (dedup.threshold, dedup.bands, dedup.rows) == (0.9, 16, 8)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "abc"], "--lr: expected float, got 'abc'; write a number such as 0.5 or 3e-3"),
    (["--set", "lrr=3"], "--set lrr=3: unknown key 'lrr'; did you mean 'lr'?"),
    (["--set", "negatives.0.sorces=[a]"], "--set negatives.0.sorces=[a]: unknown key 'sorces' in negatives.0; did "
                                          "you mean 'sources'?"),
    (["--set", "vars.work=/nowhere", "--set", "lr=3e-3"], "/nowhere/seed is not a finished dataset"),
])
def test_a_config_mistake_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    # The README's command: the file's ${work} comes from its vars: block, or here from --set vars.work.
    code = main(["classifier", "train", "--config", str(REPO / "infra/configs/demo/classifier_domain.yaml"),
                 "--output", str(tmp_path / "m"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"trait: error: {message}") and err.count("\n") == 1, err


def test_config_file_mistakes_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlr: [0.5\n")
    for path, message in [(bad, f"{bad}:3:1: YAML syntax error: "), (tmp_path / "none.yaml", "config file "),
                          (tmp_path, "config ")]:
        assert main(["classifier", "train", "--config", str(path), "--output", str(tmp_path / "m")]) == 2
        assert capsys.readouterr().err.startswith(f"trait: error: {message}")


def test_the_chain_through_the_command_line(tmp_path):
    seed = write_jsonl(tmp_path / "seed.jsonl",
                       read_jsonl(SHARED_DATA / "corpora/math/planetmath/planetmath_entries.jsonl.gz", 300))
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 300, start=1000))
    trait("ingest", "--input", str(seed), "--source", "math/planetmath", "--url-field", "none",
          "--output", str(tmp_path / "seed"))
    proc = trait("ingest", "--input", str(pool), "--source", "wiki", "--output", str(tmp_path / "pool"))
    out = json.loads(proc.stdout)
    assert out["rows_in"] == 300 == out["rows_out"] + out["rows_quarantined"]
    # The statistics read the quarantine by its part files: Spark warns about a root path named `_quarantine`.
    assert "All paths were ignored" not in proc.stderr
    metrics = json.loads(trait("classifier", "train", "--name", "domain_math", "--positives", str(tmp_path / "seed"),
                               "--negatives", str(tmp_path / "pool"), "--output", str(tmp_path / "dm")).stdout)
    assert metrics["roc_auc"] > 0.9
    trait("score", "--input", str(tmp_path / "pool"), "--model", str(tmp_path / "dm"), "--output",
          str(tmp_path / "scored"))
    counts = json.loads(trait("select", "--input", str(tmp_path / "scored"), "--domain",
                              "score_domain_math_v1:percentile=80", "--output", str(tmp_path / "sel")).stdout)
    assert counts["rows_in"] == 300 and 55 <= counts["rows_out"] <= 65


@pytest.mark.demo
def test_the_demo_prints_its_tables(tmp_path):
    # 3.7 min alone on an idle 2-core machine, 7 beside another worker; 15+ when the machine is loaded
    proc = trait("demo", "--data", str(SHARED_DATA), "--workdir", str(tmp_path / "demo"), timeout=2700)
    work = tmp_path / "demo"
    summary = (work / "summary.md").read_text()
    assert summary in proc.stdout

    def manifest(name):
        return json.loads((work / name / "manifest.json").read_text())

    # Dedup and decontamination run before selection, and what they removed is what the scorer did not see.
    dedup, pool = manifest("dedup_pool"), manifest("pool")
    assert dedup["counts"]["rows_in"] == 16_114 and pool["counts"]["rows_in"] == dedup["counts"]["rows_out"]
    assert f"| dedup | pool | 16,114 | {dedup['counts']['rows_out']:,} |" in summary
    assert manifest("scored")["counts"]["rows_in"] == pool["counts"]["rows_out"]
    selected = manifest("selected")
    assert selected["counts"]["tokens_out"] >= 150_000 and selected["thresholds"]["domain"]["budget_reached"]
    for needle in ("score_domain_math_v1", "score_quality_edu_v1", "token_budget", "| trait & random |",
                   "| trait & dsir |", "| random & dsir |"):
        assert needle in summary
    # Random and DSIR are drawn to the budget the TRAIT selection reached, overshooting by one document at most.
    budget = selected["counts"]["tokens_out"]
    for name in ("random", "dsir"):
        m = manifest(name)
        assert m["budget"]["tokens"] == budget and budget <= m["counts"]["tokens_out"] < budget + 50_000
    assert (work / "report" / "report.html").stat().st_size > 10_000
