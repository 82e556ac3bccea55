"""Input checks shared by the task metrics.

A metric computed on misaligned or malformed inputs does not fail: it returns a plausible number
that is wrong. Every metric function therefore checks its inputs first and raises ``ValueError``
naming the argument, the position and the fix. These are programming errors between tuneforge's
own components (a prediction loop and its metric), not user input, hence ``ValueError`` rather
than ``DataError``, as in ``tuneforge.tasks.metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_lengths(name_a: str, a: Sequence, name_b: str, b: Sequence) -> None:
    """Both sequences describe the same examples, so they must be equally long and non-empty."""
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("cannot compute metrics on zero examples")


def finite_array(name: str, values: Sequence | np.ndarray, ndim: int) -> np.ndarray:
    """``values`` as a float64 array of the given rank, rejecting nan and inf with their position.

    One nan (a diverged model, a missing target) would turn every aggregate into nan, or into a
    silently wrong number where a library drops it; naming the first bad cell makes it findable.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must contain numbers only: {err}") from None
    if array.ndim != ndim:
        shape = "[n]" if ndim == 1 else "[n, num_labels]"
        raise ValueError(f"{name} must have shape {shape}, got shape {list(array.shape)}")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        where = ", ".join(str(int(i)) for i in bad[0])
        raise ValueError(f"{name}[{where}] is {array[tuple(bad[0])]}; metrics need finite numbers")
    return array


def reference_lists(name: str, references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """One list of acceptable strings per example; a bare string means a single reference.

    Strings are checked explicitly because iterating one yields its characters, which would be
    taken for single-character references without any error.
    """
    out: list[list[str]] = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs:
            raise ValueError(f"{name}[{i}] is empty; every example needs at least one reference")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{name}[{i}] must be a string or a list of strings, got {ref!r}")
        out.append(refs)
    return out


def check_strings(name: str, values: Sequence) -> None:
    """Predictions must be text: ``None`` from a failed generation would otherwise score as "None"."""
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(value).__name__}: {value!r}")
