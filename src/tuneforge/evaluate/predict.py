"""Batched inference over tokenised examples, shared by training-time evaluation, `tuneforge evaluate`
and export verification, so all three compute predictions the same way."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.batching import Encoded, collate, shard, sorted_batches


@dataclass
class Predictions:
    #: per example, input order, fp32: logits [C] per example, or [tokens, C] trimmed to its length; for
    #: generative kinds (causal, target) [tokens, 2] = (top logit, its token id)
    outputs: list
    loss: float  # summed loss / summed example weights (mean per example, or per trained token)

    @property
    def logits(self):
        """``[n, C]`` for example-level tasks (one logits vector per example)."""
        import torch

        return torch.stack(self.outputs) if self.outputs else torch.empty(0)

    @property
    def labels(self) -> list[int]:
        return self.logits.argmax(dim=-1).tolist()


def predict(model, encoded: Encoded, *, batch_size: int, pad_id: int, device=None, precision: str = "fp32",
            rank: int = 0, world_size: int = 1, gather=None) -> Predictions:
    """Outputs for every example, in input order.

    Batches are sorted by length (less padding); under several processes each takes a strided share
    of every batch and ``gather`` (e.g. ``accelerator.gather_object``) collects them.
    """
    import torch

    from tuneforge.train.losses import forward_loss_sum
    from tuneforge.train.precision import autocast

    device = device or next(model.parameters()).device
    weights = encoded.weights
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
            with autocast(precision, device.type):
                loss, out = forward_loss_sum(model, batch, encoded.label_kind)
            loss_sum += float(loss)
            rows.extend(zip(mine, per_example(out, encoded, mine)))
    if was_training:
        model.train()
    if gather is not None and world_size > 1:
        rows, loss_sum = _gather(rows, loss_sum, gather)
    rows.sort(key=lambda r: r[0])
    return Predictions(outputs=[r[1] for r in rows], loss=loss_sum / max(sum(weights), 1))


def per_example(out, encoded: Encoded, indices: list[int]) -> list:
    """Split a batch's outputs into per-example fp32 CPU tensors, padding removed."""
    import torch

    if encoded.label_kind == "span":
        both = torch.stack([out.start_logits.float(), out.end_logits.float()], dim=-1).cpu()  # [n, len, 2]
        return [both[k, : len(encoded.input_ids[i])] for k, i in enumerate(indices)]
    if encoded.label_kind in ("causal", "target", "mlm"):
        # A vocabulary-wide row per token for a whole validation set is gigabytes; keep what evaluation
        # and export verification use: the top logit and its token id, as [len, 2].
        top = out.logits.float().max(dim=-1)
        both = torch.stack([top.values, top.indices.float()], dim=-1).cpu()
        if encoded.label_kind in ("causal", "mlm"):
            width = max(len(encoded.input_ids[i]) for i in indices)
            both = both[:, -width:]
            return [both[k, : len(encoded.input_ids[i])] for k, i in enumerate(indices)]
        return [both[k, : len(encoded.labels[i])] for k, i in enumerate(indices)]
    logits = out.logits.float().cpu()
    if encoded.label_kind == "tokens":
        width = max(len(encoded.input_ids[i]) for i in indices)
        logits = logits[:, -width:]  # prompt/prefix methods prepend virtual positions
        return [logits[k, : len(encoded.input_ids[i])] for k, i in enumerate(indices)]
    return list(logits)


def _gather(rows, loss_sum, gather):
    parts = gather([(rows, loss_sum)])
    all_rows = [r for part_rows, _ in parts for r in part_rows]
    return all_rows, sum(ls for _, ls in parts)
