"""Batch construction: length-grouped, seeded, resumable, and shardable across processes.

Why our own sampler rather than a DataLoader sampler plus Accelerate's sharding: resuming "with the
same data order" needs the order to be a pure function of (seed, epoch), and the same recipe under
``accelerate launch`` must see the same *global* batches. Both fall out of computing the epoch's
global batches here and giving each process a slice of every batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool = True,
    mega_batch_factor: int = 50,
) -> list[list[int]]:
    """One epoch's global batches of example indices.

    Indices are shuffled; with ``group_by_length`` each window of ``batch_size * mega_batch_factor``
    examples is sorted by length before being cut into batches, so padding is small while batches
    stay random. Batch order is then shuffled, except that the batch holding the longest example goes
    first: an out-of-memory batch fails in the first second, not an hour in.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    lengths_arr = np.asarray(lengths)
    window = batch_size * mega_batch_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        # stable sort keeps the random order among equal lengths
        chunk = chunk[np.argsort(-lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    longest = max(range(len(batches)), key=lambda b: max(lengths_arr[batches[b]]))
    rest = [batches[i] for i in rng.permutation(len(batches)) if i != longest]
    return [batches[longest], *rest]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic evaluation batches, longest first; callers restore the original order by index."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's part of a global batch (strided, so every shard gets similar lengths)."""
    return batch[rank::world_size]


@dataclass(frozen=True)
class Encoded:
    """Tokenised examples: ragged input ids plus labels; padding happens per batch."""

    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def collate(encoded: Encoded, indices: list[int], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Pad a batch to its own longest sequence (dynamic padding) and return torch tensors."""
    import torch

    seqs = [encoded.input_ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([encoded.labels[i] for i in indices], dtype=torch.long),
    }
