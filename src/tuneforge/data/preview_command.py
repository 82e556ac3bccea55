"""`tuneforge prepare --preview N`: show the first N prepared training examples as the model sees them.

Chat rows are rendered through the chat template with the trained span (labels != -100) marked,
which is where template and masking mistakes show up at a glance: a role header inside the
trained span, or an assistant reply outside it. Classification rows show the text, the label and
the token count after truncation.
"""

from __future__ import annotations

import sys

from tuneforge.data.formatting import format_row
from tuneforge.data.pipeline import row_from_output
from tuneforge.data.preview import render_preview
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.templates import resolve_template


def print_preview(recipe, prepared, n: int, *, color: bool | None = None) -> None:
    from rich.console import Console

    from tuneforge.models.build import load_tokenizer, resolve_recipe_model

    console = Console(highlight=False, soft_wrap=True)
    color = sys.stdout.isatty() if color is None else color
    resolved = resolve_recipe_model(recipe.model, require_weights=False, run_dir=recipe.run_dir)
    tokenizer = load_tokenizer(resolved, recipe.model.trust_remote_code)
    rows = [row_from_output(r) for r in prepared.rows("train")[:n]]
    fmt = recipe.data.formatting
    template = None
    if any(r.kind == "chat" for r in rows):
        template = resolve_template(tokenizer, fmt.template)
    for i, row in enumerate(rows, 1):
        console.rule(f"example {i}/{len(rows)}  {row.origin}", style="dim")
        if row.kind == "text" and row.data.get("label") is not None:
            ids = tokenizer(row.data["text"], truncation=True, max_length=recipe.model.max_length)["input_ids"]
            console.print(row.data["text"], markup=False)
            console.print(f"-- label: {row.data['label']}; {len(ids)} tokens", markup=False)
            continue
        example = format_row(row, tokenizer, fmt, template=template)
        if isinstance(example, RejectedRow):
            console.print(f"not trainable: {example.reason}", markup=False)
            continue
        text = render_preview(example, tokenizer, color=color)
        console.print(text, markup=color)
