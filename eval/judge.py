"""Win rate of generated product titles against a reference system's, judged pairwise by an LLM.

The judge is an OpenAI-compatible endpoint (``trait.serving.server.VllmServer``: a configured URL, or a
local vLLM server started for the run and stopped after it). Each item is judged twice, with the evaluated title
first (as A) and then second (as B), so a judge that prefers a position cancels out. A judgement is one of
win / loss / tie for the evaluated system, or unparsed with a reason (``empty_reply``, ``no_verdict`` when the
reply names none of A, B, tie, ``ambiguous`` when it names more than one, ``request_failed`` when the server
refused or did not answer). wins + losses + ties + unparsed = 2 x items, always.

The item's score is the mean of its parsed judgements (win 1, tie 0.5, loss 0); the win rate is the mean over
items with at least one parsed judgement, and its 95% interval a seeded bootstrap over those items (the two
orders of one item are not independent, so items, not judgements, are resampled).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from eval.metrics import bootstrap_ci
from trait import UserError
from trait.serving.client import ChatRequest, GenerationError, run_chat_many
from trait.serving.server import VllmServer

SYSTEM = "You compare two product titles written for the same product. Reply with one word: A, B or tie."
PROMPT = ("Product description:\n{description}\n\nTitle A: {a}\nTitle B: {b}\n\n"
          "Which is the better title for an ad of this product (accurate, specific, readable)? Reply A, B or tie.")
VERDICT = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)
SAMPLING = {"temperature": 0.0, "max_tokens": 8, "seed": 0}
MAX_DESCRIPTION_CHARS = 600


def parse_verdict(reply: str) -> tuple[str | None, str | None]:
    """``("A" | "B" | "tie", None)`` or ``(None, reason)``: the verdict words the reply names, case-insensitively."""
    if not reply.strip():
        return None, "empty_reply"
    named = {m.upper() if m.lower() != "tie" else "tie" for m in VERDICT.findall(reply)}
    if not named:
        return None, "no_verdict"
    if len(named) > 1:
        return None, "ambiguous"
    return named.pop(), None


def reference_titles(path: str | None, samples: list[dict]) -> dict[str, str]:
    """Reference title per evaluated item (keyed by the offer's true title): the dataset's own titles, or the
    generated titles in another run's ``samples/trait_product_title.jsonl``."""
    if path is None:
        return {s["doc"]["title"]: s["doc"]["title"] for s in samples}
    with open(path, encoding="utf-8") as fh:
        other = {row["doc"]["title"]: row["output"] for row in map(json.loads, fh)}
    missing = [s["doc"]["title"] for s in samples if s["doc"]["title"] not in other]
    if missing:
        raise UserError(f"reference samples {path} lack {len(missing)} of the {len(samples)} evaluated items (e.g. "
                        f"{missing[0]!r}); evaluate the reference system on the same items (same --limit)")
    return other


def judge_titles(server: VllmServer, samples: list[dict], reference: dict[str, str], seed: int = 0,
                 max_concurrency: int = 8) -> dict:
    """Judge each sample's ``output`` against ``reference[doc title]``; returns value, ci, n and every count."""
    requests, slots = [], []
    for i, sample in enumerate(samples):
        doc = sample["doc"]
        ours, theirs = sample["output"], reference[doc["title"]]
        for ours_is_a in (True, False):
            a, b = (ours, theirs) if ours_is_a else (theirs, ours)
            prompt = PROMPT.format(description=doc["description"][:MAX_DESCRIPTION_CHARS], a=a, b=b)
            requests.append(ChatRequest([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                                        {**SAMPLING, "seed": seed}))
            slots.append((i, ours_is_a))
    client = {"base_url": server.base_url, "model": server.model, "api_key": server.api_key,
              "max_concurrency": max_concurrency, "max_retries": 2}
    replies = run_chat_many(client, requests, return_exceptions=True)

    counts, reasons, per_item, judgements = Counter(), Counter(), {}, []
    for (i, ours_is_a), reply in zip(slots, replies):
        if isinstance(reply, GenerationError):
            verdict, reason, text = None, "request_failed", str(reply)[:300]
        elif isinstance(reply, BaseException):
            raise reply
        else:
            text = reply.text
            verdict, reason = parse_verdict(text)
        if verdict is None:
            outcome = "unparsed"
            reasons[reason] += 1
        elif verdict == "tie":
            outcome = "tie"
        else:
            outcome = "win" if (verdict == "A") == ours_is_a else "loss"
        counts[outcome] += 1
        if outcome != "unparsed":
            per_item.setdefault(i, []).append({"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome])
        judgements.append({"item": i, "evaluated_as": "A" if ours_is_a else "B", "reply": text,
                           "outcome": outcome, "reason": reason})
    scores = [sum(v) / len(v) for v in per_item.values()]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    lo, hi = bootstrap_ci(scores, mean, seed=seed) if scores else (float("nan"), float("nan"))
    finite = lambda x: None if x != x else float(x)  # noqa: E731  (NaN -> null in JSON)
    return {"value": finite(mean(scores)), "ci": [finite(lo), finite(hi)], "ci_method": "bootstrap_items",
            "n": len(scores), "items": len(samples), "judgements": len(requests),
            "wins": counts["win"], "losses": counts["loss"], "ties": counts["tie"], "unparsed": counts["unparsed"],
            "unparsed_reasons": dict(reasons), "judge_model": server.model, "details": judgements}

