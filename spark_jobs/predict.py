"""fastText's supervised predict, compiled: P(positive) of each text, bit for bit what fastText's own ``predict``
returns, at 1.5-1.65x its speed (docs/benchmarks.md).

fastText's Python ``predict`` copies each text into a C++ string, reads it a byte at a time through an ``istream``,
looks each token up by string, and returns a label list and a NumPy array per text, which the caller walks in
Python. Here one kernel walks a batch's UTF-8 bytes (``trait.native.utf8``'s layout: the normaliser's output as
it is) and does, per text, what the wheel's C++ (fastText 0.9's ``Dictionary::getLine``, ``Model::predict``,
``SoftmaxLoss``) does, in the same floating-point order, calling the same C library's ``exp`` and ``log``:

- tokens are split at the bytes ``' ' \\t \\v \\f \\r \\0``; the text ends with the end-of-sentence token
  ``</s>`` (the Python ``predict`` appends the newline that produces it), and a literal ``</s>`` token ends it early;
- a token's hash is 32-bit FNV-1a over its bytes read as *signed* chars (fastText's compatibility choice); a word
  in the vocabulary adds its row, one out of it adds none (no character n-grams: ``maxn`` 0), and a token with
  the label prefix that is no word is skipped altogether;
- word n-grams hash the tokens' hashes, widened as int32 to 64 bits, ``h = h * 116049371 + next``, modulo
  ``bucket``;
- the hidden vector is the float32 sum of the rows in fastText's order (words, then n-grams) times the float32 of
  ``1.0 / count``; each label's output a float32 dot product; the softmax takes a double ``exp``; the probability
  returned is ``expf(float(log(p + 1e-5)))``, fastText's log-probability and its binding's ``std::exp``.

The random reads of the n-grams' rows dominate (the matrix is ~30 MB); the kernel lists a text's rows first, then
sums them with each row's load requested a few rows ahead (``trait.native.prefetch_row``).

Only models this reproduces are compiled (``compiled``): supervised, softmax loss, no character n-grams, not
quantized. Any other keeps fastText's own predict. tests/test_predict.py compares every score's bits with
fastText's, on real classifiers and on generated texts full of its tokenizer's corner cases.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
from numba import njit

from trait.native import prefetch_row, utf8, widest

EOS = b"</s>"
_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619
_NGRAM_MULTIPLIER = 116049371
_PREFETCH_ROWS = 8  # how far ahead of the row being added the gather asks for one (measured: 4-16 alike)


@njit(inline="always")
def _is_space(b):
    """fastText's ``readWord`` separators; a newline cannot occur (its ``predict`` refuses one)."""
    return b == 32 or b == 10 or b == 13 or b == 9 or b == 11 or b == 12 or b == 0


@njit(inline="always")
def _fnv1a(buf, start, stop):
    """fastText's ``Dictionary::hash``: FNV-1a 32 over the bytes read as signed chars, sign-extended to 32 bits."""
    h = np.uint64(_FNV_OFFSET)
    for i in range(start, stop):
        b = np.uint64(buf[i])
        if b >= 128:
            b |= np.uint64(0xFFFFFF00)
        h = ((h ^ b) * np.uint64(_FNV_PRIME)) & np.uint64(0xFFFFFFFF)
    return h


@njit(inline="always")
def _sign_extended(h):
    """A token hash as ``addWordNgrams`` reads it: stored as int32, widened to uint64."""
    return h | np.uint64(0xFFFFFFFF00000000) if h >= np.uint64(0x80000000) else h


@njit(cache=True)
def _build_table(words, offsets):
    """An open-addressing table over the vocabulary (a power of two of slots, at most half full); a slot holds
    ``hash << 32 | word id + 1``, or 0 when empty."""
    n = len(offsets) - 1
    size = 1
    while size < 2 * n + 2:
        size *= 2
    slots = np.zeros(size, dtype=np.uint64)
    mask = size - 1
    for w in range(n):
        h = _fnv1a(words, offsets[w], offsets[w + 1])
        slot = np.int64(h) & mask
        while slots[slot] != 0:
            slot = (slot + 1) & mask
        slots[slot] = (h << np.uint64(32)) | np.uint64(w + 1)
    return slots


