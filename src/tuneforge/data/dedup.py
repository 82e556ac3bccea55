"""Exact and near-duplicate removal, and decontamination against evaluation sets, streaming.

The rule is "first one wins": a row is dropped when an *earlier kept* row has the same normalised
text (exact) or an estimated Jaccard similarity of its shingles >= ``threshold`` (near, MinHash
LSH). Every dropped row is reported with the row it duplicates and the similarity.

Why a custom index rather than ``datasketch.MinHashLSH``? MinHashLSH keeps one Python ``bytes`` key
and set per band per document, about 1-2 KB per document: a million documents need gigabytes.
Here the index is numpy arrays (per band: sorted uint32 keys + uint32 row ids, 8 bytes per band
per kept document) plus a small dict for the chunk in flight, and full signatures (used only to
verify candidates) are appended to a scratch file and read back with ``pread`` for the few
candidate pairs, so the resident memory per document is ~8 bytes x bands. Signatures and band
choice follow datasketch exactly (see ``minhash.py``).

What is compared (``dedup_texts`` / ``decontamination_texts``): deduplication compares a row's
``content_key``; a preference row's is the whole pair, so an exact copy of a pair goes, and its
near-duplicates are looked for only among rows with the same (normalised) prompt, by their replies
(a long shared prompt would otherwise make every pair for it a "near-duplicate" of the first).
Decontamination compares ``prompt_key``: a preference pair whose prompt is a held-out prompt is
contamination whatever its replies.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from tuneforge.data.minhash import band_keys, normalize_for_dedup, optimal_bands, signatures
from tuneforge.data.records import Row, content_key, prompt_key, response_key, row_label
from tuneforge.data.rejects import RejectedRow
from tuneforge.sections import Section


class DedupConfig(Section):
    exact: bool = Field(True, description="Drop rows whose normalised text (case-folded, punctuation and "
                                          "extra whitespace removed) equals an earlier row's.")
    near: bool = Field(True, description="Drop near-duplicates found with MinHash LSH.")
    threshold: float = Field(0.6, gt=0, le=1, description="Near-duplicate when the estimated Jaccard "
                             "similarity of the shingle sets is at least this. 0.6 with 5-byte shingles "
                             "catches a one-word edit of a 10-word sentence (measured: docs/benchmarks.md).")
    shingle_size: int = Field(5, ge=1, le=64, description="Shingle length: bytes for unit=char, words for "
                                                          "unit=word.")
    shingle_unit: Literal["char", "word"] = Field("char", description="char: byte n-grams of the normalised "
                                                  "text (robust to one changed word); word: word n-grams.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length).")
    bands: int | None = Field(None, ge=1, description="LSH bands; null: datasketch's optimum for the threshold, "
                              "weighted 0.2/0.8 towards fewer false negatives.")
    seed: int = Field(1, description="MinHash permutation seed (datasketch's default is 1).")
    chunk_size: int = Field(8192, ge=64, description="Rows hashed per batch (memory vs. speed).")
    same_label_only: bool = Field(True, description="Labelled rows are duplicates only of rows with the same "
                                  "label: 'good' labelled positive and negative is a labelling conflict, not "
                                  "a copy, and dropping one would hide it.")

    @model_validator(mode="after")
    def _check_bands(self) -> "DedupConfig":
        if self.bands is not None and self.num_perm % self.bands:
            raise ValueError(f"dedup.bands ({self.bands}) must divide dedup.num_perm ({self.num_perm})")
        return self

    def band_layout(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.num_perm // self.bands
        # Every LSH candidate is verified on the full signature, so a false-positive candidate only
        # costs one comparison while a false negative is a duplicate left in: favour recall.
        return optimal_bands(self.threshold, self.num_perm, 0.2, 0.8)


class DecontaminateConfig(Section):
    enabled: bool = Field(True, description="Check training rows against validation/test rows.")
    action: Literal["drop", "report"] = Field("drop", description="drop: remove contaminated training rows; "
                                                                  "report: keep them, list them in the report.")
    near: bool = Field(True, description="Also catch near copies (MinHash), not only exact ones.")
    threshold: float = Field(0.6, gt=0, le=1, description="Similarity at which a training row counts as a "
                                                          "copy of an evaluation row.")


#: What a row is compared by: (exact text, near-duplicate text, scope). Near-duplicates are only looked
#: for among rows of the same scope ("" = one scope for all).
Texts = Callable[[Row], tuple[str, str, str]]


def dedup_texts(row: Row) -> tuple[str, str, str]:
    """Deduplication: the whole row; a preference row's replies within its prompt (module docstring)."""
    if row.kind == "preference":
        return content_key(row), response_key(row), prompt_key(row)
    key = content_key(row)
    return key, key, ""


