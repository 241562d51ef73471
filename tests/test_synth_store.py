"""Resumable generation output: a run SIGKILLed between and inside batch commits, rerun, holds each passage once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from synth.store import ChunkStore, passage_id
from trait.contract import CONTRACT_VERSION, ContractError, finished_dataset, validate_table

from .conftest import REPO

# A child process that "generates" batches 0..9 (3 rows each, batch 7 rejected) and kills itself with SIGKILL
# after writing KILL_AT's temporary file but before its rename, the worst moment.
CHILD = textwrap.dedent('''
    import os, signal, sys
    import pyarrow.parquet as pq
    from synth import store
    out, kill_at = sys.argv[1], int(sys.argv[2])
    s = store.ChunkStore(out, "run-a")
    real_replace = os.replace
    def dying_replace(src, dst):
        if str(dst).endswith(f"batch-{kill_at:08d}.parquet"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    store.os.replace = dying_replace
    for b in range(10):
        if b in s.committed():
            continue
        rows = []
        for i in range(3):
            pid = store.passage_id([f"p{b}-{i}", f"q{b}-{i}"], "v1", "tiny", {"temperature": 0.7})
            # Batch 7 is rejected; its first passage never parsed, so it has no text.
            text = "" if (b, i) == (7, 0) else f"passage {b}.{i}"
            rows.append({"id": pid, "source": "synth/passage_v1", "text": text, "url": None,
                         "n_tokens": 2, "problem_ids": [f"p{b}-{i}", f"q{b}-{i}"], "tasks": ["gsm8k", "math"],
                         "template_version": "v1", "model": "tiny", "sampling": "{}", "finish_reason": "stop",
                         "reject_reason": "missing_enlightenment" if b == 7 else None, "reject_detail": None,
                         "raw_output": "{}"})
        s.commit(b, rows)
''')


def _run(out, kill_at: int) -> int:
    return subprocess.run([sys.executable, "-c", CHILD, str(out), str(kill_at)], cwd=REPO).returncode


def test_killed_runs_resume_and_every_passage_appears_once(tmp_path):
    out = tmp_path / "passages"
    assert _run(out, kill_at=4) == -signal.SIGKILL
    assert ChunkStore(out, "run-a").committed() == {0, 1, 2, 3}  # batch 4's temporary file is not a batch
    assert _run(out, kill_at=8) == -signal.SIGKILL
    assert ChunkStore(out, "run-a").committed() == set(range(8))
    assert _run(out, kill_at=-1) == 0
    manifest = ChunkStore(out, "run-a").finish({"job": "synth"}, keep_flagged=False)
    table = finished_dataset(str(out)).to_table()
    validate_table(table)
    expected = {passage_id([f"p{b}-{i}", f"q{b}-{i}"], "v1", "tiny", {"temperature": 0.7})
                for b in range(10) if b != 7 for i in range(3)}
    assert sorted(table.column("id").to_pylist()) == sorted(expected)
    assert manifest["counts"] == {"rows_in": 30, "rows_out": 27, "rows_quarantined": 3, "rows_flagged": 0,
                                  "tokens_out": 54, "rejected_by_reason": {"missing_enlightenment": 3},
                                  "batches": 10}
    quarantine = pq.read_table(out / "_quarantine" / "part-00000.parquet").to_pylist()
    assert {q["reason"] for q in quarantine} == {"missing_enlightenment"}
    assert json.loads(quarantine[0]["raw"])["problem_ids"] == ["p7-0", "q7-0"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["rows_out"] == 27
    assert manifest["contract_version"] == CONTRACT_VERSION


def test_flagging_keeps_rejected_passages_that_have_text_with_their_reason(tmp_path):
    out = tmp_path / "flagged"
    assert _run(out, kill_at=-1) == 0
    manifest = ChunkStore(out, "run-a").finish({"job": "synth"}, keep_flagged=True)
    table = finished_dataset(str(out)).to_table()
    validate_table(table)  # the passage without text is not kept: the contract forbids empty text
    assert table.num_rows == 29 and manifest["counts"]["rows_flagged"] == 2
    assert manifest["counts"]["rows_quarantined"] == 1
    assert table.column("reject_reason").to_pylist().count("missing_enlightenment") == 2


def test_rows_that_break_the_contract_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "broken"
    store = ChunkStore(out, "run-x")
    row = {"id": "a", "source": "synth/passage_v1", "text": "", "url": None, "n_tokens": 0, "reject_reason": None}
    store.commit(0, [row])  # accepted, yet empty: a validator bug the contract catches
    with pytest.raises(ContractError, match="column 'text' has 1 empty strings"):
        store.finish({"job": "synth"}, keep_flagged=False)
    assert not out.exists() and not (tmp_path / "broken._staging").exists()


def test_batches_of_another_config_are_refused_not_mixed_in(tmp_path):
    out = tmp_path / "passages"
    assert _run(out, kill_at=3) == -signal.SIGKILL
    with pytest.raises(ValueError, match="another config"):
        ChunkStore(out, "run-b")
    assert ChunkStore(out, "run-a").committed() == {0, 1, 2}


def test_passage_ids_depend_on_every_input():
    base = passage_id(["a", "b"], "v1", "m", {"temperature": 0.7, "seed": 1})
    assert base == passage_id(["a", "b"], "v1", "m", {"seed": 1, "temperature": 0.7})  # key order is irrelevant
    for other in (passage_id(["b", "a"], "v1", "m", {"temperature": 0.7, "seed": 1}),
                  passage_id(["a", "b"], "v2", "m", {"temperature": 0.7, "seed": 1}),
                  passage_id(["a", "b"], "v1", "m2", {"temperature": 0.7, "seed": 1}),
                  passage_id(["a", "b"], "v1", "m", {"temperature": 0.8, "seed": 1})):
        assert other != base
