"""Augmentation for small training sets: EDA edits, back-translation, paraphrasing with an instruction model.

``augment_rows`` returns only the *new* rows. Each carries ``augmented=True``, ``derived_from`` (the
origin of the row it came from) and ``extra["augmentation"]`` (the operation), and keeps the
original's label, group, source and line, so reports can trace it and a group-aware split keeps it
with its original. The caller applies augmentation to the training split only: a validation or
test score measured on edited copies of training rows would be inflated.

Only ``text`` rows are augmented. Chat, pair and token rows are skipped (and counted): editing one
side of a translation pair or one turn of a conversation breaks what the row pairs up, and word
edits would break the token/tag alignment of CoNLL rows.

Generated texts that are empty, identical to their input or repeat an earlier output for the same
row are dropped and counted, not kept: they add weight to a row without adding information.

Models are loaded through ``load_model(name) -> (model, tokenizer)``; the default resolves the
name like ``model.name`` (built-in alias or local directory, safetensors only, no remote code).
torch and transformers are imported only when a model-based operation is enabled.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.data.eda import EDA_OPERATIONS, NEEDS_SYNONYMS, Synonyms, eda_edit, load_synonyms
from tuneforge.data.records import Row
from tuneforge.errors import ModelResolutionError, TuneforgeError
from tuneforge.models.generation import GenerationConfig, generate
from tuneforge.sections import Section

ModelLoader = Callable[[str], "tuple[Any, Any]"]

# ----------------------------------------------------------------------------------------- config


class EdaConfig(Section):
    enabled: bool = Field(False, description="Add EDA copies (word swap/delete/insert/synonym) of rows.")
    copies_per_row: int = Field(1, ge=1, le=32, description="EDA copies per training row; operations rotate.")
    alpha: float = Field(0.1, gt=0.0, le=0.5, description="Share of the words each edit changes (at least 1).")
    operations: list[Literal["swap", "delete", "insert", "synonym"]] = Field(
        default_factory=lambda: ["swap", "delete"],
        description="Edits to use: swap, delete, insert, synonym. insert and synonym need synonyms_file.",
    )
    synonyms_file: Path | None = Field(
        None,
        description="Synonym source: JSON {word: [synonyms]} or TSV word<TAB>syn1,syn2. tuneforge ships none.",
    )

    @model_validator(mode="after")
    def _check(self) -> "EdaConfig":
        if not self.operations:
            raise ValueError(f"eda.operations is empty; list at least one of: {', '.join(EDA_OPERATIONS)}")
        if len(set(self.operations)) != len(self.operations):
            raise ValueError(f"eda.operations has duplicates: {self.operations}")
        needing = [op for op in self.operations if op in NEEDS_SYNONYMS]
        if needing and self.synonyms_file is None:
            raise ValueError(
                f"eda.operations {needing} need eda.synonyms_file (JSON {{word: [synonyms]}} or TSV "
                "word<TAB>syn1,syn2); tuneforge ships no synonym list. Set synonyms_file or use only "
                "swap/delete"
            )
        return self


class BackTranslationConfig(Section):
    enabled: bool = Field(
        False, description="Add a copy of each training row translated to a pivot language and back."
    )
    forward_model: str | None = Field(
        None, description="Seq2seq model translating into the pivot language (e.g. a Marian en-de directory)."
    )
    backward_model: str | None = Field(None, description="Seq2seq model translating the pivot language back.")
    forward_prefix: str = Field(
        "", description="Text put before each input of forward_model (T5: 'translate English to German: ')."
    )
    backward_prefix: str = Field("", description="Text put before each input of backward_model.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Generation limit per translation.")
    batch_size: int = Field(16, ge=1, description="Texts translated per forward pass.")
    num_beams: int = Field(4, ge=1, le=32, description="Beam width (deterministic; 1: greedy).")

    @model_validator(mode="after")
    def _check(self) -> "BackTranslationConfig":
        missing = [k for k in ("forward_model", "backward_model") if not getattr(self, k)]
        if self.enabled and missing:
            raise ValueError(f"back_translation is enabled but {' and '.join(missing)} is not set; name two "
                             "seq2seq translation models (there and back), or set enabled: false")
        return self


class ParaphraseConfig(Section):
    enabled: bool = Field(False, description="Add paraphrases of rows written by an instruction model.")
    model: str | None = Field(None, description="Causal LM with a chat template, e.g. smollm2-135m-instruct.")
    prompt: str = Field(
        "Paraphrase the following text. Keep its meaning; reply with the paraphrase only.\n\n{text}",
        description="User message sent to the model; {text} is replaced by the row text.",
    )
    copies_per_row: int = Field(1, ge=1, le=16, description="Paraphrases per training row.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Generation limit per paraphrase.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature; 0: greedy decoding.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass.")

    @model_validator(mode="after")
    def _check(self) -> "ParaphraseConfig":
        if self.enabled and not self.model:
            raise ValueError("paraphrase is enabled but paraphrase.model is not set; name an instruction model "
                             "with a chat template, or set enabled: false")
        if "{text}" not in self.prompt:
            raise ValueError("paraphrase.prompt must contain {text} (where the row text goes)")
        if self.copies_per_row > 1 and self.temperature == 0:
            raise ValueError("paraphrase.copies_per_row > 1 needs temperature > 0: greedy decoding would write "
                             "the same paraphrase every time")
        return self


class AugmentConfig(Section):
    eda: EdaConfig = Field(default_factory=EdaConfig, description="Word-level EDA edits.")
    back_translation: BackTranslationConfig = Field(
        default_factory=BackTranslationConfig, description="Round trip through a pivot language."
    )
    paraphrase: ParaphraseConfig = Field(
        default_factory=ParaphraseConfig, description="Instruction-model rewrites."
    )


# ------------------------------------------------------------------------------------------ result


@dataclass(frozen=True)
class AugmentResult:
    """The new rows and, per operation, ``{"generated", "empty", "identical", "duplicate"}`` counts."""

    rows: list[Row]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Input rows not augmented: kinds other than ``text``, and rows that are themselves augmented.
    skipped_rows: int = 0


class _Collector:
    """Turn generated texts into derived rows, dropping (and counting) empty/identical/duplicate ones."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.stats: dict[str, dict[str, int]] = {}
        self._seen: dict[str, set[str]] = {}

    def expect(self, operations: Sequence[str]) -> None:
        """List ``operations`` in the stats now, so they appear in config order and even at zero."""
        for op in operations:
            self.stats.setdefault(op, {"generated": 0, "empty": 0, "identical": 0, "duplicate": 0})

    def add(self, row: Row, text: str, operation: str) -> None:
        self.expect([operation])
        counts = self.stats[operation]
        # Compared with whitespace folded: "a  b" is not a new example of "a b".
        norm = " ".join(text.split())
        seen = self._seen.setdefault(row.origin, set())
        if not norm:
            counts["empty"] += 1
        elif norm == " ".join(row.data["text"].split()):
            counts["identical"] += 1
        elif norm in seen:
            counts["duplicate"] += 1
        else:
            seen.add(norm)
            counts["generated"] += 1
            self.rows.append(replace(
                row, data={**row.data, "text": text.strip()}, augmented=True, derived_from=row.origin,
                extra={**row.extra, "augmentation": operation},
            ))


