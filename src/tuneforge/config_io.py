"""Load any typed config (recipe or command config) from YAML plus ``key.path=value`` overrides.

Errors are turned into one message per problem that names the key, the bad value and what is
allowed, because pydantic's raw error text (``extra_forbidden``, union branches...) is written for
programmers, not for someone who just mistyped ``lerning_rate``.
"""

from __future__ import annotations

import difflib
import itertools
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.errors import RecipeError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.learning_rate=1e-4`` -> (["train", "learning_rate"], 1e-4). Values are parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key.path=value")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {text!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each override set; intermediate sections are created as needed, and a
    number addresses an item of a list (``data.sources.0.path=other.csv``)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        try:
            set_key(out, *parse_override(text))
        except RecipeError as exc:
            if str(exc).startswith("override "):
                raise
            raise RecipeError(f"override {text.strip()!r}: {exc}") from None
    return out


def set_key(data: dict, parts: list[str], value: Any) -> None:
    """Set ``data[parts[0]][parts[1]]...`` to ``value`` in place; missing sections are created, and a number
    indexes a list (data.sources.0.weight). An index past the end of a list (an absent list has no items), or
    a name where a list needs an index, is a RecipeError naming the list and its length."""
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            node = _list_item(node, parts, depth)
            if last:
                node[int(part)] = value
                return
            if not isinstance(node[int(part)], (dict, list)):
                node[int(part)] = {}
            node = node[int(part)]
            continue
        if last:
            node[part] = value
            return
        if node.get(part) is None and parts[depth + 1].isdigit():
            where = ".".join(parts[:depth + 1])
            raise RecipeError(f"{where} is not set, so it has no item {int(parts[depth + 1])}: set the whole list "
                              f"(e.g. {where}=[...])")
        if not isinstance(node.get(part), (dict, list)):
            # e.g. `freeze: none` overridden with freeze.first_n_layers=2: the scalar becomes a section.
            node[part] = {}
        node = node[part]


def _list_item(items: list, parts: list[str], depth: int) -> list:
    """``items`` when ``parts[depth]`` is an index into it, else a RecipeError saying what the list holds."""
    where, part = ".".join(parts[:depth]), parts[depth]
    held = f"{len(items)} item{'s' if len(items) != 1 else ''}" if items else "no items"
    if not part.isdigit():
        example = ".".join([*parts[:depth], "0", *parts[depth:]])
        raise RecipeError(f"{where} is a list ({held}): address an item by its index, e.g. {example}")
    if int(part) >= len(items):
        indices = "" if not items else " (index 0)" if len(items) == 1 else f" (indices 0 to {len(items) - 1})"
        raise RecipeError(f"index {int(part)} is past the end of {where}, which has {held}{indices}")
    return items


def data_hint(path: str | Path) -> str | None:
    """The lines of a YAML file's leading comment that say how to get its data (``Data ...`` up to the next
    line not continuing it), for the error a missing data file gives; None when there are none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    leading = [line[1:].strip() for line in itertools.takewhile(lambda s: s.startswith("#"), lines)]
    for i, line in enumerate(leading):
        if line.startswith("Data"):
            block = [line] + list(itertools.takewhile(lambda s: s.startswith("("), leading[i + 1:]))
            return " ".join(block)
    return None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(model: type[BaseModel], path: str | Path | None, overrides: list[str] | None = None,
                base: dict | None = None, *, parsed: dict | None = None):
    """Validate ``base`` (or the YAML at ``path``) with overrides applied; raise RecipeError listing every problem.
    ``parsed``: the YAML at ``path`` as the caller already read it (``read_yaml``): a command parses once."""
    if parsed is not None:
        data = dict(parsed)
    else:
        data = dict(base or {}) if path is None else read_yaml(path)
    data = apply_overrides(data, list(overrides or []))
    where = str(path) if path is not None else model.__name__
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, model, where)) from None


def _fields_at(model: type[BaseModel], loc: tuple) -> dict | None:
    """The fields of the (sub)model that ``loc`` points into, to list the allowed keys."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections, e.g. data.sources.0
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = section_type(field.annotation)
    return current.model_fields if isinstance(current, type) and issubclass(current, BaseModel) else None


def section_type(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None`` or ``Union[Literal..., X]``, else the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_type(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _expected_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """For a failed union branch like ``freeze.FirstNLayers``, the keys that branch takes ({first_n_layers: ...})."""
    branch = next((p for p in reversed(loc) if isinstance(p, str) and p[:1].isupper()), None)
    for sub in _all_sections(model):
        if sub.__name__ == branch:
            return [f"{{{name}: ...}}" for name in sub.model_fields]
    return []


def _all_sections(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            for inner in (arg, *typing.get_args(arg)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _all_sections(inner)


def _loc_text(loc: tuple) -> str:
    # pydantic adds union-branch names such as "literal['none','embeddings']" or "FirstNLayers" to loc.
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p.startswith(("literal[", "function-")) or p[:1].isupper()))]
    return ".".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, model: type[BaseModel], where: str) -> str:
    by_key: dict[str, list[str]] = {}
    errors = exc.errors(include_url=False)
    for err in errors:
        loc = tuple(err["loc"])
        key = _loc_text(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = tuple(p for p in loc[:-1])
            fields = _fields_at(model, tuple(p for p in parent if not str(p)[:1].isupper()))
            allowed = sorted(fields) if fields else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"{key}: unknown key"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            if allowed:
                msg += f"; allowed keys here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = f"{key}: required key is missing"
        elif kind in ("value_error", "assertion_error"):
            # cross-field checks word their own message, naming the keys involved
            msg = err["msg"].removeprefix("Value error, ")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "a mapping"
            text = err["msg"].removeprefix("Value error, ")
            if kind in ("dict_type", "model_type", "model_attributes_type"):
                keys = _expected_keys(model, loc)
                text = ("or a mapping of " + ", ".join(keys)) if keys else "must be a section (a mapping of keys)"
            msg = f"{key}: got {shown}: {text}"
            # A union (e.g. freeze) reports one error per branch; together they say what is allowed.
            if key in by_key and by_key[key][0].startswith(f"{key}: got {shown}:"):
                by_key[key].append(text)
                continue
        by_key.setdefault(key if kind not in ("extra_forbidden", "missing") else key + "#" + kind, []).append(msg)
    # `freeze: {first_n_layers: 0}` fails both union branches; the nested error is the useful one.
    nested = [k for k in by_key if "." in k]
    lines = [f"  - {'; '.join(parts)}" for key, parts in by_key.items()
             if not (parts[0].startswith(f"{key}: got a mapping") and any(n.startswith(key + ".") for n in nested))]
    plural = "problem" if len(lines) == 1 else "problems"
    return f"{where}: {len(lines)} {plural}:\n" + "\n".join(lines)
