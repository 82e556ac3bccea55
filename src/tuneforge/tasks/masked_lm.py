"""Masked-LM pretraining and domain adaptation (BERT's objective) on plain text.

Rows are text rows. With ``data.formatting.packing: true`` and ``packing_strategy: stream`` (the
usual choice for pretraining) the corpus becomes one token stream cut into ``model.max_length``
blocks, each wrapped in the tokenizer's [CLS] ... [SEP]; otherwise each row is one example cut at
``model.max_length``. Masking (15% predicted; 80% [MASK], 10% random, 10% kept) happens when a batch
is built (``tuneforge.data.masking``): afresh every epoch for training, fixed for validation.

Domain adaptation is this task on a pretrained encoder (``model.name: minilm-l6``): transformers
loads the body's weights and adds the MLM head (its output matrix tied to the input embeddings, its
transform layer new when the checkpoint has none), and a later ``stages:`` entry fine-tunes the result.
"""

from __future__ import annotations

import math

from pydantic import Field

from tuneforge.errors import DataError
from tuneforge.sections import Section
from tuneforge.tasks.base import TaskSpec, register


class MaskedLMConfig(Section):
    mask_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of each sequence's (non-special) "
                                                                      "tokens that are predicted.")
    mask_share: float = Field(0.8, ge=0.0, le=1.0, description="Of the predicted tokens, the share replaced "
                                                               "by the mask token.")
    random_share: float = Field(0.1, ge=0.0, le=1.0, description="Of the predicted tokens, the share replaced by "
                                                                 "a random token (the rest stay unchanged).")


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    from tuneforge.data.batching import Encoded
    from tuneforge.data.masking import masking_spec
    from tuneforge.data.packing import stream_blocks

    not_text = next((r for r in records if "text" not in r), None)
    if not_text is not None:
        raise DataError(f"task masked_lm trains on text rows; {not_text.get('_origin', 'a row')} is not one "
                        "(use a text, text-file or record source with text_column)")
    fmt, limit = recipe.data.formatting, recipe.model.max_length
    texts = [r["text"] + fmt.document_separator for r in records]
    if fmt.packing and fmt.packing_strategy == "stream":
        # [CLS] block [SEP]: the same frame every example had in pretraining
        head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
        if tail:
            docs = [d + tail for d in docs]  # [SEP] also marks the end of each document in the stream
        ids = [head + block + tail for block in stream_blocks(docs, limit - len(head) - len(tail), overlap=0)]
    elif fmt.packing:
        raise DataError(f"masked_lm packs with data.formatting.packing_strategy: stream (got "
                        f"{fmt.packing_strategy}): a bidirectional model sees every document in a sequence, so "
                        "there is nothing to gain from keeping documents whole")
    else:
        ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    spec = masking_spec(tokenizer, recipe)
    kept = [list(x) for x in ids if spec.targets(x) > 0]
    return Encoded(input_ids=kept, labels=[[] for _ in kept], label_kind="mlm", masking=spec)


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    """Perplexity of the masked tokens, and the share of them predicted exactly (top-1)."""
    from tuneforge.data.masking import IGNORE, mask_tokens

    right = total = 0
    for i, (ids, out) in enumerate(zip(encoded.input_ids, preds.outputs)):
        _, labels = mask_tokens(ids, encoded.masking, i, None)  # the validation masking predict saw
        guesses = out[:, 1].long().tolist()
        for guess, target in zip(guesses, labels):
            if target != IGNORE:
                right += int(guess == target)
                total += 1
    return {"perplexity": math.exp(min(preds.loss, 50.0)), "masked_accuracy": right / total if total else 0.0}


SPEC = register(TaskSpec(
    name="masked_lm", labels="none", label_kind="mlm", auto_class="AutoModelForMaskedLM",
    peft_task_type="", head_kwargs=lambda names: {}, encode=encode, metrics=metrics,
    summary=lambda m: f"loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f}, masked accuracy "
                      f"{m['masked_accuracy']:.4f}",
    selectable={"loss": "min", "perplexity": "min", "masked_accuracy": "max"},
    section="masked_lm", scratch_families=("bert",),
    unsupported_methods={m: "peft has no masked-LM prompt-learning model (no task type for it)"
                         for m in ("prompt", "prefix")},
))
