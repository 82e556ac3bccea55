"""Tokenise a preference row (a prepared record of kind ``preference``) into trainable sequences.

A paired row becomes a ``PairExample``: the chosen and the rejected sequence, each the prompt's tokens
followed by the reply's, with labels -100 on the prompt and equal to the ids on the reply. An unpaired
(KTO) row becomes an ``UnpairedExample`` of one such sequence and whether the reply is desirable.

**The prompt is an exact prefix of both sequences.** It is rendered with the chat template and the
generation prompt (``<|im_start|>assistant\\n``: exactly what the model is given when it answers), and
tokenised on its own; the reply is what the template renders after that (the reply's text and its
end-of-turn token(s), so the model learns to stop; layout whitespace after the end of turn is left
out, as in ``formatting``), tokenised on its own. Both sequences therefore share the prompt's tokens
to the last one, which is what DPO-style losses assume (only the replies' log-probs differ), and what
TRL does. A template that renders a conversation differently depending on whether the generation
prompt is asked for cannot be split this way; such a row is rejected with a reason.

With no template (a base model without one): the prompt's contents joined with newlines, a newline,
then the reply's contents, with the tokenizer's own special tokens in front (BOS) and its EOS token
after the reply.

**Truncation** follows TRL: when the prompt plus the longer reply exceeds ``max_length``, the prompt
is cut from the left (its end, the question being answered, is kept; a leading BOS token stays) down
to ``max_prompt_length`` (default ``max_length // 2``). A reply that still does not fit is not cut
(a cut reply would teach the model a preference between two unfinished answers): the row is rejected
with its length. Chosen and rejected replies that tokenise identically are rejected too (no
preference to learn).

torch and transformers are never imported here: the tokenizer is passed in by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.data.conversations import IDENTICAL_REPLIES
from tuneforge.data.formatting import IGNORE_INDEX, SECTION_KEY, RowFormatError, _render
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.templates import NAMED_TEMPLATES


@dataclass(frozen=True)
class PairExample:
    """A preference pair, tokenised: chosen and rejected each = prompt tokens + reply tokens."""

    prompt_length: int  # tokens of the (possibly truncated) prompt, the same for both
    chosen_ids: list[int]
    chosen_labels: list[int]  # -100 on the prompt, = ids on the reply
    rejected_ids: list[int]
    rejected_labels: list[int]


@dataclass(frozen=True)
class UnpairedExample:
    """An unpaired (KTO) example: prompt tokens + reply tokens, and whether the reply is desirable."""

    prompt_length: int
    ids: list[int]
    labels: list[int]  # -100 on the prompt, = ids on the reply
    desirable: bool


def format_preference(record: dict, tokenizer: Any, *, template: str | None, max_length: int,
                      max_prompt_length: int | None, origin: str = "") -> PairExample | UnpairedExample | RejectedRow:
    """Tokenise one prepared preference record (``prompt`` + ``chosen`` + ``rejected``, or ``prompt`` +
    ``completion`` + ``label``); see the module docstring.

    ``template``: the resolved Jinja text (``templates.resolve_template``), or None for plain text.
    ``origin`` ("file:line") names the row in a rejection; default: the record's ``_origin``. A row that
    cannot be trained on comes back as a ``RejectedRow`` (reason: over-long reply, identical replies, a
    template that fails on it); a record without a ``prompt`` raises ``KeyError`` like every encoding.
    """
    origin = origin or str(record.get("_origin", ""))
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
    prompt = record["prompt"]
    fields = ("chosen", "rejected") if "completion" not in record else ("completion",)
    try:
        prompt_ids = encode_prompt(prompt, tokenizer, template)
        replies = [_reply_ids(prompt, record[field], tokenizer, template) for field in fields]
    except RowFormatError as exc:
        return _reject(record, origin, str(exc))
    if len(replies) == 2 and replies[0] == replies[1]:
        return _reject(record, origin, IDENTICAL_REPLIES)
    longest = max(len(r) for r in replies)
    cut = False
    if len(prompt_ids) + longest > max_length:
        limit = max_prompt_length if max_prompt_length is not None else max_length // 2
        if len(prompt_ids) > limit:
            prompt_ids = _keep_end(prompt_ids, limit, getattr(tokenizer, "bos_token_id", None))
            cut = True
        for field, reply in zip(fields, replies):
            if len(prompt_ids) + len(reply) > max_length:
                what = "the completion" if field == "completion" else f"the {field} response"
                prompt_part = (f"with the prompt cut to {len(prompt_ids)} tokens" if cut else
                               f"with the prompt's {len(prompt_ids)} tokens")
                return _reject(record, origin, f"{what} has {len(reply)} tokens; {prompt_part} it exceeds "
                                               f"max_length {max_length}")
    n = len(prompt_ids)
    sequences = [(prompt_ids + reply, [IGNORE_INDEX] * n + reply) for reply in replies]
    if len(sequences) == 2:
        (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = sequences
        return PairExample(n, chosen_ids, chosen_labels, rejected_ids, rejected_labels)
    label = record.get("label")
    if not isinstance(label, bool):
        return _reject(record, origin, f"label is not a boolean (got {type(label).__name__}); use true or false")
    ids, labels = sequences[0]
    return UnpairedExample(n, ids, labels, label)


def format_preferences(records: Iterable[dict], tokenizer: Any, *, template: str | None, max_length: int,
                       max_prompt_length: int | None) -> tuple[list[PairExample | UnpairedExample], list[RejectedRow]]:
    """``format_preference`` over ``records``: the examples in order, and the rejected rows."""
    examples: list[PairExample | UnpairedExample] = []
    rejected: list[RejectedRow] = []
    for record in records:
        out = format_preference(record, tokenizer, template=template, max_length=max_length,
                                max_prompt_length=max_prompt_length)
        (rejected if isinstance(out, RejectedRow) else examples).append(out)
    return examples, rejected


def encode_prompt(prompt: Sequence[dict], tokenizer: Any, template: str | None,
                  max_prompt_length: int | None = None) -> list[int]:
    """The token ids a model is given to answer ``prompt`` (messages ending with a user turn): rendered
    with ``template`` and its generation prompt, or as plain text (contents joined with newlines, then a
    newline, with the tokenizer's BOS) without one. ``max_prompt_length`` cuts it from the left (GRPO
    prompts), keeping a leading BOS. Raises ``RowFormatError`` when the template fails on it."""
    if template is not None:
        ids = _ids(tokenizer, _render(tokenizer, template, list(prompt), True))
    else:
        text = "\n".join(str(m["content"]) for m in prompt) + "\n"
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        eos, eos_text = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "eos_token", None)
        if eos is not None and len(ids) > 1 and ids[-1] == eos and not (eos_text and text.endswith(eos_text)):
            ids = ids[:-1]  # a tokenizer that closes every text with EOS: the prompt goes on with the reply
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = _keep_end(ids, max_prompt_length, getattr(tokenizer, "bos_token_id", None))
    return ids


def _reply_ids(prompt: Sequence[dict], reply: Sequence[dict], tokenizer: Any, template: str | None) -> list[int]:
    """The reply's tokens as they follow the prompt: with a template, what it renders after the prompt and
    its generation prompt (the reply and its end-of-turn token); without, the reply's text and EOS."""
    if template is None:
        ids = _ids(tokenizer, "\n".join(str(m["content"]) for m in reply))
        eos = getattr(tokenizer, "eos_token_id", None)
        return ids + [eos] if eos is not None else ids
    head = _render(tokenizer, template, list(prompt), True)
    full = _render(tokenizer, template, [*prompt, *reply], False)
    if not full.startswith(head):
        raise RowFormatError(
            "the chat template renders the prompt differently when a reply follows it than with its generation "
            "prompt, so the prompt cannot be an exact prefix of the chosen and rejected sequences; set "
            f"{SECTION_KEY}.template to one of {', '.join(NAMED_TEMPLATES)}"
        )
    # Whitespace after the end-of-turn token is layout between turns, not the reply (as in formatting).
    text = full[len(head):len(full.rstrip())]
    if not text:
        raise RowFormatError("the chat template renders nothing for the reply")
    return _ids(tokenizer, text)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _keep_end(ids: list[int], limit: int, bos: int | None) -> list[int]:
    """The last ``limit`` tokens of ``ids``; a leading BOS stays in front (models never see a text without it)."""
    if len(ids) <= limit:
        return ids
    if bos is not None and ids and ids[0] == bos and limit > 1:
        return [bos, *ids[len(ids) - limit + 1:]]
    return ids[len(ids) - limit:]


