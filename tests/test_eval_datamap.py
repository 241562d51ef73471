"""The data map on real samples from ../shared/data: Wikipedia (the general pool, JSONL), PlanetMath and OpenStax
(contract datasets: the ``datasets`` fixture's in-domain and selected stand-ins), GSM8K + MATH train problems (the
synth problem sets) and GSM8K worked solutions (the fixture's stand-in for synthetic passages), 30 each,
embedded with the real MiniLM model and projected with t-SNE.

What the numbers show (measured over sampling seeds 0-3, 30 per source, centroid cosine distance to the problems):
OpenStax 0.52-0.70 against Wikipedia 0.98-1.07, and the problems' nearest neighbours are 7-14% OpenStax against
0-2% Wikipedia; PlanetMath (research-level encyclopedia entries, 0.94-1.10) is *not* reliably closer than Wikipedia,
so the test asserts the OpenStax property only.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from eval.datamap import run_datamap, sample_texts
from trait import UserError
from trait.contract import write_text_dataset

from .conftest import SHARED_DATA
from .support.cli import trait
from .support.training import ENV

WIKI = SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz"


def test_datamap_of_real_sources(datasets, tmp_path):
    sources = [f"general={WIKI}", f"planetmath={datasets['in_domain']}", f"openstax={datasets['selected']}",
               "problems=problems:gsm8k,math", f"synthetic={datasets['synthetic']}"]
    proc = trait("datamap", "--source", *sources, "--per-source", "30", "--seed", "0", "--output", str(tmp_path),
                 env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = ["general", "planetmath", "openstax", "problems", "synthetic"]
    result = json.loads((tmp_path / "datamap.json").read_text())
    assert result["counts"] == dict.fromkeys(names, 30) and result["projection"] == "tsne"
    table = pq.read_table(tmp_path / "datamap.parquet").to_pydict()
    assert len(table["x"]) == 150 and sorted(set(table["source"])) == sorted(names)
    assert len(set(zip(table["x"], table["y"]))) == 150  # a real projection, not a collapsed one
    from PIL import Image

    with Image.open(tmp_path / "datamap.png") as image:
        image.verify()
    with Image.open(tmp_path / "datamap.png") as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 500
    dist, mix = result["centroid_distance"], result["neighbour_mix"]
    for a in names:
        assert dist[a][a] == pytest.approx(0, abs=1e-3) and sum(mix[a].values()) == pytest.approx(1, abs=1e-3)
        assert all(dist[a][b] == dist[b][a] for b in names)
        assert mix[a][a] > 29 / 149  # clusters: above chance (29 of the 149 others share its source)
    # the school-level seed sits much nearer the downstream problems than the general pool does
    assert dist["openstax"]["problems"] < dist["general"]["problems"] - 0.15
    assert mix["problems"]["openstax"] > mix["problems"]["general"]
    # worked GSM8K solutions (the synthetic stand-in) are the problems' nearest source
    assert dist["synthetic"]["problems"] == min(dist[b]["problems"] for b in names if b != "problems")


def test_sampling_is_seeded_and_reads_every_kind_of_source(datasets):
    tabmwp = f"{SHARED_DATA}/benchmarks/tabmwp/problems_dev1k.json#question"  # an object of id -> record
    for path in (str(WIKI), tabmwp, datasets["selected"], "problems:gsm8k"):
        a, b = sample_texts(path, 5, seed=1), sample_texts(path, 5, seed=1)
        assert a == b and len(a) == 5 and all(t.strip() for t in a), path
        assert sample_texts(path, 5, seed=2) != a, path
    assert len(sample_texts(datasets["selected"], 10_000, seed=0)) == 100  # a small source gives all it has


def test_bad_sources_say_what_to_fix(tmp_path):
    empty = write_text_dataset(tmp_path / "empty", "x", [])
    good = f"general={WIKI}"
    # the bad source first: it fails before the good one is read
    cases = [([f"seed={tmp_path}/missing.jsonl", good], "does not exist"),
             ([f"seed={empty}", good], "source 'seed' .* has no texts"),
             ([f"seed={tmp_path}", good], "not a finished dataset"),
             (["seed", good], "give NAME=PATH"),
             ([good], "at least two sources"),
             ([f"seed={WIKI}#body", good], "no text field 'body'"),
             (["seed=problems:nosuchset", good], "unknown problem set"),
             ([f"seed={tmp_path}/notes.txt", good], "not a contract dataset directory")]
    for sources, message in cases:
        with pytest.raises(UserError, match=message):
            run_datamap(sources, tmp_path / "out", per_source=5)
