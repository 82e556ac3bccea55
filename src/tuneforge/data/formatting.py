"""Turn rows into token ids plus loss labels for causal-LM fine-tuning.

Why labels matter: a chat model fine-tuned on every token also learns to *write the user's side* of
the conversation and the template's role headers. The usual fix is to put ``-100`` (ignored by the
cross-entropy loss) on every token that is not part of an assistant reply. The hard part is finding
those tokens for *any* chat template, including templates tuneforge has never seen. We do it
without parsing the template:

1. render the whole conversation to text with the template (``tokenize=False``);
2. for each assistant message i, render messages ``[:i]`` with the generation prompt (which ends
   where the reply starts, after the role header) and messages ``[:i+1]`` (which ends after the
   reply's end-of-turn token); the reply's trained characters lie between the two lengths. When
   the template ignores the generation prompt, or its prompt is not what finished turns start
   with, the reply's own text (found verbatim after the prefix) marks where training starts;
3. tokenise the whole text once with character offsets and train on every token that overlaps a
   trained character span.

Step 2 needs the template to be *prefix-consistent* (rendering fewer messages gives a prefix of
rendering more). Templates that rewrite earlier turns depending on what follows (e.g. dropping the
reasoning of earlier replies) are not; such a row is rejected with a reason that says to pick a
named template or ``train_on: all``, rather than trained with a wrong mask.

Text and pair rows (plain causal-LM data) are trained on every token.

torch and transformers are never imported here: the tokenizer is passed in by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.data.records import Row, row_to_json
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.templates import AUTO_NAMES, NAMED_TEMPLATES
from tuneforge.errors import DataError
from tuneforge.sections import Section

#: Label value the loss ignores (PyTorch's ``CrossEntropyLoss`` default ``ignore_index``).
IGNORE_INDEX = -100

#: Where this section sits in the recipe; used in every message that names a key.
SECTION_KEY = "data.formatting"

TrainOn = Literal["assistant", "last_assistant", "all"]


class ChatFormatConfig(Section):
    """How rows become ``input_ids``/``labels`` for causal-LM training."""

    template: str | None = Field(
        None,
        description="Chat template for chat rows: null or 'auto' = the tokenizer's own chat_template; "
        f"or a named one: {', '.join(NAMED_TEMPLATES)}.",
    )
    train_on: TrainOn = Field(
        "assistant",
        description="Chat tokens the loss is computed on: 'assistant' = every assistant reply (with its "
        "end-of-turn token), 'last_assistant' = only the final reply, 'all' = every token. Text and pair "
        "rows always train on every token.",
    )
    max_length: int | None = Field(
        None, ge=1, description="Longest example in tokens (and the packed sequence length); null: no limit."
    )
    truncation: Literal["right", "drop"] = Field(
        "right",
        description="Examples longer than max_length: 'right' = cut the end off; 'drop' = reject the row "
        "(listed in rejected.jsonl with its length).",
    )
    packing: bool | None = Field(
        None, description="Pack several examples into each max_length sequence (causal and masked LM). Causal "
        "LM packs padding-free: position ids restart per document and no document attends to another. Default "
        "(unset): on for causal LM (packed to max_length, else model.max_length), off for masked LM."
    )
    packing_strategy: Literal["ffd", "greedy", "stream"] = Field(
        "ffd",
        description="How examples are packed: 'ffd' = longest first into the first sequence with room (fullest "
        "sequences); 'greedy' = in data order, a new sequence when the next example does not fit (both keep "
        "documents whole, position ids restart per document); 'stream' = pretraining: every example's tokens "
        "in data order as one stream cut into max_length blocks, documents running across block edges "
        "(causal LM: blocks overlap by one token, so every token is predicted once with up to max_length - 1 "
        "tokens of context).",
    )
    document_separator: str = Field(
        "", description="Text appended to every text row before tokenizing, e.g. '\\n\\n' to put back the "
        "blank line between paragraphs read with text_unit: paragraph."
    )
    add_eos: bool = Field(
        True,
        description="Append the tokenizer's eos_token to text and pair rows so the model learns where a "
        "document ends. Chat rows get their end-of-turn token from the template instead.",
    )
    pair_separator: str = Field(
        "\n", description="Text put between a pair row's source and target when it is trained as one text."
    )

    @model_validator(mode="after")
    def _check(self) -> ChatFormatConfig:
        if self.template not in AUTO_NAMES and self.template not in NAMED_TEMPLATES:
            raise ValueError(
                f"{SECTION_KEY}.template: unknown chat template {self.template!r}; "
                f"allowed: auto (the tokenizer's own), {', '.join(NAMED_TEMPLATES)}"
            )
        if self.truncation == "drop" and self.max_length is None:
            raise ValueError(
                f"{SECTION_KEY}.truncation: 'drop' needs {SECTION_KEY}.max_length (the length above which "
                "rows are dropped)"
            )
        return self


@dataclass(frozen=True)
class FormattedExample:
    """One tokenised example: ``labels[i]`` is ``input_ids[i]`` where the loss applies, else -100."""

    input_ids: list[int]
    labels: list[int]
    #: "file:line" of the row it came from ("" when not built from a row).
    origin: str = ""

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} input_ids but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)

    def to_dict(self) -> dict[str, list[int]]:
        return {"input_ids": list(self.input_ids), "labels": list(self.labels)}


class RowFormatError(DataError):
    """One row cannot be formatted; ``format_row`` turns it into a ``RejectedRow`` with this message."""


# --------------------------------------------------------------------------------------- chat rows


def _render(tokenizer: Any, template: str, messages: Sequence[dict], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages), chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (TemplateError, TypeError, ValueError) as exc:
        raise RowFormatError(f"the chat template failed on this conversation: {exc}") from None


def _trained_char_spans(
    tokenizer: Any, template: str, messages: Sequence[dict], full: str, train_on: TrainOn
) -> list[tuple[int, int]]:
    """Character spans of ``full`` holding the trained assistant replies (see the module docstring)."""
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistant:
        raise RowFormatError(f"no assistant message to train on ({SECTION_KEY}.train_on: {train_on})")
    if train_on == "last_assistant":
        assistant = assistant[-1:]
    spans = []
    for i in assistant:
        before = _render(tokenizer, template, messages[:i], True) if i else ""
        through = _render(tokenizer, template, messages[: i + 1], False)
        if not through.startswith(before):
            # The generation prompt is not the reply's header (e.g. it opens an empty "thinking"
            # block that finished turns do not have): start from the previous turn's end instead and
            # let the reply text locate the start below.
            before = _render(tokenizer, template, messages[:i], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise RowFormatError(
                f"the chat template renders message {i + 1} differently depending on the messages after it, "
                f"so its loss mask cannot be found; set {SECTION_KEY}.template to one of "
                f"{', '.join(NAMED_TEMPLATES)} or {SECTION_KEY}.train_on: all"
            )
        start = len(before)
        # A template that ignores add_generation_prompt leaves the role header after `before`; the
        # reply text itself (when the template copies it verbatim) marks where training starts.
        content = str(messages[i].get("content") or "").strip()
        found = through.find(content, start) if content else -1
        if found != -1:
            start = found
        # Trailing whitespace after the end-of-turn token is layout between turns, not the reply.
        end = len(through.rstrip())
        if end > start:
            spans.append((start, end))
    return spans


def _mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Which tokens overlap a span. A token that straddles a boundary is trained: it carries reply text."""
    mask = []
    k = 0
    for tok_start, tok_end in offsets:
        while k < len(spans) and spans[k][1] <= tok_start:
            k += 1
        if k == len(spans):
            mask.append(False)
            continue
        span_start, span_end = spans[k]
        if tok_end > tok_start:
            mask.append(tok_start < span_end and tok_end > span_start)
        else:  # zero-width token (some added tokens): trained when it sits inside the span
            mask.append(span_start <= tok_start < span_end)
    return mask


