"""Batch construction: length-grouped, seeded, resumable, and shardable across processes.

Why our own sampler rather than a DataLoader sampler plus Accelerate's sharding: resuming "with the
same data order" needs the order to be a pure function of (seed, epoch), and the same recipe under
``accelerate launch`` must see the same *global* batches. Both fall out of computing the epoch's
global batches here and giving each process a slice of every batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


#: How ``Encoded.labels`` are shaped, which decides padding, the loss and the per-example loss weight:
#: ``class`` an int per example; ``value`` a float (regression); ``multi`` a multi-hot float list
#: (multi-label); ``tokens`` an int per input token, -100 = ignored (NER); ``causal`` like tokens but
#: the model predicts token t+1 at position t (causal LM); ``target`` a decoder target sequence of its
#: own length (seq2seq); ``span`` a (start, end) token pair (extractive QA).
#: ``mlm`` masked LM: ``labels`` unused (the original ids are the targets), ``Encoded.masking`` picks
#: the predicted positions when a batch is built (``tuneforge.data.masking``).
#: Preference kinds (``Encoded.objective`` computes their loss, see ``tuneforge.tasks.preference``):
#: ``pair`` ``input_ids``/``labels`` are the chosen sequence (prompt + reply, -100 on the prompt),
#: ``meta["rejected_ids"]``/``meta["rejected_labels"]`` the rejected one; a batch holds the chosen rows
#: then the rejected rows, so both go through one forward pass. ``unpaired`` one reply per example with
#: ``meta["desirable"]`` (KTO). ``prompt`` a prompt only (GRPO: the replies are generated in the step).
#: Optional ``meta["ref_chosen"]`` (and for pairs ``meta["ref_rejected"]``) hold the reference model's
#: log-probs of the replies, computed once before training (full fine-tuning has no adapter to switch off).
LABEL_KINDS = ("class", "value", "multi", "tokens", "causal", "target", "span", "mlm", "pair", "unpaired", "prompt")
IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Tokenised examples: ragged input ids, labels of one ``label_kind``, optional extra model
    inputs (``extra``: per-example token-aligned lists such as ``token_type_ids``, padded with 0);
    padding happens per batch."""

    input_ids: list[list[int]]
    labels: list
    label_kind: str = "class"
    extra: dict[str, list] = field(default_factory=dict)
    #: Per-example data that is not a model input (e.g. NER word ids, to map predictions back to words).
    meta: dict[str, list] = field(default_factory=dict)
    #: label kind ``mlm``: how inputs are masked (a ``tuneforge.data.masking.MaskingSpec``).
    masking: object = None
    #: preference kinds: the loss, computed from the model and a batch (``objective.loss_sum``).
    objective: object = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        """Tokens per example; a preference pair counts both of its sequences."""
        if self.label_kind == "pair":
            return [len(c) + len(r) for c, r in zip(self.input_ids, self.meta["rejected_ids"])]
        return [len(ids) for ids in self.input_ids]

    @property
    def weights(self) -> list[int]:
        """What each example adds to the loss's denominator: 1 for example-level labels, the number of
        trained tokens for token-level ones. An optimizer step divides its summed loss by the step's
        total, so a long answer and a short one weigh per token, as in one big batch."""
        if self.label_kind == "tokens" or self.label_kind == "target":
            return [sum(1 for t in labels if t != IGNORE) for labels in self.labels]
        if self.label_kind == "causal":  # position 0 predicts nothing: its label is never used
            return [sum(1 for t in labels[1:] if t != IGNORE) for labels in self.labels]
        if self.label_kind == "mlm":
            return [self.masking.targets(ids) for ids in self.input_ids]
        return [1] * len(self.labels)  # preference kinds: a pair, an unpaired reply or a prompt weighs 1


def collate(encoded: Encoded, indices: list[int], pad_id: int, pad_to_multiple_of: int | None = None,
            epoch: int | None = None) -> dict:
    """Pad a batch to its own longest sequence (dynamic padding) and return torch tensors.

    ``epoch`` only matters for masked LM: training passes it so every epoch masks afresh; evaluation
    leaves it None for the one fixed validation masking."""
    import torch

    if encoded.label_kind in ("pair", "unpaired", "prompt"):
        return _collate_preference(encoded, indices, pad_id)
    seqs = [encoded.input_ids[i] for i in indices]
    if encoded.label_kind == "mlm":
        from tuneforge.data.masking import mask_tokens

        masked = [mask_tokens(seqs[k], encoded.masking, i, epoch) for k, i in enumerate(indices)]
        seqs = [inputs for inputs, _ in masked]
    width = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = {"input_ids": _pad(seqs, width, pad_id), "attention_mask": _pad([[1] * len(s) for s in seqs], width, 0)}
    for name, values in encoded.extra.items():
        out[name] = _pad([values[i] for i in indices], width, 0)
    if encoded.label_kind == "causal" and "position_ids" in encoded.extra:
        # Packed documents: transformers builds a block-causal mask from position ids that restart per
        # document, but only when no attention mask is given; with one, documents attend to each other.
        # Padding gets position 0 (see _pad), so each pad token is a one-token document of its own
        # that no real token attends to, and its label is -100.
        del out["attention_mask"]
    labels = [encoded.labels[i] for i in indices]
    kind = encoded.label_kind
    if kind == "class":
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    elif kind in ("value", "multi"):
        out["labels"] = torch.tensor(labels, dtype=torch.float32)
    elif kind in ("tokens", "causal"):
        out["labels"] = _pad(labels, width, IGNORE)
    elif kind == "mlm":
        out["labels"] = _pad([targets for _, targets in masked], width, IGNORE)
    elif kind == "target":
        out["labels"] = _pad(labels, max(len(t) for t in labels), IGNORE)
    elif kind == "span":
        out["start_positions"] = torch.tensor([s for s, _ in labels], dtype=torch.long)
        out["end_positions"] = torch.tensor([e for _, e in labels], dtype=torch.long)
    else:
        raise ValueError(f"unknown label kind {kind!r} (known: {', '.join(LABEL_KINDS)})")
    return out


def _collate_preference(encoded: Encoded, indices: list[int], pad_id: int) -> dict:
    """Right-padded ``input_ids``/``attention_mask``/``labels``: for ``pair`` the chosen rows then the
    rejected rows (``2 * len(indices)`` rows, one forward pass for both); ``index`` the examples' indices
    (GRPO looks up their references); reference log-probs when cached."""
    import torch

    kind, meta = encoded.label_kind, encoded.meta
    seqs = [encoded.input_ids[i] for i in indices]
    labels = [encoded.labels[i] for i in indices]
    if kind == "pair":
        seqs += [meta["rejected_ids"][i] for i in indices]
        labels += [meta["rejected_labels"][i] for i in indices]
    width = max(len(s) for s in seqs)
    out = {"input_ids": _pad(seqs, width, pad_id), "attention_mask": _pad([[1] * len(s) for s in seqs], width, 0),
           "index": torch.tensor(indices, dtype=torch.long)}
    if kind != "prompt":
        out["labels"] = _pad(labels, width, IGNORE)
    if kind == "unpaired":
        out["desirable"] = torch.tensor([bool(meta["desirable"][i]) for i in indices], dtype=torch.bool)
    if "ref_chosen" in meta:
        ref = [meta["ref_chosen"][i] for i in indices] + ([meta["ref_rejected"][i] for i in indices]
                                                          if kind == "pair" else [])
        out["ref_logps"] = torch.tensor(ref, dtype=torch.float32)
    return out


def _pad(rows: list[list], width: int, value) -> "object":
    import torch

    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
