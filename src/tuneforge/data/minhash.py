"""MinHash signatures for many documents at once, bit-identical to ``datasketch.MinHash``.

Why not call ``datasketch.MinHash`` per document? It builds one object per document, hashes each
shingle with SHA-1 in a Python call and runs one numpy reduction per document; on a 2-core machine
that manages a few thousand short documents a second. Here the shingles of a whole batch are
hashed with numpy and reduced in one operation. datasketch stays the definition: the permutation
parameters come from ``datasketch.MinHash(num_perm, seed)``, its "affine32" scheme (MurmurHash3
finaliser, then ``a*h + b mod 2**32``) is reproduced exactly, and a test asserts that our
signatures equal ``MinHash(hashfunc=shingle_hash).update_batch(...)`` on real sentences, so
signatures stay comparable with any datasketch index a user builds with the same hash.

Banding (``optimal_bands``) also uses datasketch's own false-positive/false-negative optimiser.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# Punctuation and symbols become spaces so "Great movie!" and "great movie ." normalise alike.
_NON_WORD = re.compile(r"[^\w\s]|_")
_U32 = np.uint32


def normalize_for_dedup(text: str) -> str:
    """Case-fold, drop punctuation, fold whitespace: the text exact and near dedup compare."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


_P = np.uint64(0x100000001B3)  # FNV-64 prime: the multiplier of the polynomial shingle hash
_MASK32 = np.uint64(0xFFFFFFFF)


def _splitmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def shingle_hash(data: bytes) -> int:
    """32-bit hash of one shingle: polynomial over its bytes, then the splitmix64 finaliser.

    This is the ``hashfunc`` our signatures use; it is what ``signatures`` computes for every
    shingle at once with numpy, and what a datasketch ``MinHash(hashfunc=shingle_hash)`` computes
    one call at a time (a test checks the two agree). datasketch's default SHA-1 hash costs about
    a microsecond per shingle in Python, which alone caps a 2-core machine far below the
    throughput data cleaning needs; MinHash only needs a well-mixed hash, not a cryptographic one.
    """
    with np.errstate(over="ignore"):
        h = np.uint64(0)
        for byte in data:
            h = h * _P + np.uint64(byte)
        return int(_splitmix64(np.array([h], dtype=np.uint64))[0] & _MASK32)


def shingles(text: str, size: int, unit: str = "char") -> list[bytes]:
    """The n-grams of an already normalised ``text``: UTF-8 byte n-grams or word n-grams.

    ``char`` shingles are byte n-grams of the UTF-8 text (the same as character n-grams for ASCII;
    for other scripts a shingle covers fewer characters, so pick a larger size). A text shorter
    than one shingle is its own single shingle, so short rows still get a signature.
    Only used for reference and for ``unit="word"``; ``signatures`` hashes char shingles in bulk.
    """
    if unit == "word":
        words = text.split(" ")
        return [" ".join(words[i : i + size]).encode("utf-8") for i in range(max(1, len(words) - size + 1))]
    data = text.encode("utf-8")
    return [data[i : i + size] for i in range(max(1, len(data) - size + 1))]


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` for ``num_perm`` and ``seed``."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.asarray(a, dtype=_U32), np.asarray(b, dtype=_U32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch's affine32 pre-mix), vectorised."""
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _char_shingle_hashes(texts: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every byte ``size``-gram of every text, and the number per text, in one pass."""
    encoded = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    starts = np.zeros(len(encoded), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    n_pos = max(len(buf) - size + 1, 0)
    with np.errstate(over="ignore"):
        h = np.zeros(n_pos, dtype=np.uint64)
        for j in range(size):
            h = h * _P + buf[j : j + n_pos]
        h = _splitmix64(h) & _MASK32
    # A position is a shingle of text d when the whole n-gram lies inside d.
    counts = np.maximum(lengths - size + 1, 0)
    doc_of = np.repeat(np.arange(len(encoded)), counts)
    first = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    positions = np.arange(len(doc_of), dtype=np.int64) + first
    hashes = h[positions] if len(positions) else np.empty(0, dtype=np.uint64)
    short = np.flatnonzero(counts == 0)
    if len(short):  # texts shorter than one shingle: the whole text is the shingle
        extra = np.array([shingle_hash(encoded[i]) for i in short], dtype=np.uint64)
        hashes = np.concatenate([hashes, extra])
        doc_of = np.concatenate([doc_of, short])
        order = np.argsort(doc_of, kind="stable")
        hashes = hashes[order]
        counts = counts.copy()
        counts[short] = 1
    return hashes.astype(_U32), counts


def signatures(texts: Sequence[str], num_perm: int = 128, seed: int = 1, *, size: int = 5,
               unit: str = "char") -> np.ndarray:
    """``[len(texts), num_perm]`` uint32 MinHash signatures of normalised ``texts``.

    Equal to ``datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)`` updated with
    ``shingles(text, size, unit)``, computed for all texts at once.
    """
    a, b = permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=_U32)
    # Sub-batches keep the [shingles x num_perm] temporary a few MB, i.e. in cache: one big
    # matrix for a whole chunk is several times slower (memory bound) and costs RSS.
    step = 128
    for lo in range(0, len(texts), step):
        part = texts[lo : lo + step]
        if unit == "char":
            hv, counts = _char_shingle_hashes(part, size)
        else:
            sets = [shingles(t, size, unit) for t in part]
            counts = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
            hv = np.fromiter((shingle_hash(g) for s in sets for g in s), dtype=_U32, count=int(counts.sum()))
        hv = _fmix32(hv)
        offsets = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        # [num_perm x shingles] layout: each permutation's values are contiguous, so both the
        # affine map and the per-document min (reduceat along axis 1) stream through memory;
        # the [shingles x num_perm] layout measured ~15x slower in reduceat.
        with np.errstate(over="ignore"):
            phv = a[:, None] * hv[None, :]
            phv += b[:, None]
        out[lo : lo + len(part)] = np.minimum.reduceat(phv, offsets, axis=1).T
    return out


def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                  false_negative_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` minimising datasketch's weighted false-positive/negative probability."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, false_positive_weight, false_negative_weight)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[n_docs, bands]`` uint64 keys: one 64-bit hash per band of ``rows`` signature values.

    Two documents share a band key when (up to a 2**-64 collision) that band is identical, which
    is the LSH candidate rule; candidates are verified on the full signature afterwards anyway.
    """
    n = sigs.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    rng = np.random.default_rng(0x7E57)
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
            h = (block * mult[None, :]).sum(axis=1, dtype=np.uint64) + np.uint64(band)
            # splitmix64 finaliser so keys are well spread for sorting/searching
            h ^= h >> np.uint64(30)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
            keys[:, band] = h
    return keys