def decontamination_texts(row: Row) -> tuple[str, str, str]:
    """Decontamination: a preference row's prompt (``prompt_key``), any other row's ``content_key``."""
    key = prompt_key(row)
    return key, key, ""


@dataclass(frozen=True)
class Duplicate:
    """A row that was dropped (or flagged) because it copies ``of`` (an origin "file:line")."""

    row: Row
    of: str
    kind: Literal["exact", "near"]
    similarity: float
    against: str = "train"  # "train" for dedup; the eval split name for decontamination

    def as_dict(self) -> dict:
        return {"row": self.row.origin, "duplicate_of": self.of, "kind": self.kind,
                "similarity": round(self.similarity, 4), "against": self.against}

    def rejected(self) -> RejectedRow:
        where = "" if self.against == "train" else f" ({self.against} set)"
        reason = (f"exact duplicate of {self.of}{where}" if self.kind == "exact"
                  else f"near-duplicate of {self.of}{where} (similarity {self.similarity:.2f})")
        return RejectedRow(file=self.row.source, line=self.row.line, reason=reason, raw=content_key(self.row))


def _exact_hash(normalised: str) -> int:
    # 64 bits: with a million rows a chance collision (a false "exact duplicate") is ~1 in 10^7.
    return int.from_bytes(hashlib.blake2b(normalised.encode("utf-8"), digest_size=8).digest(), "little")


