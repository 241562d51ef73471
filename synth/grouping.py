"""Group problems from different tasks into passages: by a shared entity, or by shared knowledge (embeddings).

Entity-centric tasks: problems whose normalised entity keys (query, product, brand) meet are grouped, one problem
per task. Knowledge-centric tasks: every problem's nearest neighbours among *other* tasks' problems come from
blocked matrix products of unit embeddings (cosine similarity) with a top-n per block (memory: block x N x 4
bytes, e.g. 1024 x 20,000 -> 80 MB), then groups are assembled greedily, best-connected seeds first. Both ways a
group holds ``min_problems``..``max_problems`` problems of distinct tasks, each problem is used at most
``max_uses`` times, and the result depends only on the inputs and ``seed``.

A ``limit`` (smoke runs) bounds the embedding, the expensive part (~3k tokens/s on 2 cores: all GSM8K and MATH
train problems took 14.5 minutes): each knowledge-centric task contributes a seeded sample of its problems sized
from the passages still needed, doubled until the groups fill the limit or the sample holds every problem.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from synth.problem_sets import Problem
from trait.config import ConfigError, field

log = logging.getLogger(__name__)

# Problems sampled per task for each passage a limited run still needs (divided by max_uses): greedy knowledge
# grouping leaves problems without a partner above min_similarity, so the sample is larger than what it must fill.
LIMIT_SAMPLE_MARGIN = 4


@dataclass
class GroupingConfig:
    """How problems are combined into passages."""

    min_problems: int = field(2, help="fewest problems in a passage (from distinct tasks)")
    max_problems: int = field(3, help="most problems in a passage")
    max_uses: int = field(1, help="k: how many passages one problem may appear in")
    seed: int = field(0, help="seeds group sizes and tie-breaking; same inputs + seed = same groups")
    neighbours: int = field(16, help="knowledge-centric: nearest other-task problems kept per problem")
    min_similarity: float = field(0.35, help="knowledge-centric: cosine similarity a partner must reach")
    block_size: int = field(1024, help="knowledge-centric: query rows per matrix product (memory: block x N x 4 B)")

    def validate(self) -> None:
        if not 2 <= self.min_problems <= self.max_problems:
            raise ConfigError(f"grouping: need 2 <= min_problems <= max_problems, got {self.min_problems}.."
                              f"{self.max_problems} (a passage combines problems from different tasks)")
        if self.max_uses < 1 or self.neighbours < 1 or self.block_size < 1:
            raise ConfigError("grouping: max_uses, neighbours and block_size must be >= 1")
        if not -1 <= self.min_similarity <= 1:
            raise ConfigError(f"grouping: min_similarity is a cosine similarity, in [-1, 1]; got {self.min_similarity}")


@dataclass(frozen=True)
class ProblemGroup:
    """One passage's problems (ids and tasks in order), how they were joined, and the shared entity or similarity."""

    problem_ids: tuple[str, ...]
    tasks: tuple[str, ...]
    kind: str  # entity_centric | knowledge_centric
    entity: str | None = None
    similarity: float | None = None  # mean pairwise cosine similarity of the members


