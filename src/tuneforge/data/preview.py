"""Show a formatted example the way the model sees it, with the tokens the loss is computed on marked.

A wrong loss mask is invisible in training curves: the loss goes down either way. ``tuneforge
prepare --preview N`` prints N examples through ``render_preview`` so a user can check, before
spending GPU hours, that exactly the assistant replies (and their end-of-turn token) are trained
and that the template looks like what the model will be prompted with.

The text is *decoded from the token ids*, not taken from the source row, so what is shown is what
was tokenised, special tokens included. ``render_encoded`` does the same for any task's encoded
example (``TaskSpec.encode``): the preview shows what training encodes, not a re-formatting of rows.
"""

from __future__ import annotations

from typing import Any

from tuneforge.data.formatting import IGNORE_INDEX, FormattedExample

#: Markers around trained text when colour is off (rare enough not to clash with real data).
OPEN, CLOSE = "⟦", "⟧"


def _segments(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Runs of consecutive tokens that are all trained or all not: (start, end, trained)."""
    runs: list[tuple[int, int, bool]] = []
    for i, label in enumerate(labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][2] == trained:
            runs[-1] = (runs[-1][0], i + 1, trained)
        else:
            runs.append((i, i + 1, trained))
    return runs


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _split_text(tokenizer: Any, ids: list[int], runs: list[tuple[int, int, bool]]) -> list[str]:
    """The decoded text of each run.

    Decoding the prefix up to each run boundary and slicing the full decode keeps the spacing the
    tokenizer would produce (WordPiece joins, byte-level characters split over two tokens); when a
    tokenizer's prefix decode is not a prefix of the full decode, each run is decoded on its own.
    """
    full = _decode(tokenizer, ids)
    cuts = [0]
    for _, end, _ in runs[:-1]:
        prefix = _decode(tokenizer, ids[:end])
        if not full.startswith(prefix) or len(prefix) < cuts[-1]:
            return [_decode(tokenizer, ids[s:e]) for s, e, _ in runs]
        cuts.append(len(prefix))
    cuts.append(len(full))
    return [full[a:b] for a, b in zip(cuts, cuts[1:])]


def render_preview(example: FormattedExample, tokenizer: Any, *, color: bool) -> str:
    """The decoded example with trained spans marked, then a line of counts.

    ``color=True`` returns rich markup (trained text green, the rest dim; print it with a rich
    console); ``color=False`` wraps trained text in ``⟦ ⟧`` for logs and terminals without colour.
    """
    n, trained = len(example), example.n_trained
    share = f" ({100 * trained / n:.1f}%)" if n else ""
    origin = f"{example.origin}: " if example.origin else ""
    counts = f"\n-- {origin}{n} tokens, {trained} trained{share}"
    return _marked(tokenizer, example.input_ids, example.labels, color) + counts


def _marked(tokenizer: Any, input_ids: list[int], labels: list[int], color: bool) -> str:
    """The decoded tokens with the trained runs marked (rich markup with ``color``, else ``⟦ ⟧``)."""
    runs = _segments(labels)
    parts = []
    if runs:
        from rich.markup import escape

        for (_, _, is_trained), text in zip(runs, _split_text(tokenizer, list(input_ids), runs)):
            # Decoders that join tokens with spaces put the separator at the start of a run; it
            # belongs between the spans, not inside the marked one.
            body = text.lstrip() if is_trained else text
            gap = text[: len(text) - len(body)]
            if color:
                style = "bold green" if is_trained else "dim"
                parts.append(f"{escape(gap)}[{style}]{escape(body)}[/{style}]" if body else escape(gap))
            else:
                parts.append(gap + (f"{OPEN}{body}{CLOSE}" if is_trained and body else body))
    return "".join(parts)


# ----------------------------------------------------------------------------- encoded examples, any task


def render_encoded(kind: str, record: dict, input_ids: list[int], labels: Any, tokenizer: Any, *,
                   label_names: list[str] | None = None, word_ids: list | None = None,
                   max_length: int | None = None, color: bool = False, meta: dict | None = None) -> str:
    """One encoded example (a task's ``Encoded`` row of label kind ``kind``) as the preview prints it.

    ``record`` is the prepared row it was encoded from (for the text of classification rows, the words of
    token rows and the ``_origin``); everything about training comes from ``input_ids`` and ``labels``:
    causal LM: the decoded tokens with the trained ones (labels != -100) marked (``render_preview``);
    classification, multi-label, regression: the text and the label the loss sees; token classification:
    each word with the tag its first sub-token is trained on; seq2seq: the decoded source and target;
    extractive QA: the window and its answer span; masked LM: the decoded block; preference ``pair``: the
    prompt, then the chosen reply (``input_ids``/``labels``) and the rejected one (``meta["rejected_ids"]``,
    ``meta["rejected_labels"]``) with their trained tokens marked; ``unpaired``: the prompt and the reply,
    desirable or not (``meta["desirable"]``); ``prompt``: the prompt replies are generated for (and
    ``meta["reference"]``, the reference answer, when there is one). ``meta``:
    this example's entries of the ``Encoded.meta`` columns. ``color``: rich markup.
    """
    from rich.markup import escape

    def plain(text: str) -> str:
        return escape(text) if color else text

    def styled(text: str, style: str) -> str:
        return f"[{style}]{escape(text)}[/{style}]" if color else text

    origin = record.get("_origin", "")
    names = list(label_names or [])
    n = len(input_ids)
    if kind == "causal":
        return render_preview(FormattedExample(list(input_ids), list(labels), origin), tokenizer, color=color)
    if kind in ("pair", "unpaired"):
        return _render_preference(kind, list(input_ids), list(labels), tokenizer, meta or {}, origin, color)
    if kind == "prompt":  # GRPO: the replies are generated in the step; a reference answer, when given
        reference = (meta or {}).get("reference")
        return (plain(_decode(tokenizer, list(input_ids))) + "\n"
                + (styled(f"reference: {reference}", "bold") + "\n" if reference else "")
                + plain(f"-- {origin}: {n} prompt tokens; the replies are generated during training"))
    if kind in ("class", "multi", "value"):
        if kind == "class":
            what = f"label: {names[labels] if 0 <= labels < len(names) else labels}"
        elif kind == "multi":
            chosen = [name for name, hot in zip(names, labels) if hot]
            what = f"labels: {', '.join(chosen) if chosen else '(none)'}"
        else:
            what = f"value: {labels:g}"
        cut = f" (cut at model.max_length {max_length})" if max_length is not None and n >= max_length else ""
        text = record.get("text", _decode(tokenizer, list(input_ids)))
        return plain(str(text)) + "\n" + styled(f"-- {what}; {n} tokens{cut}", "bold")
    if kind == "tokens":
        return _render_tagged(record, labels, word_ids or [], names, n, plain, styled, origin)
    if kind == "target":
        target = [t for t in labels if t != IGNORE_INDEX]
        return (plain(f"source: {_decode(tokenizer, list(input_ids))}") + "\n"
                + styled(f"target: {_decode(tokenizer, target)}", "bold green") + "\n"
                + plain(f"-- {origin}: {n} source tokens, {len(target)} target tokens trained"))
    if kind == "span":
        start, end = labels
        if start == end == 0:
            answer = styled("no answer in this window: trained to point at token 0", "bold")
        else:
            answer = styled(f"answer: {_decode(tokenizer, list(input_ids[start:end + 1]))}", "bold green")
        return (plain(_decode(tokenizer, list(input_ids))) + "\n" + answer + "\n"
                + plain(f"-- {origin}: {n} tokens, answer at tokens {start}-{end}"))
    if kind == "mlm":
        return (plain(_decode(tokenizer, list(input_ids))) + "\n"
                + plain(f"-- {origin}: {n} tokens; the predicted (masked) positions are drawn when each batch is "
                        "built"))
    return plain(_decode(tokenizer, list(input_ids))) + "\n" + plain(f"-- {origin}: {n} tokens; labels: {labels!r}")


def _prompt_length(labels: list[int]) -> int:
    """Leading untrained tokens: the prompt of a preference sequence."""
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def _render_preference(kind: str, input_ids: list[int], labels: list[int], tokenizer: Any, meta: dict, origin: str,
                       color: bool) -> str:
    """The prompt once, then each reply with its trained tokens marked, then a count line."""
    from rich.markup import escape

    def plain(text: str) -> str:
        return escape(text) if color else text

    n = int(meta.get("prompt_length", _prompt_length(labels)))
    if kind == "pair":
        replies = [("chosen", input_ids, labels),
                   ("rejected", list(meta["rejected_ids"]), list(meta["rejected_labels"]))]
    else:
        desirable = meta.get("desirable")
        what = "completion" if desirable is None else ("completion (desirable)" if desirable else
                                                       "completion (undesirable)")
        replies = [(what, input_ids, labels)]
    lines = [plain(_decode(tokenizer, input_ids[:n]))]
    counts = []
    for name, ids, labs in replies:
        lines.append(plain(f"{name}: ") + _marked(tokenizer, ids[n:], labs[n:], color))
        trained = sum(1 for label in labs if label != IGNORE_INDEX)
        counts.append(f"{name.split(' ')[0]} {len(ids)} tokens, {trained} trained")
    lines.append(plain(f"-- {origin}: prompt {n} tokens; " + "; ".join(counts)))
    return "\n".join(lines)


def _render_tagged(record: dict, labels: list[int], word_ids: list, names: list[str], n: int, plain, styled,
                   origin: str) -> str:
    """Each word with the tag its first sub-token is trained on; words the encoding lost are listed apart."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    words = list(record.get("tokens") or [])
    shown, cut = [], []
    for index, word in enumerate(words):
        position = first.get(index)
        if position is None:
            (cut if index > max(first, default=-1) else shown).append((word, None))
            continue
        label = labels[position]
        shown.append((word, names[label] if label != IGNORE_INDEX and 0 <= label < len(names) else None))
    parts = []
    for word, tag in shown:
        tag_text = tag if tag is not None else "-"
        parts.append(plain(f"{word}/") + (styled(tag_text, "bold cyan") if tag not in (None, "O") else plain(tag_text)))
    lines = [" ".join(parts)]
    if cut:
        lines.append(plain(f"(cut off by model.max_length, not trained: {' '.join(w for w, _ in cut)})"))
    tagged = sum(1 for label in labels if label != IGNORE_INDEX)
    lines.append(plain(f"-- {origin}: {len(words)} words, {n} tokens, {tagged} tagged"))
    return "\n".join(lines)