# -------------------------------------------------------------------------------------- operations


def augment_rows(
    rows: Sequence[Row], cfg: AugmentConfig, seed: int, *, load_model: ModelLoader | None = None
) -> AugmentResult:
    """Return the augmented copies of ``rows`` (never the originals) and per-operation counts.

    Deterministic for a given ``seed``: EDA seeds one generator per row and copy from
    ``(seed, row origin, copy)``; sampling-based paraphrasing seeds torch once per call (in a forked
    RNG state, so the caller's torch RNG is untouched).
    """
    eligible = [r for r in rows if r.kind == "text" and not r.augmented]
    out = _Collector()
    loader = load_model or load_pretrained
    if cfg.eda.enabled:
        # Read even when no row is eligible: a broken synonyms file should fail on the first run.
        synonyms = load_synonyms(cfg.eda.synonyms_file) if cfg.eda.synonyms_file else {}
        out.expect([f"eda_{op}" for op in cfg.eda.operations])
        _eda(eligible, cfg.eda, seed, synonyms, out)
    # Loading a model only to generate nothing would cost seconds to minutes.
    if cfg.back_translation.enabled and eligible:
        out.expect(["back_translation"])
        _back_translate(eligible, cfg.back_translation, loader, out)
    if cfg.paraphrase.enabled and eligible:
        out.expect(["paraphrase"])
        _paraphrase(eligible, cfg.paraphrase, seed, loader, out)
    return AugmentResult(rows=out.rows, stats=out.stats, skipped_rows=len(rows) - len(eligible))