def nearest_other_task(embeddings: np.ndarray, task_ids: np.ndarray, k: int, block_size: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every row among rows of a *different* task, best first.

    embeddings: (N, d) float32, unit rows; task_ids: (N,) int. Returns (indices (N, k) int64, similarities (N, k)
    float32); slots beyond the available neighbours hold index -1 and similarity -inf. Ties go to the lower index.
    """
    n = len(embeddings)
    k_eff = min(k, n)
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, block_size):
        block = embeddings[start:start + block_size] @ embeddings.T  # (b, N)
        block[task_ids[start:start + block_size, None] == task_ids[None, :]] = -np.inf  # same task never pairs
        if k_eff < n:
            top = np.argpartition(-block, k_eff - 1, axis=1)[:, :k_eff]
        else:
            top = np.tile(np.arange(n), (len(block), 1))
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)  # by similarity desc, then index asc: deterministic
        indices[start:start + len(block), :k_eff] = np.take_along_axis(top, order, axis=1)
        sims[start:start + len(block), :k_eff] = np.take_along_axis(top_sims, order, axis=1)
    indices[~np.isfinite(sims)] = -1
    return indices, sims


def group_by_entity(problems: list[Problem], config: GroupingConfig) -> list[ProblemGroup]:
    """Groups of problems from distinct tasks sharing a normalised entity key; keys visited in a seeded order."""
    rng = random.Random(config.seed)
    by_key: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, problem in enumerate(problems):
        for key in problem.entities:
            by_key[key][problem.task].append(i)
    keys = sorted(k for k, tasks in by_key.items() if len(tasks) >= 2)
    rng.shuffle(keys)
    uses = [0] * len(problems)
    last = [-1] * len(problems)
    groups, seen = [], set()
    for key in keys:
        pools = {task: sorted(members, key=lambda i: problems[i].id) for task, members in sorted(by_key[key].items())}
        for members in pools.values():
            rng.shuffle(members)
        stalls = 0
        while True:
            # tasks in a seeded order, and from each its least-used available problem
            open_tasks = [t for t, m in pools.items() if any(uses[i] < config.max_uses for i in m)]
            if len(open_tasks) < config.min_problems:
                break
            rng.shuffle(open_tasks)
            size = min(len(open_tasks), rng.randint(config.min_problems, config.max_problems))
            # least used first, then least recently used: partners rotate when max_uses > 1
            chosen = [min((i for i in pools[t] if uses[i] < config.max_uses), key=lambda i: (uses[i], last[i]))
                      for t in open_tasks[:size]]
            signature = frozenset(chosen)
            if signature in seen:  # max_uses > 1: never the same group twice; a fresh task order may avoid it
                stalls += 1
                if stalls > 2 * config.max_problems:
                    break
                continue
            seen.add(signature)
            for i in chosen:
                uses[i] += 1
                last[i] = len(groups)
            groups.append(ProblemGroup(tuple(problems[i].id for i in chosen), tuple(problems[i].task for i in chosen),
                                       "entity_centric", entity=key))
    return groups


def group_by_knowledge(problems: list[Problem], embeddings: np.ndarray, config: GroupingConfig) -> list[ProblemGroup]:
    """Greedy groups of similar problems from distinct tasks; ``embeddings`` (N, d) unit rows in problem order."""
    if len(problems) != len(embeddings):
        raise ConfigError(f"{len(problems)} problems but {len(embeddings)} embeddings")
    rng = random.Random(config.seed)
    task_names = sorted({p.task for p in problems})
    task_ids = np.array([task_names.index(p.task) for p in problems], dtype=np.int64)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    neighbours, sims = nearest_other_task(emb, task_ids, config.neighbours, config.block_size)
    uses = np.zeros(len(problems), dtype=np.int64)
    # Best-connected seeds first: a problem whose nearest partner is very close is grouped before its partner is
    # taken by a weaker match. Ties by problem id, not input order.
    seeds = sorted(range(len(problems)), key=lambda i: (-float(sims[i, 0]), problems[i].id))
    groups, seen = [], set()
    for seed in seeds:
        while uses[seed] < config.max_uses:
            members = [seed]
            target = rng.randint(config.min_problems, config.max_problems)
            candidates = {int(j) for m in members for j in neighbours[m] if j >= 0}
            while len(members) < target:
                taken = {task_ids[m] for m in members}
                # a partner must be close to every member, not just the seed: score = its least similarity
                scored = [(float((emb[members] @ emb[j]).min()), j) for j in sorted(candidates)
                          if uses[j] < config.max_uses and task_ids[j] not in taken and j not in members]
                scored = [(s, j) for s, j in scored if s >= config.min_similarity]
                if not scored:
                    break
                best = max(scored, key=lambda sj: (sj[0], -sj[1]))[1]
                members.append(best)
                candidates |= {int(j) for j in neighbours[best] if j >= 0}
            signature = frozenset(members)
            if len(members) < config.min_problems or signature in seen:
                break
            seen.add(signature)
            uses[members] += 1
            pair_sims = [float(emb[a] @ emb[b]) for x, a in enumerate(members) for b in members[x + 1:]]
            groups.append(ProblemGroup(tuple(problems[i].id for i in members), tuple(problems[i].task for i in members),
                                       "knowledge_centric", similarity=round(sum(pair_sims) / len(pair_sims), 6)))
    return groups


def coverage_report(problems: list[Problem], groups: list[ProblemGroup], kinds: dict[str, str]) -> dict:
    """Problems used at least once per task, passages per task combination, and ungrouped problems by reason."""
    used = Counter(pid for g in groups for pid in g.problem_ids)
    per_task: dict[str, dict] = {}
    ungrouped = Counter()
    entity_tasks = defaultdict(set)
    for p in problems:
        for key in p.entities:
            entity_tasks[key].add(p.task)
    for p in problems:
        row = per_task.setdefault(p.task, {"problems": 0, "used": 0})
        row["problems"] += 1
        if used[p.id]:
            row["used"] += 1
        elif kinds.get(p.task) == "entity_centric":
            shared = any(len(entity_tasks[k]) >= 2 for k in p.entities)
            ungrouped["partners_used_up" if shared else "entity_not_shared_with_another_task"] += 1
        else:
            ungrouped["no_unused_partner_above_min_similarity"] += 1
    for row in per_task.values():
        row["coverage"] = round(row["used"] / row["problems"], 4) if row["problems"] else 0.0
    combos = Counter("+".join(sorted(g.tasks)) for g in groups)
    return {"passages": len(groups), "per_task": dict(sorted(per_task.items())),
            "task_combinations": dict(sorted(combos.items())), "ungrouped": dict(sorted(ungrouped.items()))}


def seeded_order(problems: list[Problem], seed: int) -> list[Problem]:
    """``problems`` sorted by sha1(seed, id): a seeded shuffle independent of input order (and so of how a run is
    chunked); its prefixes are nested samples, so a larger sample re-embeds nothing a smaller one embedded."""
    return sorted(problems, key=lambda p: hashlib.sha1(f"{seed}\0{p.id}".encode()).digest())


def _knowledge_groups_for(needed: int, problems: list[Problem], config: GroupingConfig, embed
                          ) -> tuple[list[ProblemGroup], list[Problem], dict]:
    """Groups from seeded per-task samples of ``problems``, the samples doubled until they give ``needed`` groups
    or hold every problem. Returns (groups, the problems considered, {task: {"sampled", "problems"}})."""
    by_task: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_task[p.task].append(p)
    order = {task: seeded_order(members, config.seed) for task, members in sorted(by_task.items())}
    vectors: dict[str, np.ndarray] = {}
    n = math.ceil(needed * LIMIT_SAMPLE_MARGIN / config.max_uses)
    while True:
        sample = [p for members in order.values() for p in members[:n]]
        todo = [p for p in sample if p.id not in vectors]
        if todo:
            vectors.update(zip((p.id for p in todo), embed([p.text for p in todo])))
        groups = group_by_knowledge(sample, np.stack([vectors[p.id] for p in sample]), config)
        everything = all(n >= len(members) for members in order.values())
        if len(groups) >= needed or everything:
            break
        log.info("grouping: %d problems per task gave %d of the %d passages needed; sampling %d", n, len(groups),
                 needed, 2 * n)
        n *= 2
    sampled = {task: {"sampled": min(n, len(members)), "problems": len(members)} for task, members in order.items()}
    return groups, sample, sampled


def group_problems(problems: list[Problem], kinds: dict[str, str], config: GroupingConfig,
                   embed=None, limit: int | None = None) -> tuple[list[ProblemGroup], dict]:
    """The groups (entity-centric tasks together, knowledge-centric tasks together) and their coverage report.

    kinds: task -> domain kind. embed: texts -> (n, d) unit embeddings, needed only for knowledge-centric tasks
    (default: ``synth.embed.default_embedder().embed``). limit: at most this many groups, and knowledge-centric
    problems embedded only as far as they are needed for them (seeded samples per task, reported under
    ``sampled`` in the coverage); entity grouping is string matching and always sees every problem.
    """
    entity = [p for p in problems if kinds[p.task] == "entity_centric"]
    knowledge = [p for p in problems if kinds[p.task] == "knowledge_centric"]
    groups = group_by_entity(entity, config) if entity else []
    considered, sampled = entity, None
    needed = None if limit is None else limit - len(groups)
    if knowledge and (needed is None or needed > 0):
        if embed is None:
            from synth.embed import default_embedder
            embed = default_embedder().embed
        if needed is None:
            groups += group_by_knowledge(knowledge, embed([p.text for p in knowledge]), config)
            considered = problems
        else:
            found, sample, sampled = _knowledge_groups_for(needed, knowledge, config, embed)
            groups += found
            considered = entity + sample
    if limit is not None:
        groups = groups[:limit]
    coverage = coverage_report(considered, groups, kinds)
    if sampled is not None:
        coverage["sampled"] = sampled
    return groups, coverage
