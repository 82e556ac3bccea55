"""`tuneforge prepare --preview N`: the first N prepared training rows as training encodes them.

Each row goes through the task's own encoding (``TaskSpec.encode``, the function training calls), one
row at a time, and what comes out is printed (``preview.render_encoded``): for causal LM the decoded
tokens with the trained ones (labels != -100) marked, which is where template and masking mistakes
show up at a glance (a role header inside the trained span, a reply outside it, a pair trained whole);
for classification and regression the text and its label; for token classification each word with its
tag; for seq2seq, extractive QA and masked LM the decoded inputs and targets; for preference pairs the
prompt and both replies with their trained tokens marked (KTO: the reply and whether it is desirable).
Nothing is formatted here: a preview that re-formatted rows itself could show what training does not do.

The task's spec is passed in by the caller (this package sits below ``tuneforge.tasks``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tuneforge.data.preview import render_encoded
from tuneforge.errors import DataError


@dataclass(frozen=True)
class PreviewExample:
    """A prepared row and what the task's encoding made of it: ``encoded`` (an ``Encoded``: one sequence or
    several, e.g. QA windows or the pieces of a document longer than a packed sequence), or, for a row that
    training leaves out, ``reason``."""

    record: dict
    encoded: Any = None
    reason: str | None = None


def preview_examples(spec, records: list[dict], tokenizer, recipe,
                     label_names: list[str] | None) -> list[PreviewExample]:
    """Encode each of ``records`` on its own with ``spec.encode`` (as training encodes them).

    A row the encoding leaves out (a causal-LM row with nothing to train after truncation, a question too
    long for its window) comes back with the encoding's reason. An error every row raises (no chat template,
    rows the task cannot read at all) is raised: training would stop on it too."""
    # Per row, a row the task drops is not an error here: ask the encoding to keep going, then for the reason.
    lenient = _with_rejected_fraction(recipe, 1.0)
    out: list[PreviewExample] = []
    errors: list[DataError] = []
    for record in records:
        try:
            encoded = _encode(spec, [record], tokenizer, lenient, label_names)
        except DataError as exc:
            errors.append(exc)
            out.append(PreviewExample(record, reason=str(exc)))
            continue
        if encoded.input_ids:
            out.append(PreviewExample(record, encoded))
            continue
        try:
            _encode(spec, [record], tokenizer, _with_rejected_fraction(recipe, 0.0), label_names)
            reason = f"task {spec.name} makes no training example of this row"
        except DataError as exc:
            # the encoding words it for a whole split ("1 of 1 rows ...; first: file:line: reason"): the reason
            reason = str(exc).rpartition("; first: ")[2]
        out.append(PreviewExample(record, reason=reason))
    if records and len(errors) == len(records):
        raise errors[0]
    return out


def _encode(spec, records: list[dict], tokenizer, recipe, label_names):
    try:
        return spec.encode(records, tokenizer, recipe, label_names)
    except KeyError as exc:  # worded like the data stage's encode_split: training stops on it the same way
        raise DataError(f"task {spec.name}: the train rows have no field {exc} (check data.text_column / "
                        f"data.label_column and the data format; row {records[0].get('_origin', '?')})") from None


def _with_rejected_fraction(recipe, fraction: float):
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_rejected_fraction": fraction})})


def print_preview(recipe, prepared, n: int, spec, *, color: bool | None = None) -> None:
    """Print the first ``n`` training rows of ``prepared`` as ``spec`` (the recipe's task) encodes them."""
    from rich.console import Console

    from tuneforge.models.build import load_tokenizer, resolve_recipe_model

    console = Console(highlight=False, soft_wrap=True)
    color = sys.stdout.isatty() if color is None else color
    resolved = resolve_recipe_model(recipe.model, require_weights=False, run_dir=recipe.run_dir)
    tokenizer = load_tokenizer(resolved, recipe.model.trust_remote_code)
    records = prepared.rows("train")[:n]
    examples = preview_examples(spec, records, tokenizer, recipe, prepared.label_names)
    kinds = {ex.encoded.label_kind for ex in examples if ex.encoded is not None}
    fmt = recipe.data.formatting
    if "causal" in kinds and fmt.packing is not False:
        limit = min(fmt.max_length or recipe.model.max_length, recipe.model.max_length)
        console.print(f"(packing is on, {fmt.packing_strategy}: training puts these examples together into sequences "
                      f"of up to {limit} tokens; each is shown here on its own, encoded as packing encodes it)",
                      markup=False)
    for i, example in enumerate(examples, 1):
        console.rule(f"example {i}/{len(examples)}  {example.record.get('_origin', '')}", style="dim")
        if example.encoded is None:
            console.print(f"not trained (training leaves this row out): {example.reason}", markup=False)
            continue
        enc = example.encoded
        word_ids = enc.meta.get("word_ids") or [None] * len(enc.input_ids)
        for k, (ids, labels) in enumerate(zip(enc.input_ids, enc.labels)):
            if len(enc.input_ids) > 1:
                console.print(f"(sequence {k + 1} of {len(enc.input_ids)})", markup=False, style="dim")
            # This sequence's meta (a preference pair's rejected sequence, a KTO reply's desirability).
            meta = {key: column[k] for key, column in enc.meta.items()
                    if isinstance(column, (list, tuple)) and len(column) == len(enc.input_ids)}
            console.print(render_encoded(enc.label_kind, example.record, ids, labels, tokenizer,
                                         label_names=prepared.label_names, word_ids=word_ids[k],
                                         max_length=recipe.model.max_length, color=color, meta=meta), markup=color)
