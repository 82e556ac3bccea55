"""Reward functions for GRPO (``grpo.rewards``): each scores a completion, a list of them is summed with
weights.

A recipe lists them under ``grpo.rewards``; every entry has a ``type``, a ``weight`` (default 1) and a
``name`` (default: the type; it names the reward in metrics: ``reward_<name>``):

* ``final_number``: 1 when the last number of the completion equals the reference answer's final
  number (GSM8K's scoring, ``tasks.metrics.final_number``), else 0. Needs a reference per prompt (a
  chat ending with the assistant's answer);
* ``regex``: 1 when ``pattern`` is found in the completion (``re.search``), else 0;
* ``length``: ``1 - |length - target| / target``, at least 0; the length in ``unit`` tokens (the
  policy's tokenizer, no special tokens) or characters;
* ``python``: ``function: "module:function"``, called as ``fn(prompts, completions, references)``
  with three lists of the same length (references are None for prompts without one), returning one
  number per completion. The module is imported from ``sys.path`` or the current folder;
* ``classifier``: the probability of ``label`` that a classifier export (``tuneforge`` task
  classification, or any ``AutoModelForSequenceClassification`` folder with its tokenizer) gives the
  completion text; loaded once on first use, on the policy's device, inputs cut at the export's
  ``model.max_length``;
* ``reward_model``: the scalar score of a reward-model export (``task: reward_model``: one output) for
  the prompt and the completion, rendered with the reward model's chat template when its tokenizer has
  one (the prompt's turns, then the completion as the assistant's turn), else as plain text (prompt,
  then completion).

``Rewards(configs)`` is the scorer: ``rewards(prompts, completions, references) -> (total [n],
{name: [n]})`` as fp32 CPU tensors, total = the sum of weight x reward. Settings are checked when the
recipe is validated (patterns compile, functions import, model folders exist and fit the type); a
python function that returns the wrong number of values fails when it is called, naming its key.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tuneforge.errors import TuneforgeError
from tuneforge.sections import Section

RewardType = Literal["final_number", "regex", "length", "python", "classifier", "reward_model"]

#: setting -> (the types that take it, whether they need it, what it is)
SETTINGS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "pattern": (("regex",), True, "a regular expression, searched for in the completion"),
    "target": (("length",), True, "the length that earns the full reward"),
    "unit": (("length",), False, "tokens or characters"),
    "function": (("python",), True, "'module:function'"),
    "path": (("classifier", "reward_model"), True, "the model's export folder"),
    "label": (("classifier",), True, "one of the classifier's label names"),
    "batch_size": (("classifier", "reward_model"), False, "completions scored per forward pass"),
}
#: Completions a classifier or reward model scores per forward pass unless ``batch_size`` says otherwise.
DEFAULT_SCORE_BATCH = 32


class RewardConfig(Section):
    type: RewardType = Field(..., description="final_number, regex, length, python, classifier or reward_model "
                             "(see tuneforge.tasks.rewards).")
    weight: float = Field(1.0, description="Factor of this reward in the total (negative: a penalty).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$",
                             description="Name in metrics (reward_<name>); default: the type. Must be unique.")
    pattern: str | None = Field(None, validate_default=True,
                                description="regex: the regular expression; reward 1 when re.search finds it.")
    target: int | None = Field(None, ge=1, validate_default=True,
                               description="length: the length (in unit) that earns reward 1.")
    unit: Literal["tokens", "characters"] | None = Field(
        None, validate_default=True, description="length: count tokens (the policy's tokenizer; the default) or "
        "characters.")
    function: str | None = Field(None, validate_default=True, description="python: 'module:function', called as "
                                 "fn(prompts, completions, references) -> one number per completion.")
    path: Path | None = Field(None, validate_default=True, description="classifier / reward_model: the export "
                              "folder (AutoModelForSequenceClassification with its tokenizer).")
    label: str | None = Field(None, validate_default=True,
                              description="classifier: the label whose probability is the reward.")
    batch_size: int | None = Field(None, ge=1, validate_default=True, description="classifier / reward_model: "
                                   f"completions per forward pass (default {DEFAULT_SCORE_BATCH}).")

    @property
    def key(self) -> str:
        """The name in metrics and stats."""
        return self.name or self.type

    @field_validator(*SETTINGS, mode="after")
    @classmethod
    def _fits_type(cls, value, info: ValidationInfo):
        kind = info.data.get("type")
        if kind is None:  # the type itself is wrong: that error says it
            return value
        types, required, what = SETTINGS[info.field_name]
        if value is None:
            if required and kind in types:
                raise _error(f"type {kind} needs {info.field_name} ({what})")
            return value
        if kind not in types:
            raise _error(f"only type {' and '.join(types)} takes {info.field_name}; this reward's type is {kind}")
        check = _CHECKS.get(info.field_name)
        return check(value, info) if check is not None else value


def _error(text: str) -> PydanticCustomError:
    # A custom error type (not value_error): the recipe's error report then prints the key in front.
    return PydanticCustomError("reward_setting", text)


def _check_pattern(value: str, info) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise _error(f"not a valid regular expression: {exc}") from None
    return value


def _check_function(value: str, info) -> str:
    load_function(value, error=_error)
    return value


def _check_path(value: Path, info) -> Path:
    if not Path(value).exists():
        # made by an earlier command (a shipped demo recipe reads `make demo`'s export): the run checks it
        # before any work (``missing_files``), like a data file
        return value
    config = _model_config(value, error=_error)
    labels = _label_names(config)
    if info.data.get("type") == "reward_model" and len(labels) != 1:
        raise _error(f"a reward model has one output (num_labels 1); this model has {len(labels)} "
                     f"({', '.join(labels)}): for a classifier's label probability use type classifier with a label")
    if info.data.get("type") == "classifier" and len(labels) < 2:
        raise _error("this model has one output (a reward model?): use type reward_model for its score")
    return value


def _check_label(value: str, info) -> str:
    path = info.data.get("path")
    if path is None or not Path(path).exists():  # the path's own check says what is wrong
        return value
    labels = _label_names(_model_config(path, error=_error))
    if value not in labels:
        raise _error(f"not a label of the classifier at {path}; its labels: {', '.join(labels)}")
    return value


_CHECKS = {"pattern": _check_pattern, "function": _check_function, "path": _check_path, "label": _check_label}


def _model_config(path: Path, *, error=TuneforgeError) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise error(f"no such folder: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise error(f"{path} has no config.json: expected an exported model folder (tuneforge export writes one)")
    return json.loads(config.read_text())


def _label_names(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    if id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    return [f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))]


def load_function(spec: str, *, error=TuneforgeError):
    """The callable named ``module:function`` (the module from ``sys.path``, or a .py file in the current folder)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"expected 'module:function' (e.g. my_rewards:brevity), got {spec!r}")
    try:
        module = _import(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module may fail in any way while importing
        raise error(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc} (the module must be "
                    "importable: on PYTHONPATH, or a .py file in the current folder)") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise error(f"module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise error(f"{spec} is not a function (it is a {type(fn).__name__})")
    return fn


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The console script does not put the current folder on sys.path; a rewards.py next to the recipe
        # should still import (appended, so it never shadows an installed module).
        top = module_name.split(".")[0]
        if exc.name != top or os.getcwd() in sys.path:
            raise
        sys.path.append(os.getcwd())
        return importlib.import_module(module_name)


def missing_models(configs: Sequence[RewardConfig], key: str = "grpo.rewards") -> list[tuple[str, Path]]:
    """(key, path) of each classifier or reward model folder that does not exist."""
    return [(f"{key}.{i}.path", Path(c.path)) for i, c in enumerate(configs)
            if c.path is not None and not Path(c.path).exists()]


def check_unique_names(configs: Sequence[RewardConfig], key: str = "grpo.rewards") -> None:
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        if cfg.key in seen:
            raise ValueError(f"{key}: rewards {seen[cfg.key]} and {i} are both named {cfg.key!r}; give each a "
                             f"distinct name ({key}.N.name)")
        seen[cfg.key] = i


# ------------------------------------------------------------------------------------------ scoring


class Rewards:
    """The recipe's rewards, ready to score: ``rewards(prompts, completions, references)``.

    ``tokenizer``: the policy's (length rewards in tokens); ``key``: where the configs sit in the
    recipe (error messages). Classifier and reward models load on first use and stay loaded."""

    def __init__(self, configs: Sequence[RewardConfig], *, tokenizer: Any = None, key: str = "grpo.rewards"):
        self.configs = [c if isinstance(c, RewardConfig) else RewardConfig.model_validate(c) for c in configs]
        if not self.configs:
            raise ValueError(f"{key}: give at least one reward")
        check_unique_names(self.configs, key)
        self.tokenizer, self.key = tokenizer, key
        self._patterns = {i: re.compile(c.pattern) for i, c in enumerate(self.configs) if c.type == "regex"}
        self._functions = {i: load_function(c.function) for i, c in enumerate(self.configs) if c.type == "python"}
        self._models: dict[int, _Scorer] = {}

    @property
    def names(self) -> list[str]:
        return [c.key for c in self.configs]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, *, device: Any = None,
                 conversations: Sequence[list[dict] | None] | None = None):
        """``(total [n], {name: [n]})``, fp32 CPU tensors. ``conversations``: the prompts as chat turns
        (None for raw-text prompts), for reward models with a chat template; ``device``: where
        classifier and reward models run (the policy's)."""
        import torch

        n = len(completions)
        references = [None] * n if references is None else list(references)
        conversations = [None] * n if conversations is None else list(conversations)
        for what, values in (("prompts", prompts), ("references", references), ("conversations", conversations)):
            if len(values) != n:
                raise ValueError(f"{len(values)} {what} for {n} completions")
        parts: dict[str, Any] = {}
        total = torch.zeros(n, dtype=torch.float32)
        for i, cfg in enumerate(self.configs):
            values = self._score(i, cfg, list(prompts), list(completions), references, conversations, device)
            parts[cfg.key] = torch.tensor(values, dtype=torch.float32)
            total += cfg.weight * parts[cfg.key]
        return total, parts

    def _score(self, i: int, cfg: RewardConfig, prompts, completions, references, conversations, device) -> list:
        where = f"{self.key}.{i} ({cfg.type})"
        if cfg.type == "final_number":
            return [final_number_reward(c, r, where=where, row=k)
                    for k, (c, r) in enumerate(zip(completions, references))]
        if cfg.type == "regex":
            return [1.0 if self._patterns[i].search(c) else 0.0 for c in completions]
        if cfg.type == "length":
            return [length_reward(self._length(c, cfg, where), cfg.target) for c in completions]
        if cfg.type == "python":
            return self._python(i, cfg, prompts, completions, references)
        scorer = self._models.get(i)
        if scorer is None:
            scorer = self._models[i] = _Scorer.load(cfg, where)
        return scorer.score(prompts, completions, conversations, device)

    def _length(self, completion: str, cfg: RewardConfig, where: str) -> int:
        if cfg.unit == "characters":
            return len(completion)
        if self.tokenizer is None:
            raise TuneforgeError(f"{where}: counting tokens needs the policy's tokenizer (Rewards(tokenizer=...)); "
                                 "or set unit: characters")
        return len(self.tokenizer(completion, add_special_tokens=False)["input_ids"])

    def _python(self, i: int, cfg: RewardConfig, prompts, completions, references) -> list[float]:
        where = f"{self.key}.{i}.function ({cfg.function})"
        out = self._functions[i](prompts, completions, references)
        try:
            values = [float(v) for v in (out.tolist() if hasattr(out, "tolist") else out)]
        except (TypeError, ValueError):
            raise TuneforgeError(f"{where}: must return one number per completion, returned {_describe(out)}") from None
        if len(values) != len(completions):
            raise TuneforgeError(f"{where}: returned {len(values)} values for {len(completions)} completions (one "
                                 "number per completion, in order)")
        bad = [k for k, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise TuneforgeError(f"{where}: returned {values[bad[0]]} for completion {bad[0]}; rewards must be finite")
        return values


def _describe(value) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text[:80]}{'...' if len(text) > 80 else ''})"


