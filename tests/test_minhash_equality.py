"""``trait.minhash.signatures`` (batched numpy, shingles hashed through ``zip``/``map``) equals the module doc's
definition computed one shingle and one permutation at a time with Python integers."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest
import xxhash

from trait.minhash import MERSENNE_61, DedupConfig, permutations, signatures, simplified_words

WORDS = ["the", "Proof", "of", "x+1", "Zoë", "naïve", "ﬁne", "ＡＢＣ", "²", "İstanbul", "1,000", "—", "straße", "über"]


def plain_tokens(text: str, normaliser: str) -> list[str]:
    if normaliser == "datatrove":
        return simplified_words(text)
    return re.findall(r"\w+|[^\w\s]", unicodedata.normalize("NFKC", text).lower())  # NFKC on every text


def plain_signature(text: str, config: DedupConfig) -> tuple[list[int] | None, str]:
    toks = plain_tokens(text, config.normaliser)
    normalised = " ".join(toks)
    key = xxhash.xxh3_128_hexdigest((normalised or text).encode("utf-8", "surrogatepass"))
    if not toks:
        return None, key
    k = config.shingle_size
    shingles = [" ".join(toks[i:i + k]) for i in range(max(1, len(toks) - k + 1))]
    xs = [xxhash.xxh3_64_intdigest(s.encode("utf-8", "surrogatepass")) % MERSENNE_61 for s in shingles]
    a, b = permutations(config.permutations, config.seed)
    return [min((int(ai) * x + int(bi)) % MERSENNE_61 for x in xs) for ai, bi in zip(a, b)], key


@pytest.mark.parametrize("normaliser", ["dedup-v1", "datatrove"])
def test_signatures_and_exact_keys_equal_the_plain_definition(normaliser):
    rng = random.Random(3)
    texts = ["", "   ", "?!", "one", "a b c d", "a b c d e", "a b c d e f", "only ascii here, 42 times.",
             "lone \ud800 surrogate and more words here"]
    texts += [" ".join(rng.choices(WORDS, k=rng.randint(1, 60))) for _ in range(60)]
    config = DedupConfig(normaliser=normaliser, bands=4, rows=3, shingle_size=5, seed=11)
    sigs, present, keys = signatures(texts, config)
    for i, text in enumerate(texts):
        expected, key = plain_signature(text, config)
        assert keys[i] == key, text
        assert present[i] == (expected is not None), text
        if expected is not None:
            assert sigs[i].tolist() == expected, text