@njit(inline="always")
def _lookup(buf, start, stop, h, slots, words, offsets):
    """The word id of ``buf[start:stop]`` (hash ``h``), or -1."""
    mask = len(slots) - 1
    slot = np.int64(h) & mask
    while True:
        entry = slots[slot]
        if entry == 0:
            return -1
        if entry >> np.uint64(32) == h:
            w = np.int64(entry & np.uint64(0xFFFFFFFF)) - 1
            if offsets[w + 1] - offsets[w] == stop - start:
                base = offsets[w] - start
                i = start
                while i < stop and words[base + i] == buf[i]:
                    i += 1
                if i == stop:
                    return w
        slot = (slot + 1) & mask


@njit(inline="always")
def _starts_with(buf, start, stop, prefix):
    """Whether ``buf[start:stop]`` starts with the bytes ``prefix``."""
    if stop - start < len(prefix):
        return False
    i = 0
    while i < len(prefix) and buf[start + i] == prefix[i]:
        i += 1
    return i == len(prefix)


@njit(inline="always")
def _probability(input_rows, output_rows, rows, used, positive, hidden, output):
    """fastText's probability of label ``positive`` for the input rows ``rows[:used]``: Model::computeHidden (the
    float32 sum of the rows in that order, times float32(1.0 / count)), SoftmaxLoss::computeOutput (float32 dot
    products, a double exp), then std_log and the binding's std::exp (float32)."""
    dim, labels = input_rows.shape[1], output_rows.shape[0]
    hidden[:] = 0
    for k in range(used):
        if k + _PREFETCH_ROWS < used:
            prefetch_row(input_rows, rows[k + _PREFETCH_ROWS])
        row = input_rows[rows[k]]
        for j in range(dim):
            hidden[j] += row[j]
    scale = np.float32(1.0 / used)
    for j in range(dim):
        hidden[j] *= scale
    for k in range(labels):
        acc = np.float32(0.0)
        for j in range(dim):
            acc += output_rows[k, j] * hidden[j]
        output[k] = acc
    top = output[0]
    for k in range(labels):
        top = top if output[k] < top else output[k]
    z = np.float32(0.0)
    for k in range(labels):
        output[k] = np.float32(math.exp(np.float64(output[k] - top)))
        z += output[k]
    log_p = np.float32(math.log(np.float64(output[positive] / z) + 1e-5))
    return np.float32(math.exp(log_p))


@njit(cache=True)
def _predict(buf, offsets, eos, slots, words, word_offsets, label_prefix, input_rows, output_rows, n_grams, bucket,
             positive):
    """P(label ``positive``) of each text, as fastText's predict returns it (see the module's docstring); 0 for a
    text that yields no input row (fastText returns no label then)."""
    n_texts = len(offsets) - 1
    result = np.zeros(n_texts, dtype=np.float32)
    most_tokens = widest(offsets) // 2 + 2  # a token is at least a byte and a separator; then the end token
    token_hashes = np.empty(most_tokens, dtype=np.uint64)
    rows = np.empty(most_tokens * n_grams, dtype=np.int64)
    hidden = np.empty(input_rows.shape[1], dtype=np.float32)
    output = np.empty(output_rows.shape[0], dtype=np.float32)
    eos_hash = _fnv1a(eos, 0, len(eos))
    eos_id = _lookup(eos, 0, len(eos), eos_hash, slots, words, word_offsets)
    eos_is_word = eos_id >= 0 or not _starts_with(eos, 0, len(eos), label_prefix)
    n_words, modulus = len(word_offsets) - 1, np.uint64(bucket)
    for d in range(n_texts):
        # fastText's readWord and getLine: the words' rows in token order, up to and with a literal end token, if
        # any; else the newline its predict appends, which is the end token
        used = tokens = 0
        i, end = offsets[d], offsets[d + 1]
        ended = False
        while not ended:
            while i < end and _is_space(buf[i]):
                i += 1
            if i == end:
                break
            start = i
            while i < end and not _is_space(buf[i]):
                i += 1
            h = _fnv1a(buf, start, i)
            # its row if a word in the vocabulary, its hash if any word; a label is neither. (Written out here: an
            # inline helper returning both counts ran the whole kernel 1.6x slower.)
            w = _lookup(buf, start, i, h, slots, words, word_offsets)
            if w >= 0 or not _starts_with(buf, start, i, label_prefix):
                if w >= 0:
                    rows[used] = w
                    used += 1
                token_hashes[tokens] = _sign_extended(h)
                tokens += 1
            ended = h == eos_hash and i - start == len(eos) and _starts_with(buf, start, i, eos)
        if not ended and eos_is_word:
            if eos_id >= 0:
                rows[used] = eos_id
                used += 1
            token_hashes[tokens] = _sign_extended(eos_hash)
            tokens += 1
        # then the n-grams' rows (Dictionary::addWordNgrams)
        for a in range(tokens):
            g = token_hashes[a]
            for b in range(a + 1, min(tokens, a + n_grams)):
                g = g * np.uint64(_NGRAM_MULTIPLIER) + token_hashes[b]
                rows[used] = n_words + np.int64(g % modulus)
                used += 1
        if used:
            result[d] = _probability(input_rows, output_rows, rows, used, positive, hidden, output)
    return result