def final_number_reward(completion: str, reference: str | None, *, where: str = "final_number", row: int = 0) -> float:
    """1.0 when the completion's final number equals the reference's (``extract_final_number``), else 0.0."""
    from tuneforge.tasks.metrics.final_number import extract_final_number

    if reference is None:
        raise TuneforgeError(f"{where}: prompt {row} has no reference answer to compare with (its chat must end "
                             "with the assistant's answer)")
    gold = extract_final_number(reference)
    if gold is None:
        raise TuneforgeError(f"{where}: the reference answer of prompt {row} contains no number: {reference[:200]!r}")
    return 1.0 if extract_final_number(completion) == gold else 0.0


def length_reward(length: int, target: int) -> float:
    """``1 - |length - target| / target``, at least 0."""
    return max(0.0, 1.0 - abs(length - target) / target)


class _Scorer:
    """A classifier's label probability or a reward model's score, batched, without gradients."""

    def __init__(self, cfg: RewardConfig, model, tokenizer, max_length: int | None, where: str):
        self.cfg, self.model, self.tokenizer, self.max_length, self.where = cfg, model, tokenizer, max_length, where
        self.label_id = None
        if cfg.type == "classifier":
            self.label_id = _label_names(model.config.to_dict()).index(cfg.label)

    @classmethod
    def load(cls, cfg: RewardConfig, where: str) -> "_Scorer":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(cfg.path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise TuneforgeError(f"{where}: cannot load {path} as a sequence classifier with its tokenizer: {exc}") \
                from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # needed to find the last real token of a batch row
        model.eval().requires_grad_(False)
        return cls(cfg, model, tokenizer, export_max_length(path, model, tokenizer), where)

    def token_ids(self, prompts, completions, conversations) -> list[list[int]]:
        """What the model reads. A classifier: the completion, with its tokenizer's special tokens, cut at
        its length. A reward model: prompt + reply tokenised exactly as ``task: reward_model`` trained on
        them and ``tuneforge serve``'s /v1/score reads them (``data.preference.format_preference``, with
        the export's chat template or plain text), keeping the end (the reply) when too long."""
        if self.cfg.type == "classifier":
            return self.tokenizer(list(completions), truncation=self.max_length is not None,
                                  max_length=self.max_length)["input_ids"]
        from tuneforge.data.preference import format_preference

        template = getattr(self.tokenizer, "chat_template", None) or None
        out = []
        for prompt, completion, turns in zip(prompts, completions, conversations):
            record = {"prompt": list(turns) if turns else [{"role": "user", "content": prompt}],
                      "completion": [{"role": "assistant", "content": completion}], "label": True}
            example = format_preference(record, self.tokenizer, template=template, max_length=2**31,
                                        max_prompt_length=None)
            ids = getattr(example, "ids", None)
            if ids is None:  # a reply the template cannot render: score the plain text instead
                ids = self.tokenizer(plain_text(prompt, completion, turns))["input_ids"]
            out.append(ids[-self.max_length:] if self.max_length else ids)
        return out

    def score(self, prompts, completions, conversations, device) -> list[float]:
        import torch

        if device is not None and next(self.model.parameters()).device != torch.device(device):
            self.model.to(device)
        device = next(self.model.parameters()).device
        ids = self.token_ids(prompts, completions, conversations)
        size = self.cfg.batch_size or DEFAULT_SCORE_BATCH
        pad = self.model.config.pad_token_id
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(ids), size):
                rows = ids[start:start + size]
                width = max(len(r) for r in rows)
                # right padding: the head reads the last non-pad token of each row
                input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
                if self.label_id is None:
                    out.extend(logits[:, 0].cpu().tolist())
                else:
                    out.extend(torch.softmax(logits, dim=-1)[:, self.label_id].cpu().tolist())
        return out


def plain_text(prompt: str, completion: str, turns: list[dict] | None) -> str:
    """Prompt and completion as one text, for a reward model without a chat template."""
    if turns:
        prompt = "\n".join(str(t.get("content", "")) for t in turns)
        return f"{prompt}\n{completion}"
    return prompt + ("" if not prompt or prompt[-1].isspace() else " ") + completion


def export_max_length(path: Path, model, tokenizer) -> int | None:
    """The most tokens an export reads: its recipe's ``model.max_length`` (tuneforge exports), the
    model's position table and the tokenizer's declared limit, whichever is smallest."""
    limits = []
    try:
        from tuneforge.models.load_export import export_recipe_text

        found = export_recipe_text(Path(path))
        if found is not None:
            import yaml

            recipe = yaml.safe_load(found[0]) or {}
            limits.append((recipe.get("model") or {}).get("max_length"))
    except Exception:  # noqa: BLE001 - a card we cannot read leaves the model's own limits
        pass
    limits += [getattr(model.config, "max_position_embeddings", None), getattr(model.config, "n_positions", None)]
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and declared < 10**9:
        limits.append(declared)
    limits = [int(n) for n in limits if isinstance(n, int) and n > 0]
    return min(limits) if limits else None
