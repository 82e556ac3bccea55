"""Masked-LM corruption (BERT): choose 15% of the tokens to predict; of those, 80% become [MASK],
10% a random token, 10% stay as they are.

Why the 80/10/10 split: a model that only ever sees [MASK] at the predicted positions learns nothing
useful for the unmasked tokens it sees when fine-tuned; random and unchanged tokens make it keep a
representation of every input token (Devlin et al. 2019, section 3.1).

Choices made here, and why:

* **A fixed count per sequence**, ``max(1, round(probability * maskable))`` positions drawn without
  replacement (as in Google's original ``create_pretraining_data.py``), rather than an independent
  coin per token (Hugging Face's collator). The count is then known before the batch is drawn, so
  the loop's exact loss normalisation (``Encoded.weights``: the number of predicted tokens) holds for
  masked LM too, and every sequence has at least one target.
* **Dynamic**: training sequences are re-masked every epoch (RoBERTa showed this helps); the
  random draw of example ``i`` in epoch ``e`` comes from ``default_rng([seed, e + 1, i])``, so it does
  not depend on batching, sharding across processes or resuming. Validation uses one fixed
  masking (``epoch=None``), so evaluations are comparable step to step.
* Special tokens ([CLS], [SEP], [PAD]) are never chosen, and random replacements are drawn from the
  non-special vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tuneforge.errors import DataError

IGNORE = -100


@dataclass(frozen=True)
class MaskingSpec:
    mask_id: int
    vocab_size: int
    special_ids: frozenset[int]
    probability: float = 0.15
    mask_share: float = 0.8
    random_share: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"mask probability must be in (0, 1), got {self.probability}")
        if self.mask_share < 0 or self.random_share < 0 or self.mask_share + self.random_share > 1.0:
            raise ValueError(f"mask_share {self.mask_share} + random_share {self.random_share} must lie in [0, 1]")

    def targets(self, ids: Sequence[int]) -> int:
        """How many positions of ``ids`` are predicted: the loss weight of the example."""
        maskable = sum(1 for t in ids if t not in self.special_ids)
        return max(1, round(self.probability * maskable)) if maskable else 0


def masking_spec(tokenizer, recipe) -> MaskingSpec:
    """The masking of a masked-LM run: ``tokenizer``'s mask token and special tokens, the recipe's
    ``masked_lm`` settings and ``seed``. Raises ``DataError`` when the tokenizer has no mask token."""
    if tokenizer.mask_token_id is None:
        raise DataError(f"task masked_lm needs a tokenizer with a mask token; {type(tokenizer).__name__} "
                        f"({getattr(tokenizer, 'name_or_path', '')}) has none")
    cfg = recipe.masked_lm
    try:
        return MaskingSpec(mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                           special_ids=frozenset(tokenizer.all_special_ids), probability=cfg.mask_probability,
                           mask_share=cfg.mask_share, random_share=cfg.random_share, seed=recipe.seed)
    except ValueError as exc:
        raise DataError(f"masked_lm: {exc}") from None


def mask_tokens(ids: Sequence[int], spec: MaskingSpec, index: int, epoch: int | None) -> tuple[list[int], list[int]]:
    """``(inputs, labels)`` for example ``index``: labels hold the original id at predicted positions,
    ``IGNORE`` elsewhere. ``epoch=None``: the fixed validation masking."""
    # stream 0 is the validation masking, stream e + 1 the training masking of epoch e
    rng = np.random.default_rng([spec.seed, 0 if epoch is None else epoch + 1, index])
    maskable = np.fromiter((i for i, t in enumerate(ids) if t not in spec.special_ids), dtype=np.int64)
    inputs, labels = list(ids), [IGNORE] * len(ids)
    count = spec.targets(ids)
    if count == 0:
        return inputs, labels
    chosen = rng.choice(maskable, size=count, replace=False)
    action = rng.random(count)
    for position, u in zip(chosen.tolist(), action.tolist()):
        labels[position] = ids[position]
        if u < spec.mask_share:
            inputs[position] = spec.mask_id
        elif u < spec.mask_share + spec.random_share:
            inputs[position] = _random_token(rng, spec)
    return inputs, labels


def _random_token(rng: np.random.Generator, spec: MaskingSpec) -> int:
    while True:  # specials are a handful of ids: a retry is rare
        token = int(rng.integers(spec.vocab_size))
        if token not in spec.special_ids:
            return token