def _eda(rows: Sequence[Row], cfg: EdaConfig, seed: int, synonyms: Synonyms, out: _Collector) -> None:
    ops = list(cfg.operations)
    for row in rows:
        # Rotate operations from a per-row random start: copies of one row get different edits,
        # and each operation is used about equally often over the data set.
        start = random.Random(f"{seed}/{row.origin}").randrange(len(ops))
        for copy in range(cfg.copies_per_row):
            op = ops[(start + copy) % len(ops)]
            rng = random.Random(f"{seed}/{row.origin}/{copy}")
            out.add(row, eda_edit(row.data["text"], op, cfg.alpha, rng, synonyms), f"eda_{op}")


def _back_translate(
    rows: Sequence[Row], cfg: BackTranslationConfig, loader: ModelLoader, out: _Collector
) -> None:
    texts = [cfg.forward_prefix + r.data["text"] for r in rows]
    # Beam search without sampling: the same rows always get the same translations.
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, batch_size=cfg.batch_size)
    # One model in memory at a time: the pivot texts are small, two translation models may not be.
    forward = _load(loader, cfg.forward_model or "", "data.augment.back_translation.forward_model", seq2seq=True)
    pivot = generate(*forward, texts, gen)
    del forward
    backward = _load(loader, cfg.backward_model or "", "data.augment.back_translation.backward_model", seq2seq=True)
    back = generate(*backward, [cfg.backward_prefix + t for t in pivot], gen)
    for row, mid, text in zip(rows, pivot, back):
        out.add(row, text if mid.strip() else "", "back_translation")


def _paraphrase(
    rows: Sequence[Row], cfg: ParaphraseConfig, seed: int, loader: ModelLoader, out: _Collector
) -> None:
    model, tokenizer = _load(loader, cfg.model or "", "data.augment.paraphrase.model", seq2seq=False)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelResolutionError(
            f"data.augment.paraphrase.model: the tokenizer of '{cfg.model}' has no chat template; "
            "use an instruction-tuned model (e.g. SmolLM2-Instruct)"
        )
    copies = cfg.copies_per_row
    # Each prompt repeated copies_per_row times: sampled copies differ, and a batch still holds
    # batch_size rows, as num_return_sequences would give.
    prompts = [cfg.prompt.replace("{text}", r.data["text"]) for r in rows for _ in range(copies)]
    sampling = dict(do_sample=True, temperature=cfg.temperature, seed=seed) if cfg.temperature > 0 else {}
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size * copies, **sampling)
    outputs = generate(model, tokenizer, prompts, gen, chat=True)
    for i, row in enumerate(rows):
        for text in outputs[i * copies:(i + 1) * copies]:
            out.add(row, _unquote(text), "paraphrase")


def _unquote(text: str) -> str:
    # Instruction models like to wrap the answer in quotes; the quotes are not part of the text.
    text = text.strip()
    if len(text) >= 2 and (text[0], text[-1]) in {('"', '"'), ("“", "”"), ("'", "'")}:
        return text[1:-1].strip()
    return text


# ------------------------------------------------------------------------------------------ models


def load_pretrained(name: str) -> tuple[Any, Any]:
    """Default loader: resolve ``name`` like ``model.name`` and load it with the matching Auto class.

    Encoder-decoder configs load with ``AutoModelForSeq2SeqLM``, others with ``AutoModelForCausalLM``;
    weights must be safetensors and remote code is never run. The model goes to the GPU if there is one.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from tuneforge.models.resolve import model_load_kwargs, resolve_model

    resolved = resolve_model(name)
    kwargs = model_load_kwargs(resolved)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=False)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(resolved.path, **kwargs)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=False)


def _load(loader: ModelLoader, name: str, key: str, *, seq2seq: bool) -> tuple[Any, Any]:
    try:
        model, tokenizer = loader(name)
    except TuneforgeError as exc:
        raise ModelResolutionError(f"{key}: {exc}") from None
    if bool(getattr(model.config, "is_encoder_decoder", False)) != seq2seq:
        wanted = "a seq2seq (encoder-decoder) translation model" if seq2seq else "a decoder-only chat model"
        raise ModelResolutionError(f"{key}: '{name}' is a {type(model).__name__}; this needs {wanted}")
    return model, tokenizer
