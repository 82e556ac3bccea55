"""Sequence packing: put several short causal-LM examples into one ``max_length`` sequence.

Chat and instruction data is mostly short; padding every example to the batch's longest wastes most
of each batch on pad tokens. Packing concatenates examples (documents) into sequences of at most
``max_length`` tokens instead. Three things keep packed training equivalent to unpacked training:

* ``position_ids`` restart at 0 for every document, so each is positioned as if alone;
* ``seq_lens`` (and ``cu_seqlens``) record the document boundaries, so a varlen/flash attention
  kernel, or transformers' position_ids-based packed attention, keeps documents from attending to
  each other;
* each document's first label is -100: a causal LM predicts ``labels[t]`` from the logits at
  ``t - 1``, which for a document's first token belong to the *previous* document.

A document is never split across sequences unless it is longer than ``max_length`` on its own; such a
document is cut into ``max_length`` pieces, each packed as a document of its own.

Strategies: ``ffd`` (first-fit decreasing: longest first, each into the first sequence with room;
near-optimal fill) and ``greedy`` (input order, a new sequence when the next one does not fit; keeps
neighbouring examples together, fills less).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tuneforge.data.formatting import IGNORE_INDEX, FormattedExample


@dataclass(frozen=True)
class PackedSequence:
    """Documents concatenated into one training sequence (not padded: batching pads)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    #: Length of each document, in order; they sum to ``len(input_ids)``.
    seq_lens: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def cu_seqlens(self) -> list[int]:
        """Cumulative document boundaries ``[0, l0, l0+l1, ..., len]`` (flash-attention varlen form)."""
        out = [0]
        for n in self.seq_lens:
            out.append(out[-1] + n)
        return out

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "input_ids": list(self.input_ids),
            "labels": list(self.labels),
            "position_ids": list(self.position_ids),
            "seq_lens": list(self.seq_lens),
        }


@dataclass(frozen=True)
class PackingStats:
    documents: int  # after splitting over-long examples
    split_documents: int  # input examples longer than max_length, cut into pieces
    sequences: int
    tokens: int
    max_length: int

    @property
    def efficiency(self) -> float:
        """Share of the ``sequences x max_length`` token slots that hold real tokens (1.0 = no padding)."""
        return self.tokens / (self.sequences * self.max_length) if self.sequences else 0.0


Doc = tuple[list[int], list[int]]


def _as_doc(example: FormattedExample | Mapping[str, Any]) -> Doc:
    if isinstance(example, FormattedExample):
        return list(example.input_ids), list(example.labels)
    ids = list(example["input_ids"])
    labels = example.get("labels")
    labels = list(ids) if labels is None else list(labels)
    if len(labels) != len(ids):
        raise ValueError(f"an example has {len(ids)} input_ids but {len(labels)} labels")
    return ids, labels


def _pieces(docs: Iterable[Doc], max_length: int) -> tuple[list[Doc], int]:
    """Documents no longer than ``max_length``, cutting the longer ones; and how many were cut."""
    out: list[Doc] = []
    split = 0
    for ids, labels in docs:
        if not ids:
            continue
        if len(ids) <= max_length:
            out.append((ids, labels))
            continue
        split += 1
        for start in range(0, len(ids), max_length):
            out.append((ids[start : start + max_length], labels[start : start + max_length]))
    return out, split