class _Segments:
    """Frozen, sorted (key -> row id) arrays for ``width`` key columns, merged LSM-style."""

    MAX_SEGMENTS = 6

    def __init__(self, width: int):
        self.width = width
        self.parts: list[list[tuple[np.ndarray, np.ndarray]]] = []

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = ids.astype(np.uint32)
        self.parts.append([self._sorted(keys[:, c], ids) for c in range(self.width)])
        if len(self.parts) > self.MAX_SEGMENTS:
            # Merge one column at a time and drop the old column at once, so a merge never holds
            # two copies of the whole index (peak memory is what the 1M-row benchmark measures).
            merged = self.parts[0]
            for c in range(self.width):
                k = np.concatenate([p[c][0] for p in self.parts])
                i = np.concatenate([p[c][1] for p in self.parts])
                for p in self.parts:
                    p[c] = None
                merged[c] = self._sorted(k, i)
                del k, i
            self.parts = [merged]

    @staticmethod
    def _sorted(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Stable sort: among equal keys the earliest row comes first and is the one found.
        order = np.argsort(keys, kind="stable")
        return np.ascontiguousarray(keys[order]), np.ascontiguousarray(ids[order])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """``[n, width]`` earliest matching row id per key (or -1), over every segment."""
        found = np.full(keys.shape, -1, dtype=np.int64)
        for part in self.parts:  # oldest first: the earliest row wins
            for c, (sk, si) in enumerate(part):
                pos = np.searchsorted(sk, keys[:, c])
                pos[pos == len(sk)] = 0
                hit = (sk[pos] == keys[:, c]) & (found[:, c] < 0)
                found[hit, c] = si[pos[hit]]
        return found


class _SignatureStore:
    """Append-only on-disk signatures; rows are read back one at a time with ``pread``.

    Reading with ``pread`` instead of ``np.memmap`` matters: mapped pages count in the process's
    resident memory, ``pread`` goes through the page cache, which does not.
    """

    def __init__(self, num_perm: int, workdir: Path | None):
        self.row_bytes = num_perm * 4
        self.num_perm = num_perm
        fd, self.path = tempfile.mkstemp(prefix="tuneforge-minhash-", suffix=".u32", dir=workdir)
        self.fd = fd
        self.count = 0

    def append(self, sigs: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(sigs).tobytes(), self.count * self.row_bytes)
        self.count += len(sigs)

    def get(self, row_id: int) -> np.ndarray:
        return np.frombuffer(os.pread(self.fd, self.row_bytes, row_id * self.row_bytes), dtype=np.uint32)

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


class DuplicateIndex:
    """Streaming index of kept rows: exact hashes and MinHash band keys, with provenance.

    ``filter(rows)`` yields each row or a ``Duplicate``; kept rows are added to the index (unless
    ``add=False``, used to *query* an index of evaluation rows without growing it).
    """

    def __init__(self, cfg: DedupConfig, *, threshold: float | None = None, workdir: Path | None = None,
                 by_label: bool | None = None, texts: Texts = dedup_texts):
        self.cfg = cfg
        self.texts = texts
        self.by_label = cfg.same_label_only if by_label is None else by_label
        self.threshold = cfg.threshold if threshold is None else threshold
        self.bands, self.rows_per_band = cfg.band_layout()
        self._exact = _Segments(1)
        self._bands = _Segments(self.bands)
        self._store = _SignatureStore(cfg.num_perm, workdir) if cfg.near else None
        self._sources: dict[str, int] = {}
        self._source_names: list[str] = []
        self._row_source = array("i")
        self._row_line = array("q")
        self._tags: list[str] = ["train"]  # tag names; rows store an index (eval split for decontamination)
        self._row_tag = array("b")
        self.checked = 0

    # ----------------------------------------------------------------------------- provenance

    def _register(self, row: Row, tag: str) -> int:
        src = self._sources.get(row.source)
        if src is None:
            src = self._sources[row.source] = len(self._source_names)
            self._source_names.append(row.source)
        if tag not in self._tags:
            self._tags.append(tag)
        self._row_source.append(src)
        self._row_line.append(row.line)
        self._row_tag.append(self._tags.index(tag))
        return len(self._row_line) - 1

    def origin(self, row_id: int) -> str:
        return f"{self._source_names[self._row_source[row_id]]}:{self._row_line[row_id]}"

    def tag(self, row_id: int) -> str:
        return self._tags[self._row_tag[row_id]]

    # ------------------------------------------------------------------------------- hashing

    def _keys(self, rows: Sequence[Row]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Exact hashes ``[n, 1]``, band keys ``[n, bands]`` and signatures ``[n, num_perm]``."""
        compared = [self.texts(r) for r in rows]
        texts = [normalize_for_dedup(exact) for exact, _, _ in compared]
        near_texts = [t if near == exact else normalize_for_dedup(near) for t, (exact, near, _) in zip(texts, compared)]
        exact = bands = sigs = None
        # Mixing a hash of the label into every key makes rows with different labels never meet
        # in the index, so they are never compared (see DedupConfig.same_label_only).
        salt = None
        if self.by_label:
            # (a text row's class, an unpaired preference row's boolean)
            salt = np.fromiter((_exact_hash(repr(row_label(r))) if r.kind == "text" or row_label(r) is not None
                                else 0 for r in rows), dtype=np.uint64, count=len(rows))
        if self.cfg.exact:
            exact = np.fromiter((_exact_hash(t) for t in texts), dtype=np.uint64, count=len(texts))[:, None]
            if salt is not None:
                exact ^= salt[:, None]
        if self.cfg.near:
            sigs = signatures(near_texts, self.cfg.num_perm, self.cfg.seed, size=self.cfg.shingle_size,
                              unit=self.cfg.shingle_unit)
            keys = band_keys(sigs, self.bands, self.rows_per_band)
            if salt is not None:
                keys ^= salt[:, None]
            if any(scope for _, _, scope in compared):
                # Near-duplicates only within a scope (a preference prompt): the scope's hash in every band
                # key keeps rows of different scopes from ever being candidates.
                scopes = np.fromiter((_exact_hash(normalize_for_dedup(scope)) if scope else 0
                                      for _, _, scope in compared), dtype=np.uint64, count=len(rows))
                keys ^= scopes[:, None]
            # 32-bit band keys halve the index; a chance key collision only adds a candidate, which
            # the full-signature check then rejects.
            bands = (keys >> np.uint64(32)).astype(np.uint32)
        return exact, bands, sigs

    def _similarity(self, sig: np.ndarray, row_id: int, chunk_sigs: np.ndarray | None, chunk_base: int) -> float:
        if chunk_sigs is not None and row_id >= chunk_base:
            other = chunk_sigs[row_id - chunk_base]
        else:
            other = self._store.get(row_id)
        return float(np.count_nonzero(sig == other)) / len(sig)

    # ------------------------------------------------------------------------------ streaming

    def filter(self, rows: Iterable[Row], *, add: bool = True, tag: str = "train") -> Iterator[Row | Duplicate]:
        """Yield every input row, or a ``Duplicate`` in its place; order is preserved."""
        for chunk in _chunks(rows, self.cfg.chunk_size):
            yield from self._process(chunk, add, tag)

    def add(self, rows: Iterable[Row], tag: str = "train") -> None:
        """Index ``rows`` unconditionally (e.g. evaluation rows), without dropping any."""
        for chunk in _chunks(rows, self.cfg.chunk_size):
            exact, bands, sigs = self._keys(chunk)
            ids = np.array([self._register(r, tag) for r in chunk], dtype=np.int64)
            if exact is not None:
                self._exact.add(exact, ids)
            if bands is not None:
                self._store.append(sigs)
                self._bands.add(bands, ids)

    def _process(self, chunk: list[Row], add: bool, tag: str) -> Iterator[Row | Duplicate]:
        exact, bands, sigs = self._keys(chunk)
        self.checked += len(chunk)
        # Matches among earlier chunks (frozen, sorted arrays), then a dict for this chunk.
        exact_hits = self._exact.lookup(exact) if exact is not None else None
        band_hits = self._bands.lookup(bands) if bands is not None else None
        exact_local: dict[int, int] = {}
        band_local: list[dict[int, int]] = [{} for _ in range(self.bands if bands is not None else 0)]
        base = len(self._row_line)
        kept: list[int] = []
        out: list[Row | Duplicate] = []
        for i, row in enumerate(chunk):
            row_id = base + i
            dup = None
            if exact is not None:
                key = int(exact[i, 0])
                match = int(exact_hits[i, 0])
                if match < 0 and add:
                    match = exact_local.get(key, -1)
                if match >= 0:
                    dup = Duplicate(row, self.origin(match), "exact", 1.0, self.tag(match))
                elif add:
                    exact_local[key] = row_id
            if dup is None and bands is not None:
                dup = self._near_match(row, i, sigs, bands, band_hits, band_local if add else None, base)
            if add:
                # Every row gets an id, dropped ones too, so ids line up with the signature store
                # and an exact copy of a dropped row can still name it.
                self._register(row, tag)
            out.append(row if dup is None else dup)
            if dup is None and add:
                kept.append(i)
                for c, table in enumerate(band_local):
                    table.setdefault(int(bands[i, c]), row_id)
        if add:
            ids = np.arange(base, base + len(chunk), dtype=np.int64)
            if exact is not None:
                self._exact.add(exact, ids)  # all rows: exact copies of dropped rows name them
            if bands is not None:
                self._store.append(sigs)
                self._bands.add(bands[kept], ids[kept])  # kept rows only: "first one wins"
        yield from out

    def _near_match(self, row: Row, i: int, sigs: np.ndarray, bands: np.ndarray, band_hits: np.ndarray,
                    band_local: list[dict[int, int]] | None, base: int) -> Duplicate | None:
        """The most similar earlier kept row among the LSH candidates, if it passes the threshold."""
        best, best_sim = -1, 0.0
        seen: set[int] = set()
        for c in range(bands.shape[1]):
            local = band_local[c].get(int(bands[i, c]), -1) if band_local is not None else -1
            for cand in (local, int(band_hits[i, c])):
                if cand >= 0 and cand not in seen:
                    seen.add(cand)
                    sim = self._similarity(sigs[i], cand, sigs, base)
                    if sim > best_sim:
                        best, best_sim = cand, sim
        if best >= 0 and best_sim >= self.threshold:
            return Duplicate(row, self.origin(best), "near", best_sim, self.tag(best))
        return None
    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "DuplicateIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def deduplicate(rows: Iterable[Row], cfg: DedupConfig, *, workdir: Path | None = None) -> Iterator[Row | Duplicate]:
    """Stream ``rows``, replacing each exact/near duplicate of an earlier kept row by a ``Duplicate``."""
    if not (cfg.exact or cfg.near):
        yield from rows
        return
    with DuplicateIndex(cfg, workdir=workdir) as index:
        yield from index.filter(rows)


def decontaminate(rows: Iterable[Row], eval_sets: dict[str, Sequence[Row]], cfg: DecontaminateConfig,
                  dedup: DedupConfig | None = None, *, workdir: Path | None = None) -> Iterator[Row | Duplicate]:
    """Stream training ``rows``, replacing each exact/near copy of an evaluation row by a ``Duplicate``.

    ``eval_sets`` maps a split name ("validation", "test") to its rows; the index holds only those,
    so training rows are compared with evaluation rows, never with each other. Rows are compared by
    ``prompt_key``: a preference row by its prompt. With ``action: report`` the caller keeps the rows
    and only lists the hits.
    """
    if not cfg.enabled or not any(eval_sets.values()):
        yield from rows
        return
    base = dedup or DedupConfig()
    index_cfg = base.model_copy(update={"exact": True, "near": cfg.near, "threshold": cfg.threshold,
                                        "bands": None if base.threshold != cfg.threshold else base.bands})
    # by_label=False: a dev sentence copied into training is contamination whatever its label.
    with DuplicateIndex(index_cfg, workdir=workdir, by_label=False, texts=decontamination_texts) as index:
        for name, eval_rows in eval_sets.items():
            index.add(eval_rows, tag=name)
        yield from index.filter(rows, add=False)
