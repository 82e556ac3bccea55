"""Summed losses for every label kind, computed by us from the model's outputs.

Why not use the loss the model returns? Transformers models return a *mean* over their own batch;
exact gradient accumulation (see ``steps.py``) needs the *sum*, divided once by the whole step's
count of examples or trained tokens (``Encoded.weights``). Every loss is computed in fp32: autocast
logits may be bf16, and a softmax over a 50k vocabulary in bf16 loses the small probabilities.
"""

from __future__ import annotations

from tuneforge.data.batching import IGNORE


def forward_loss_sum(model, batch: dict, kind: str):
    """Run ``model`` on ``batch`` (as built by ``collate``) and return ``(summed loss, outputs)``."""
    import torch.nn.functional as F

    inputs = dict(batch)
    labels = inputs.pop("labels", None)
    if kind == "span":
        start, end = inputs.pop("start_positions"), inputs.pop("end_positions")
        out = model(**inputs)
        loss = (F.cross_entropy(out.start_logits.float(), start, reduction="sum")
                + F.cross_entropy(out.end_logits.float(), end, reduction="sum")) / 2
        return loss, out
    if kind == "target":
        # Decoder inputs are the labels shifted right (-100 -> pad), by the model's own rule. Passing
        # ``labels`` instead makes the model compute a mean loss we would ignore (and makes
        # EncoderDecoderModel warn on every step); models without the rule still get the labels.
        shift = getattr(model, "prepare_decoder_input_ids_from_labels", None)
        out = (model(**inputs, decoder_input_ids=shift(labels=labels)) if shift is not None
               else model(**inputs, labels=labels))
        logits = out.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum"), out
    out = model(**inputs)
    logits = out.logits.float()
    if kind == "class":
        return F.cross_entropy(logits, labels, reduction="sum"), out
    if kind == "value":
        return F.mse_loss(logits.squeeze(-1), labels, reduction="sum"), out
    if kind == "multi":
        # mean over labels per example, summed over examples: one example weighs 1 like in "class"
        per_label = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return per_label.mean(dim=-1).sum(), out
    if kind in ("tokens", "mlm"):
        logits = logits[:, -labels.size(1):]  # prompt/prefix methods prepend virtual positions
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum"), out
    if kind == "causal":
        # Prompt-tuning/prefix methods prepend virtual tokens to the logits; the labels line up with
        # the last positions.
        logits = logits[:, -labels.size(1):]
        shifted, targets = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                               reduction="sum"), out
    raise ValueError(f"unknown label kind {kind!r}")