class _FirstFit:
    """Leftmost bin with at least ``n`` free slots, in O(log bins): a max segment tree of free space.

    Every leaf starts empty (``max_length`` free), so the leftmost never-used leaf is exactly "open
    a new sequence", and first-fit needs no separate list of open bins.
    """

    def __init__(self, n_bins: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(n_bins, 1):
            self.size *= 2
        self.free = [capacity] * (2 * self.size)

    def take(self, n: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.free[2 * node] >= n else 2 * node + 1
        leaf = node - self.size
        self.free[node] -= n
        node //= 2
        while node:
            self.free[node] = max(self.free[2 * node], self.free[2 * node + 1])
            node //= 2
        return leaf


def _assign(lengths: Sequence[int], max_length: int, strategy: str) -> list[list[int]]:
    """Document indices per sequence."""
    bins: list[list[int]] = []
    if strategy == "greedy":
        used = max_length
        for i, n in enumerate(lengths):
            if used + n > max_length:
                bins.append([])
                used = 0
            bins[-1].append(i)
            used += n
        return bins
    if strategy == "ffd":
        tree = _FirstFit(len(lengths), max_length)
        # Stable sort: equal lengths keep input order, so the result is deterministic.
        for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
            b = tree.take(lengths[i])
            if b == len(bins):
                bins.append([])
            bins[b].append(i)
        return bins
    raise ValueError(f"unknown packing strategy {strategy!r} (allowed: ffd, greedy)")


def _concat(docs: Sequence[Doc]) -> PackedSequence:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for doc_ids, doc_labels in docs:
        ids.extend(doc_ids)
        labels.append(IGNORE_INDEX)  # no loss across the boundary (see the module docstring)
        labels.extend(doc_labels[1:])
        positions.extend(range(len(doc_ids)))
    return PackedSequence(ids, labels, positions, [len(d[0]) for d in docs])


def pack_examples(
    examples: Iterable[FormattedExample | Mapping[str, Any]],
    max_length: int,
    *,
    strategy: Literal["greedy", "ffd"] = "ffd",
) -> list[PackedSequence]:
    """Pack examples (``FormattedExample`` or dicts with ``input_ids`` and optional ``labels``) into sequences.

    Every token of the input appears exactly once in the output; empty examples are skipped.
    """
    return pack_with_stats(examples, max_length, strategy=strategy)[0]


def pack_with_stats(
    examples: Iterable[FormattedExample | Mapping[str, Any]],
    max_length: int,
    *,
    strategy: Literal["greedy", "ffd"] = "ffd",
) -> tuple[list[PackedSequence], PackingStats]:
    """``pack_examples`` plus the counts and efficiency to report."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    docs, split = _pieces((_as_doc(e) for e in examples), max_length)
    bins = _assign([len(d[0]) for d in docs], max_length, strategy)
    packed = [_concat([docs[i] for i in b]) for b in bins]
    stats = PackingStats(
        documents=len(docs), split_documents=split, sequences=len(packed),
        tokens=sum(len(p) for p in packed), max_length=max_length,
    )
    return packed, stats


def stream_blocks(docs: Iterable[Sequence[int]], block_length: int, *, overlap: int = 1,
                  min_length: int = 2) -> list[list[int]]:
    """Pretraining blocks: every document's ids concatenated into one stream, cut into ``block_length``
    pieces that overlap by ``overlap`` tokens (no padding, documents run across block edges).

    A causal LM predicts token t from the tokens before it, so a block's first token is never a
    target; an overlap of 1 makes every stream token after the first a target exactly once, with
    ``block_length - 1`` tokens of context at most (nanoGPT's ``block_size``). Masked LM uses
    ``overlap=0``. The last, shorter block is kept if it has ``min_length`` tokens.
    """
    if not 0 <= overlap < block_length:
        raise ValueError(f"need 0 <= overlap < block_length, got overlap {overlap}, block_length {block_length}")
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
    step = block_length - overlap
    blocks = []
    for start in range(0, max(len(stream) - overlap, 0), step):
        piece = stream[start:start + block_length]
        if len(piece) >= min_length:
            blocks.append(piece)
    return blocks


def packed_to_columns(packed: Iterable[PackedSequence]) -> dict[str, list]:
    """Column dict for ``datasets.Dataset.from_dict`` / the token cache."""
    cols: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
    for seq in packed:
        for name, values in seq.to_dict().items():
            cols[name].append(values)
    return cols
