"""Show a formatted example the way the model sees it, with the tokens the loss is computed on marked.

A wrong loss mask is invisible in training curves: the loss goes down either way. ``tuneforge
prepare --preview N`` prints N examples through ``render_preview`` so a user can check, before
spending GPU hours, that exactly the assistant replies (and their end-of-turn token) are trained
and that the template looks like what the model will be prompted with.

The text is *decoded from the token ids*, not taken from the source row, so what is shown is what
was tokenised, special tokens included.
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
    runs = _segments(example.labels)
    parts = []
    if runs:
        from rich.markup import escape

        for (_, _, is_trained), text in zip(runs, _split_text(tokenizer, example.input_ids, runs)):
            # Decoders that join tokens with spaces put the separator at the start of a run; it
            # belongs between the spans, not inside the marked one.
            body = text.lstrip() if is_trained else text
            gap = text[: len(text) - len(body)]
            if color:
                style = "bold green" if is_trained else "dim"
                parts.append(f"{escape(gap)}[{style}]{escape(body)}[/{style}]" if body else escape(gap))
            else:
                parts.append(gap + (f"{OPEN}{body}{CLOSE}" if is_trained and body else body))
    n, trained = len(example), example.n_trained
    share = f" ({100 * trained / n:.1f}%)" if n else ""
    origin = f"{example.origin}: " if example.origin else ""
    return "".join(parts) + f"\n-- {origin}{n} tokens, {trained} trained{share}"