@dataclass(frozen=True)
class CompiledModel:
    """A fastText classifier's vocabulary and matrices, laid out for ``_predict``."""
    slots: np.ndarray
    words: np.ndarray
    word_offsets: np.ndarray
    label_prefix: np.ndarray
    input_rows: np.ndarray
    output_rows: np.ndarray
    n_grams: int
    bucket: int
    positive: int


def predict(models: list[CompiledModel], buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """P(positive) of each text of ``buf`` (``trait.native.utf8``'s layout) by each model, float32 ``(models,
    texts)``, bit for bit fastText's."""
    if np.any(buf == 10):  # fastText's predict refuses a newline
        raise ValueError("predict processes one line at a time (remove '\\n')")
    if buf.flags.writeable:  # one kernel signature: the normaliser's bytes and utf8's alike
        buf = buf.view()
        buf.flags.writeable = False
    eos = np.frombuffer(EOS, dtype=np.uint8)
    # One kernel call per model: two kernels over all the models at once (tuples of arrays) ran slower, where the
    # split they share costs a fifth of a model's pass.
    return np.stack([_predict(buf, offsets, eos, m.slots, m.words, m.word_offsets, m.label_prefix, m.input_rows,
                              m.output_rows, m.n_grams, m.bucket, m.positive) for m in models])


def _compile(model, positive_label: str) -> CompiledModel | None:
    import fasttext

    args = model.f.getArgs()
    labels = list(model.get_labels())
    if (args.model != fasttext.FastText.model_name.supervised or args.loss != fasttext.FastText.loss_name.softmax
            or args.maxn > 0 or model.is_quantized() or (args.wordNgrams > 1 and args.bucket <= 0)
            or positive_label not in labels):
        return None
    words, word_offsets = utf8(model.get_words())
    return CompiledModel(slots=_build_table(words, word_offsets), words=words, word_offsets=word_offsets,
                         label_prefix=np.frombuffer(args.label.encode(), dtype=np.uint8),
                         input_rows=np.ascontiguousarray(model.get_input_matrix(), dtype=np.float32),
                         output_rows=np.ascontiguousarray(model.get_output_matrix(), dtype=np.float32),
                         n_grams=max(1, args.wordNgrams), bucket=max(1, args.bucket),
                         positive=labels.index(positive_label))


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model, positive_label: str) -> CompiledModel | None:
    """``model`` (a loaded ``fasttext`` model) laid out for the compiled predict, once per model object; None where
    that would not reproduce fastText's own predict (another loss or kind of model, character n-grams, a quantized
    model, no ``positive_label``)."""
    per_model = _COMPILED.setdefault(model, {})
    if positive_label not in per_model:
        per_model[positive_label] = _compile(model, positive_label)
    return per_model[positive_label]
