"""Batched inference over tokenised examples, shared by training-time evaluation, `tuneforge evaluate`
and export verification, so all three compute predictions the same way."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.batching import Encoded, collate, shard, sorted_batches


@dataclass
class Predictions:
    logits: "object"  # torch.Tensor [n, num_labels], fp32, in the original example order
    loss: float  # mean cross-entropy over the examples

    @property
    def labels(self) -> list[int]:
        return self.logits.argmax(dim=-1).tolist()


def predict(model, encoded: Encoded, *, batch_size: int, pad_id: int, device=None, precision: str = "fp32",
            rank: int = 0, world_size: int = 1, gather=None) -> Predictions:
    """Logits for every example, in input order.

    Batches are sorted by length (less padding); under several processes each takes a strided share
    of every batch and ``gather`` (e.g. ``accelerator.gather_object``) collects them.
    """
    import torch

    from tuneforge.train.precision import autocast
    from tuneforge.train.steps import classification_loss_sum

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list[tuple[int, torch.Tensor]] = []
    loss_sum = 0.0
    with torch.no_grad():
        for batch_idx in sorted_batches(encoded.lengths, batch_size):
            mine = shard(batch_idx, rank, world_size)
            if not mine:
                continue
            batch = {k: v.to(device) for k, v in collate(encoded, mine, pad_id).items()}
            labels = batch.pop("labels")
            with autocast(precision, device.type):
                logits = model(**batch).logits
            logits = logits.float()
            loss_sum += classification_loss_sum(logits, labels).item()
            rows.extend(zip(mine, logits.cpu()))
    if was_training:
        model.train()
    if gather is not None and world_size > 1:
        rows, loss_sum = _gather(rows, loss_sum, gather)
    rows.sort(key=lambda r: r[0])
    logits = torch.stack([r[1] for r in rows]) if rows else torch.empty(0)
    return Predictions(logits=logits, loss=loss_sum / max(len(rows), 1))


def _gather(rows, loss_sum, gather):
    parts = gather([(rows, loss_sum)])
    all_rows = [r for part_rows, _ in parts for r in part_rows]
    return all_rows, sum(ls for _, ls in parts)
