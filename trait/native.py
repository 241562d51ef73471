"""Compiled text kernels (numba) shared by the selection stages that dominate at scale: decontamination, dedup
signatures and DSIR features; and the classifiers' normaliser (``translate_collapse``).

Those stages split a text into tokens and hash them. In Python that is one string object and one dict or regex
step per token; here a kernel walks the text's UTF-8 bytes once. Character classes come from the very regex
engine the Python reference uses (``char_classes``): a table over every code point, built by running that engine's
``\\w`` and ``\\s`` over all of them, so a kernel's tokens are the reference's by construction, whatever Unicode
version the engine has. Texts are encoded with ``surrogatepass``: a lone surrogate is a three-byte sequence the
kernels decode like any other character.

Kernels are compiled on first use and cached (numba ``cache=True``: beside their module, or in ``~/.cache/numba``
when the code runs from a zip), so a worker pays the compilation once per machine, not once per task. numba keys a
cached kernel on its own module's file only: after changing an inline helper here (``next_char``, ``fmix64``,
``xxh3_64``), touch the modules whose kernels use it, or their caches keep the old code.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import xxhash._xxhash
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

WORD, SPACE = np.uint8(1), np.uint8(2)  # bits of char_classes
_CODE_POINTS = 0x110000


@functools.cache
def char_classes(engine: str = "re") -> np.ndarray:
    """uint8 per code point: WORD where the engine's ``\\w`` matches it, SPACE where its ``\\s`` does. ``engine``:
    ``"re"`` (the standard library) or ``"regex"`` (the ``regex`` package, whose ``\\w`` differs on characters
    such as superscript digits). Built once per process (~0.3 s)."""
    if engine == "re":
        import re as module
    elif engine == "regex":
        import regex as module
    else:
        raise ValueError(f"engine must be 're' or 'regex', got {engine!r}")
    everything = "".join(map(chr, range(_CODE_POINTS)))
    table = np.zeros(_CODE_POINTS, dtype=np.uint8)
    for bit, pattern in ((WORD, r"\w"), (SPACE, r"\s")):
        hits = np.fromiter((m.start() for m in module.finditer(pattern, everything)), dtype=np.int64)
        table[hits] |= bit
    return table


def utf8(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts' UTF-8 bytes (``surrogatepass``) back to back as one uint8 array, and the offsets where each
    starts, with the end as a last entry (int64, len(texts) + 1)."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


@njit(inline="always")
def next_char(buf, i):
    """(code point, index of the next character) of the UTF-8 character starting at ``buf[i]``."""
    b = np.int64(buf[i])
    if b < 0x80:
        return b, i + 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(buf[i + 1]) & 0x3F), i + 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((np.int64(buf[i + 1]) & 0x3F) << 6) | (np.int64(buf[i + 2]) & 0x3F), i + 3
    return (((b & 0x07) << 18) | ((np.int64(buf[i + 1]) & 0x3F) << 12) | ((np.int64(buf[i + 2]) & 0x3F) << 6)
            | (np.int64(buf[i + 3]) & 0x3F)), i + 4


@njit(inline="always")
def fmix64(x):
    """murmur3's 64-bit finaliser (uint64 in, uint64 out)."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


# xxh3-64 (seed 0) from the C library the ``xxhash`` package is built with, callable from a kernel: the very function
# ``xxhash.xxh3_64_intdigest`` runs, so a kernel's hashes are the package's. Declared by symbol name (registered with
# LLVM here, at import), not as a ctypes pointer, so kernels that call it can still be cached.
llvm.add_symbol("XXH3_64bits", ctypes.cast(ctypes.CDLL(xxhash._xxhash.__file__).XXH3_64bits, ctypes.c_void_p).value)
_XXH3_64 = types.ExternalFunction("XXH3_64bits", types.uint64(types.voidptr, types.uintp))


@njit(inline="always")
def xxh3_64(buf, start, stop):
    """xxh3-64 (seed 0) of ``buf[start:stop]`` (a contiguous uint8 array)."""
    return _XXH3_64(buf[start:].ctypes, stop - start)


@intrinsic
def prefetch_row(typingctx, matrix, row):
    """Ask the CPU to start loading ``matrix[row]`` (a C-contiguous 2-D array) into cache; no effect on results.
    A kernel that gathers rows at random issues it some rows ahead of the one it reads."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        address = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1], zero])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(address, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(matrix, types.intp), codegen


@njit(inline="always")
def widest(offsets):
    """The largest ``offsets[k + 1] - offsets[k]`` (0 for fewer than two offsets): the longest text of a batch in
    ``utf8``'s layout, which sizes a kernel's per-text scratch."""
    largest = 0
    for k in range(len(offsets) - 1):
        largest = max(largest, offsets[k + 1] - offsets[k])
    return largest


@njit(cache=True)
def translate_collapse(buf, offsets, rows, replacements, starts, marks):
    """Each UTF-8 text ``buf[offsets[d]:offsets[d + 1]]`` with its characters replaced and its white space collapsed:
    (bytes, offsets from 0, in ``utf8``'s layout; per text, the OR of ``marks`` over its characters). A code point
    ``c < len(rows)`` with ``rows[c] >= 0`` becomes ``replacements[starts[rows[c]]:starts[rows[c] + 1]]``; every
    other character is kept. A space (byte 32), in the text or in a replacement, is written only before a later byte
    that is not one, once, so runs of spaces collapse to one and neither end has one: with white space replaced by a
    space, that is ``" ".join(translated.split())``. ``marks`` (uint8 per code point, all of them) flags the texts
    that hold characters a caller must treat apart."""
    longest = widest(starts)
    # A byte in gives at most a replacement and a space out; room for that is made a text at a time, doubling, so the
    # buffer stays near the output's size (a bound for the whole batch at once, 11x, spent more time in page faults
    # than in the pass when memory was fresh from other work).
    out = np.empty(2 * len(buf) + 16, dtype=np.uint8)
    out_offsets = np.zeros(len(offsets), dtype=np.int64)
    flags = np.zeros(len(offsets) - 1, dtype=np.uint8)
    o = 0
    for d in range(len(offsets) - 1):
        first, pending, i, end, flag = o, False, offsets[d], offsets[d + 1], np.uint8(0)
        need = o + (end - i) * (longest + 1) + 1
        if need > len(out):
            grown = np.empty(max(need, 2 * len(out)), dtype=np.uint8)
            grown[:o] = out[:o]
            out = grown
        while i < end:
            b = buf[i]
            if b == 32:
                pending = o > first
                i += 1
                continue
            if b < 0x80:  # ASCII: one byte, no decoding
                code, after = np.int64(b), i + 1
            else:
                code, after = next_char(buf, i)
            flag |= marks[code]
            row = rows[code] if code < len(rows) else -1
            if row < 0:
                if pending:
                    out[o] = 32
                    o += 1
                    pending = False
                while i < after:
                    out[o] = buf[i]
                    o += 1
                    i += 1
                continue
            for j in range(starts[row], starts[row + 1]):
                if replacements[j] == 32:
                    pending = o > first
                else:
                    if pending:
                        out[o] = 32
                        o += 1
                        pending = False
                    out[o] = replacements[j]
                    o += 1
            i = after
        out_offsets[d + 1] = o
        flags[d] = flag
    return out[:o], out_offsets, flags  # a view, not a copy: the buffer's tail past o is never written