def tokenize_with_spans(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], *, use_offsets: bool | None = None
) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` (no extra special tokens) and which of them overlap ``spans``.

    Fast tokenizers report character offsets, which is exact. For the others each span boundary is
    mapped by tokenising the text up to it: exact whenever the tokenizer does not merge across the
    boundary, which role headers and end-of-turn tokens in practice guarantee.
    """
    if use_offsets is None:
        use_offsets = bool(getattr(tokenizer, "is_fast", False))
    if use_offsets:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), _mask_from_offsets(enc["offset_mapping"], spans)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    mask = [False] * len(ids)
    for start, end in spans:
        first = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
        last = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
        for j in range(first, min(last, len(ids))):
            mask[j] = True
    return ids, mask


def format_chat(
    messages: Sequence[dict],
    tokenizer: Any,
    template: str,
    train_on: TrainOn = "assistant",
    max_length: int | None = None,
    *,
    origin: str = "",
) -> FormattedExample:
    """Render ``messages`` with ``template`` and label only the tokens ``train_on`` selects.

    ``template`` is Jinja text (see ``templates.resolve_template``). Over ``max_length`` tokens the
    end is cut off. Raises ``RowFormatError`` for a conversation that cannot be trained on.
    """
    if not messages:
        raise RowFormatError("the conversation has no messages")
    full = _render(tokenizer, template, messages, False)
    if train_on == "all":
        ids, mask = tokenize_with_spans(tokenizer, full, [(0, len(full))])
    else:
        spans = _trained_char_spans(tokenizer, template, messages, full, train_on)
        ids, mask = tokenize_with_spans(tokenizer, full, spans)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return FormattedExample(ids, labels, origin)


# ------------------------------------------------------------------------------ text and pair rows


def format_text(
    text: str, tokenizer: Any, max_length: int | None = None, *, add_eos: bool = True, origin: str = ""
) -> FormattedExample:
    """Plain causal-LM example: the tokenizer's own special tokens (e.g. BOS) plus EOS; every token trained.

    EOS is appended (when the tokenizer has one and did not already add it) so the model learns that
    documents end; without it a fine-tuned model rambles on past the answer.
    """
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if max_length is not None:
        ids = ids[:max_length]
    return FormattedExample(ids, list(ids), origin)


# ------------------------------------------------------------------------------------------ rows


def _reject(row: Row, reason: str) -> RejectedRow:
    return RejectedRow(row.source, row.line, reason, json.dumps(row_to_json(row), ensure_ascii=False))


def truncate(example: FormattedExample, max_length: int) -> FormattedExample:
    """The first ``max_length`` tokens of ``example`` (a new example; the input is left as it is)."""
    if len(example) <= max_length:
        return example
    return FormattedExample(example.input_ids[:max_length], example.labels[:max_length], example.origin)


def _format_untruncated(
    row: Row, tokenizer: Any, config: ChatFormatConfig, template: str | None
) -> FormattedExample:
    if row.kind == "chat":
        if template is None:
            raise DataError(f"{row.origin}: chat rows need a chat template ({SECTION_KEY}.template)")
        return format_chat(row.data["messages"], tokenizer, template, config.train_on, origin=row.origin)
    if row.kind == "text":
        return format_text(row.data["text"] + config.document_separator, tokenizer, add_eos=config.add_eos,
                           origin=row.origin)
    if row.kind == "pair":
        text = row.data["source"] + config.pair_separator + row.data["target"]
        return format_text(text, tokenizer, add_eos=config.add_eos, origin=row.origin)
    raise DataError(
        f"{row.origin}: {row.kind!r} rows (token tags) cannot be formatted for causal-LM training; "
        "use a text, chat or pair data source"
    )


def format_row(
    row: Row, tokenizer: Any, config: ChatFormatConfig, *, template: str | None
) -> FormattedExample | RejectedRow:
    """Format one row per ``config``; a row that cannot be trained on comes back as a ``RejectedRow``.

    ``template`` is the resolved Jinja text (needed for chat rows only). Token-tagging rows (CoNLL)
    are not causal-LM data at all: that is a recipe mistake, raised as ``DataError``.
    """
    try:
        example = _format_untruncated(row, tokenizer, config, template)
    except RowFormatError as exc:
        return _reject(row, str(exc))
    limit = config.max_length
    if limit is not None and len(example) > limit:
        if config.truncation == "drop":
            return _reject(
                row, f"too long: {len(example)} tokens > {SECTION_KEY}.max_length {limit} (truncation: drop)"
            )
        cut = truncate(example, limit)
        if cut.n_trained == 0 < example.n_trained:
            return _reject(
                row,
                f"nothing left to train on: the trained tokens all lie after {SECTION_KEY}.max_length {limit} "
                f"(the example has {len(example)} tokens); raise max_length or shorten the prompt",
            )
        example = cut
    if example.n_trained == 0:
        return _reject(row, "nothing to train on: the text or the assistant replies are empty")
    return example


def format_rows(
    rows: Iterable[Row], tokenizer: Any, config: ChatFormatConfig, *, template: str | None
) -> tuple[list[FormattedExample], list[RejectedRow]]:
    """``format_row`` over ``rows``: the examples in order, and the rejected rows."""
    examples: list[FormattedExample] = []
    rejected: list[RejectedRow] = []
    for row in rows:
        out = format_row(row, tokenizer, config, template=template)
        (rejected if isinstance(out, RejectedRow) else examples).append(out)
    return examples, rejected


def examples_to_columns(examples: Iterable[FormattedExample]) -> dict[str, list]:
    """Column dict (``input_ids``, ``labels``, ``origin``) for ``datasets.Dataset.from_dict`` / the token cache."""
    cols: dict[str, list] = {"input_ids": [], "labels": [], "origin": []}
    for ex in examples:
        cols["input_ids"].append(list(ex.input_ids))
        cols["labels"].append(list(ex.labels))
        cols["origin"].append(ex.origin)
    return cols