def _reject(record: dict, origin: str, reason: str) -> RejectedRow:
    file, _, line = origin.rpartition(":")
    if not file or not line.isdigit():
        file, line = origin, "0"
    raw = json.dumps({k: v for k, v in record.items() if k != "_origin"}, ensure_ascii=False, default=str)
    return RejectedRow(file=file, line=int(line), reason=reason, raw=raw)


# ------------------------------------------------------------------------------------------- preview


def preview_preference(record: dict, tokenizer: Any, template: str | None, max_length: int,
                       max_prompt_length: int | None, *, color: bool = False) -> str:
    """One preference record as the preview prints it: the prompt, then the chosen and rejected replies
    (or the completion and whether it is desirable) with their trained tokens marked like the causal-LM
    preview (``⟦ ⟧``, or green with ``color``), and a count line; a row training leaves out, with its
    reason. ``tuneforge prepare --preview`` shows the same through the task's encoding
    (``preview.render_encoded`` with label kinds ``pair`` / ``unpaired``)."""
    from tuneforge.data.preview import render_encoded

    out = format_preference(record, tokenizer, template=template, max_length=max_length,
                            max_prompt_length=max_prompt_length)
    if isinstance(out, RejectedRow):
        return f"not trained (training leaves this row out): {out.reason}"
    if isinstance(out, PairExample):
        return render_encoded("pair", record, out.chosen_ids, out.chosen_labels, tokenizer, color=color,
                              meta={"rejected_ids": out.rejected_ids, "rejected_labels": out.rejected_labels})
    return render_encoded("unpaired", record, out.ids, out.labels, tokenizer, color=color,
                          meta={"desirable": out.desirable})
