"""``NgramIndex.match_many`` (batched, prefiltered) flags exactly what a plain per-document lookup flags."""

from __future__ import annotations

import random

import numpy as np
import xxhash

from trait.decontam import NgramIndex, ngram_hashes, words

VOCAB = [f"w{i}" for i in range(300)] + ["Zoë", "naïve", "straße", "x_1", "٣٤"]


def plain_matches(index: NgramIndex, text: str) -> tuple[tuple[str, ...], str | None, int]:
    """The per-document definition: each n-gram's hash looked up with np.isin, masks OR-ed over the hits."""
    hashes = ngram_hashes([text], index.n)
    hit = np.isin(hashes, index.keys)
    if not hit.any():
        return (), None, 0
    mask = 0
    for h in hashes[hit]:
        mask |= int(index.masks[np.searchsorted(index.keys, h)])
    first = int(np.flatnonzero(hit)[0])
    names = tuple(name for bit, name in enumerate(index.names) if mask >> bit & 1)
    return names, " ".join(words(text)[first:first + index.n]), int(hit.sum())


def test_batched_prefiltered_lookup_equals_the_per_document_lookup():
    rng = random.Random(7)
    sources = {name: [" ".join(rng.choices(VOCAB, k=rng.randint(5, 40))) for _ in range(40)]
               for name in ("gsm8k", "math", "mmlu")}
    index = NgramIndex.from_texts(sources, 6)
    planted = [t for texts in sources.values() for t in texts if len(t.split()) >= 6]
    docs = ["", "one", "w1 w2 w3 w4 w5"]
    for _ in range(300):
        parts = [" ".join(rng.choices(VOCAB, k=rng.randint(0, 30)))]
        for _ in range(rng.randint(0, 3)):  # spans of test texts, some cut shorter than n
            text = rng.choice(planted).split()
            start = rng.randrange(len(text))
            parts.append(" ".join(text[start:start + rng.randint(3, 12)]).upper())
            parts.append(" ".join(rng.choices(VOCAB, k=rng.randint(0, 5))))
        docs.append(" , ".join(parts))
    found = index.match_many(docs)
    expected = [plain_matches(index, d) for d in docs]
    assert [(m.benchmarks, m.first_ngram, m.matching_ngrams) for m in found] == expected
    flagged = sum(bool(m.benchmarks) for m in found)
    assert 50 < flagged < len(docs) - 50  # both kinds are well represented
    assert any(len(m.benchmarks) > 1 for m in found)


def test_an_ngram_spanning_two_documents_of_a_batch_is_not_a_match():
    index = NgramIndex.from_texts({"t": ["a b c d e f"]}, 6)
    assert [m.benchmarks for m in index.match_many(["x a b c", "d e f y", "a b c d e f"])] == [(), (), ("t",)]


def test_the_kernel_splits_words_as_the_regex_does():
    """Unigram hashes (n = 1, so each is fmix64 of a word's xxh3-64) of texts mixing scripts, digits, marks, case
    changes that lengthen a text ("İ"), 4-byte characters and lone surrogates: the kernel's words are ``words``'."""
    rng = random.Random(11)
    alphabet = list("aZ_9 \t\n.,-'") + ["İ", "ß", "é", "e\u0301", "٣", "²", "½", "Ⅻ", "中", "😀", "𝔸", "\u200d",
                                          "\xa0", "\u2028", "\ud800", "\udfff", "\x00", "·"]
    texts = ["", " ", "İİ", "x\ud800y"] + ["".join(rng.choices(alphabet, k=rng.randint(1, 60))) for _ in range(400)]
    mask = (1 << 64) - 1
    for text in texts:
        expected = []
        for w in words(text):
            h = xxhash.xxh3_64_intdigest(w.encode("utf-8", "surrogatepass"))
            for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
                h = ((h ^ (h >> 33)) * mult) & mask
            expected.append(h ^ (h >> 33))
        assert ngram_hashes([text], 1).tolist() == expected, repr(text)
    assert len(ngram_hashes(texts, 1)) == sum(len(words(t)) for t in texts)  # a batch: the texts back to back
