"""Train a tokenizer from scratch on a text corpus (``tuneforge tokenizer train``).

Pretraining a model from scratch needs a tokenizer fitted to its corpus. ``train_tokenizer`` streams
texts into the Hugging Face ``tokenizers`` trainers (so a corpus larger than memory works) and saves a
plain ``transformers`` tokenizer directory: ``AutoTokenizer.from_pretrained(out_dir)`` loads it, with
its bos/eos/unk/pad/mask roles set, and ``tokenizer_training.json`` records the config, the corpus
size and the final vocabulary size.

Four types, and what each guarantees for ``decode(encode(text))``:

=============  ==========================================================================================
``bpe``        GPT-2 style byte-level BPE: the ByteLevel pre-tokenizer maps every byte to a symbol and the
               initial alphabet is all 256 bytes, so *any* text round-trips exactly (newlines, runs of
               spaces, any script) and there is never an unknown token.
``unigram``    SentencePiece style: spaces become ``▁`` and pieces do not cross them; the 256 byte pieces
               ``<0x00>``..``<0xFF>`` are in the vocabulary with byte fallback (as in Llama), so a
               character the corpus never showed is spelled in UTF-8 bytes instead of becoming unknown.
               Any text round-trips exactly, except that text *right after* a special token written
               literally inside it comes back with one extra leading space (SentencePiece's word
               boundary marker is re-added after every special token).
``wordpiece``  BERT style: the BERT normaliser (control characters removed, every whitespace character
               made a space, CJK characters split apart) and pre-tokenizer (split on whitespace and
               punctuation), ``##`` continuation pieces, ``[CLS] text [SEP]`` added by the post-processor.
               Decoding joins words with single spaces, so only the *non-whitespace characters* of the
               (normalised) text come back exactly: ``"".join(decoded.split()) ==
               "".join(normalised.split())`` for text made of characters the corpus contained (a word with
               an unseen character becomes ``[UNK]``). Use it for encoders (masked-LM pretraining).
``char``       One token per character, nanoGPT's character-level setup: the vocabulary is the sorted set
               of the corpus's characters (ids 0..n-1, exactly nanoGPT's ``stoi``) followed by the special
               tokens. Text made of seen characters round-trips exactly; an unseen character becomes
               ``<unk>``. ``vocab_size`` does not apply.
=============  ==========================================================================================

``lowercase`` and ``normalization`` (NFC/NFKC) are normalisers stored *in* the tokenizer: they apply
to every text it encodes, and the round-trip guarantees above then hold for the normalised text.

Special tokens (``special_tokens: null`` picks these per-type defaults; ids in this order, first):

* bpe, unigram: ``<|endoftext|>`` (bos, eos and unk: GPT-2's convention; byte-level BPE and byte
  fallback never produce an unknown token), ``<pad>``, ``<mask>``;
* char: the same plus ``<unk>`` (unseen characters must not read as end of text), *after* the
  characters;
* wordpiece: ``[PAD]``, ``[UNK]``, ``[CLS]`` (also bos), ``[SEP]`` (also eos), ``[MASK]``.

A list given explicitly gets its roles from the names: ``pad``, ``mask``, ``unk``, ``cls``, ``sep`` as
``<pad>`` / ``[PAD]`` / ``<|pad|>`` and so on; bos from ``bos``, ``s``, ``startoftext``,
``begin_of_text``, ``endoftext``; eos from ``eos``, ``/s``, ``endoftext``, ``end_of_text``, ``eot``.
Without an eos name the first token with no other role is bos and eos (for wordpiece, ``[CLS]`` and
``[SEP]``). wordpiece needs unk, cls and sep; char needs unk; bpe and unigram fall back to eos as unk.

bpe, wordpiece and char training is deterministic: the same corpus and config give the same
``tokenizer.json`` byte for byte (wordpiece only because ``_train_wordpiece`` works around
huggingface/tokenizers#1794). unigram is not: ``tokenizers``' UnigramTrainer sums its EM statistics in
hash-map order, so piece scores, and with them the ids, differ slightly between runs.
This module imports ``tokenizers`` and ``transformers`` inside its functions (the CLI imports it lazily
anyway); ``tuneforge.data.corpus.corpus_texts`` streams a corpus in any format ``tuneforge.data.sources`` reads.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.errors import DataError
from tuneforge.sections import Section

TokenizerType = Literal["bpe", "wordpiece", "unigram", "char"]

DEFAULT_SPECIAL_TOKENS: dict[str, list[str]] = {
    "bpe": ["<|endoftext|>", "<pad>", "<mask>"],
    "unigram": ["<|endoftext|>", "<pad>", "<mask>"],
    "char": ["<|endoftext|>", "<pad>", "<mask>", "<unk>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}
#: Default ``min_frequency`` per type (unigram has none). char keeps every character, as nanoGPT does.
DEFAULT_MIN_FREQUENCY = {"bpe": 2, "wordpiece": 2, "char": 1}
BYTE_ALPHABET = 256
#: Texts handed to the ``tokenizers`` trainer per batch.
BATCH_TEXTS = 1000
INFO_FILE = "tokenizer_training.json"

# Token name (lowercased, stripped of <, >, [, ], |) -> the roles it plays.
_ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("pad",), "mask": ("mask",), "unk": ("unk",), "cls": ("cls",), "sep": ("sep",),
    "bos": ("bos",), "s": ("bos",), "startoftext": ("bos",), "begin_of_text": ("bos",),
    "eos": ("eos",), "/s": ("eos",), "end_of_text": ("eos",), "eot": ("eos",),
    "endoftext": ("bos", "eos"),
}
ROLES = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")


class TokenizerTrainConfig(Section):
    """What ``tuneforge tokenizer train`` builds; see the module docstring for each type's guarantees."""

    type: TokenizerType = Field(
        "bpe",
        description="bpe: byte-level BPE (GPT-2; any text round-trips); unigram: SentencePiece-style unigram "
        "with byte fallback; wordpiece: BERT-style WordPiece ([CLS] x [SEP]); char: one token per character "
        "of the corpus (nanoGPT's character-level models).",
    )
    vocab_size: int = Field(
        8000, ge=1,
        description="Largest vocabulary, special tokens included (bpe: at least 256 bytes + specials; unigram: "
        "includes its 256 byte pieces). Not for char, whose vocabulary is the corpus's characters + specials.",
    )
    min_frequency: int | None = Field(
        None, ge=1,
        description="bpe/wordpiece: a merge must occur this often (default 2); char: a character must (default 1: "
        "every character). Not for unigram.",
    )
    special_tokens: list[str] | None = Field(
        None,
        description="Special tokens, given the first ids (char: the ids after the characters). null: bpe/unigram "
        "<|endoftext|> <pad> <mask>; char the same + <unk>; wordpiece [PAD] [UNK] [CLS] [SEP] [MASK]. Roles "
        "(bos, eos, unk, pad, mask, cls, sep) come from the names.",
    )
    lowercase: bool = Field(False, description="Lowercase every text (stored in the tokenizer as a normaliser).")
    normalization: Literal["none", "nfc", "nfkc"] = Field(
        "none", description="Unicode normalisation stored in the tokenizer (none keeps bytes exactly as written)."
    )
    max_length: int = Field(1024, ge=1, description="model_max_length written to the tokenizer config.")

    @model_validator(mode="after")
    def _check(self) -> "TokenizerTrainConfig":
        if self.type == "char" and "vocab_size" in self.model_fields_set:
            raise ValueError("vocab_size does not apply to type 'char': its vocabulary is the corpus's characters "
                             "plus the special tokens; remove vocab_size")
        if self.type == "unigram" and self.min_frequency is not None:
            raise ValueError("min_frequency does not apply to type 'unigram' (its trainer prunes pieces by "
                             "likelihood, not by count); remove min_frequency")
        specials = self.specials
        if any(not tok or tok != tok.strip() for tok in specials):
            raise ValueError(f"special_tokens must be non-empty strings without surrounding spaces, got {specials}")
        dupes = sorted({tok for tok in specials if specials.count(tok) > 1})
        if dupes:
            raise ValueError(f"special_tokens lists {', '.join(dupes)} more than once")
        special_token_roles(specials, self.type)  # raises ValueError for a missing required role
        floor = {"bpe": BYTE_ALPHABET + len(specials), "unigram": BYTE_ALPHABET + len(specials) + 1,
                 "wordpiece": len(specials) + 1}.get(self.type)
        if floor is not None and self.vocab_size < floor:
            what = {"bpe": f"the {BYTE_ALPHABET} byte symbols", "unigram": f"the {BYTE_ALPHABET} byte pieces",
                    "wordpiece": "one character"}[self.type]
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the alphabet plus special tokens: "
                             f"{what} + {len(specials)} special tokens need at least {floor}")
        return self

    @property
    def specials(self) -> list[str]:
        """The special tokens: as given, or the type's defaults."""
        return list(self.special_tokens) if self.special_tokens is not None else list(DEFAULT_SPECIAL_TOKENS[self.type])

    @property
    def min_count(self) -> int:
        """The effective minimum frequency (0 for unigram, which has none)."""
        if self.type == "unigram":
            return 0
        return self.min_frequency if self.min_frequency is not None else DEFAULT_MIN_FREQUENCY[self.type]


_OPTION_NAMES = {"special_tokens": "--special-token", "type": "--type"}


def config_from_options(**given: Any) -> TokenizerTrainConfig:
    """The config from command-line options (``None`` = not given, so per-type defaults and the char /
    vocab_size check see what the user actually set); a bad value raises one ``TuneforgeError`` line."""
    from pydantic import ValidationError

    from tuneforge.errors import RecipeError

    try:
        return TokenizerTrainConfig(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["loc"]:
                field = str(err["loc"][0])
                option = _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
                msg = f"{option} {err['input']!r}: {msg}"
            problems.append(msg)
        raise RecipeError("; ".join(problems)) from None


def special_token_roles(tokens: list[str], kind: str) -> dict[str, str]:
    """Map each role (bos, eos, unk, pad, mask, cls, sep) to a special token, by name (module docstring).

    Raises ``ValueError`` when ``kind`` needs a role the list has no token for.
    """
    roles: dict[str, str] = {}
    for tok in tokens:
        for role in _ROLE_NAMES.get(tok.strip("<>[]|").lower(), ()):
            roles.setdefault(role, tok)
    if kind == "wordpiece":
        roles.setdefault("bos", roles.get("cls", ""))
        roles.setdefault("eos", roles.get("sep", ""))
        roles = {role: tok for role, tok in roles.items() if tok}
    if "eos" not in roles:
        named = set(roles.values())
        free = next((tok for tok in tokens if tok not in named), None)
        if free is not None:
            roles["eos"] = free
            roles.setdefault("bos", free)
    needed = {"wordpiece": ("unk", "cls", "sep"), "char": ("unk",)}.get(kind, ())
    missing = [role for role in needed if role not in roles]
    if missing:
        examples = {"unk": "<unk> or [UNK]", "cls": "[CLS]", "sep": "[SEP]"}
        raise ValueError(f"type '{kind}' needs special tokens for {', '.join(missing)} (named like "
                         f"{', '.join(examples[m] for m in missing)}); special_tokens has {tokens}")
    if kind in ("bpe", "unigram") and "unk" not in roles and "eos" in roles:
        roles["unk"] = roles["eos"]  # never produced: byte-level BPE and byte fallback cover every byte
    return roles


# ----------------------------------------------------------------------------------- training


class _Counted:
    """The text stream, counted (texts, characters) and without empty texts. The first text is read at
    construction, so an empty corpus fails before any training; errors of the stream (a bad corpus
    file) propagate unchanged, also through the ``tokenizers`` trainers."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = iter(texts)
        self.texts = 0
        self.characters = 0
        self._first = next((text for text in self._texts if text), None)

    @property
    def empty(self) -> bool:
        return self._first is None and self.texts == 0

    def __iter__(self) -> Iterator[str]:
        if self._first is not None:
            first, self._first = self._first, None
            self.texts += 1
            self.characters += len(first)
            yield first
        for text in self._texts:
            if text:
                self.texts += 1
                self.characters += len(text)
                yield text

    def batches(self) -> Iterator[list[str]]:
        batch: list[str] = []
        for text in self:
            batch.append(text)
            if len(batch) >= BATCH_TEXTS:
                yield batch
                batch = []
        if batch:
            yield batch


def train_tokenizer(texts: Iterable[str], cfg: TokenizerTrainConfig, out_dir: Path | str) -> Path:
    """Train ``cfg``'s tokenizer on ``texts`` (streamed once) and save it to ``out_dir``; returns ``out_dir``.

    Raises ``DataError`` for an empty corpus or a ``vocab_size`` below what the corpus's alphabet and the
    special tokens need; an error raised by ``texts`` itself (e.g. a bad corpus file) propagates unchanged.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    corpus = _Counted(texts)
    if corpus.empty:
        rejected = getattr(texts, "rejected", 0)
        examples = getattr(texts, "rejected_examples", [])
        detail = (f" ({rejected} row{'s' if rejected != 1 else ''} rejected, e.g. {examples[0]})"
                  if rejected and examples else "")
        raise DataError(f"the corpus is empty: no text to train a tokenizer on{detail}")
    roles = special_token_roles(cfg.specials, cfg.type)
    train = {"bpe": _train_bpe, "unigram": _train_unigram, "wordpiece": _train_wordpiece, "char": _train_char}
    tok = train[cfg.type](corpus, cfg, roles)
    size = tok.get_vocab_size(with_added_tokens=True)
    if cfg.type != "char" and size > cfg.vocab_size:
        raise DataError(f"vocab_size {cfg.vocab_size} is too small for this corpus: its alphabet plus the "
                        f"{len(cfg.specials)} special tokens already make {size} tokens; raise vocab_size")
    _save(tok, cfg, roles, out_dir)
    rejected = getattr(texts, "rejected", None)
    info = {
        "config": resolved_config(cfg),
        "special_tokens": {role: {"token": t, "id": tok.token_to_id(t)} for role, t in roles.items()},
        "corpus": {"texts": corpus.texts, "characters": corpus.characters,
                   **({"rejected_rows": rejected} if rejected is not None else {})},
        "vocab_size": size,
        "seconds": round(time.perf_counter() - start, 3),
        "versions": _versions(),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir


def resolved_config(cfg: TokenizerTrainConfig) -> dict[str, Any]:
    """``cfg`` with every per-type default filled in (what was trained), as JSON values."""
    data = cfg.model_dump(mode="json")
    data["special_tokens"] = cfg.specials
    data["min_frequency"] = cfg.min_count if cfg.type != "unigram" else None
    if cfg.type == "char":
        data["vocab_size"] = None  # the corpus decides; see the top-level vocab_size
    return data


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tuneforge", "tokenizers", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _normalizer(cfg: TokenizerTrainConfig, extra: list[Any] | None = None):
    """The tokenizer's normaliser: NFC/NFKC, then lowercasing (wordpiece: the BERT normaliser), then ``extra``."""
    from tokenizers import normalizers

    steps: list[Any] = []
    if cfg.normalization == "nfc":
        steps.append(normalizers.NFC())
    elif cfg.normalization == "nfkc":
        steps.append(normalizers.NFKC())
    if cfg.type == "wordpiece":
        # strip_accents=False: accents are characters like any other unless the user asks otherwise
        steps.append(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=cfg.lowercase))
    elif cfg.lowercase:
        steps.append(normalizers.Lowercase())
    steps += extra or []
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else normalizers.Sequence(steps)


def _train_bpe(corpus: _Counted, cfg: TokenizerTrainConfig, roles: dict[str, str]):
    """GPT-2's byte-level BPE: every byte is a symbol (initial alphabet: all 256), so nothing is unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    norm = _normalizer(cfg)
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_count,
                                  special_tokens=cfg.specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.batches(), trainer=trainer)
    return tok


def _train_unigram(corpus: _Counted, cfg: TokenizerTrainConfig, roles: dict[str, str]):
    """SentencePiece-style unigram: spaces become ``▁``, a ``▁`` is prepended to the text, and pieces
    are split before each ``▁``. Prepend + Replace are normalisers rather than Metaspace's own prepend,
    which skips a text that already starts with a space: that way a leading space survives the round trip.
    Then the 256 byte pieces are added with byte fallback (``_with_byte_fallback``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = _normalizer(cfg, [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size - BYTE_ALPHABET, special_tokens=cfg.specials,
                                      unk_token=roles["unk"], show_progress=False)
    try:
        tok.train_from_iterator(corpus.batches(), trainer=trainer)
    except Exception as exc:
        if "not large enough" not in str(exc):  # the corpus's characters do not fit in vocab_size
            raise
        raise DataError(f"vocab_size {cfg.vocab_size} is too small for this corpus's alphabet: {exc} "
                        f"(the vocabulary also holds {BYTE_ALPHABET} byte pieces)") from None
    return _with_byte_fallback(tok)


def _train_wordpiece(corpus: _Counted, cfg: TokenizerTrainConfig, roles: dict[str, str]):
    """BERT-style WordPiece, trained deterministically.

    ``tokenizers``' WordPieceTrainer is BpeTrainer with a ``##`` prefix, and it numbers the ``##x``
    symbols in hash-map order, which decides ties between equally frequent merges: two runs on one
    corpus give different vocabularies (huggingface/tokenizers#1794). Here the words are counted in
    Python, every continuation character is replaced by a private-use character of its own (numbered in
    code-point order), a plain BpeTrainer (whose alphabet is sorted, hence deterministic) learns the
    merges, and the pieces are mapped back: a piece starting with a private-use character is ``##`` +
    the original characters. Same algorithm, same vocabulary sizes, reproducible ties.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    norm = _normalizer(cfg)
    assert norm is not None  # wordpiece always has the BERT normaliser
    split = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(word for word, _ in split.pre_tokenize_str(norm.normalize_str(text)))
    alphabet = {ch for word in words for ch in word}
    used = alphabet | {ch for tok in cfg.specials for ch in tok}
    continuing = sorted({ch for word in words for ch in word[1:]})
    stand_in = dict(zip(continuing, _private_chars(len(continuing), used)))
    original = {v: k for k, v in stand_in.items()}

    def feed() -> Iterator[str]:
        for word in sorted(words):
            marked = word[0] + "".join(stand_in[ch] for ch in word[1:])
            left = words[word]
            while left:
                n = min(left, 4096)
                yield " ".join([marked] * n)
                left -= n

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_count,
                                  special_tokens=cfg.specials, show_progress=False,
                                  initial_alphabet=sorted(alphabet))  # every character also word-initial
    bpe.train_from_iterator(feed(), trainer=trainer)
    specials = set(cfg.specials)

    def unmark(piece: str) -> str:
        if piece in specials:
            return piece
        if piece[0] in original:
            return "##" + "".join(original[ch] for ch in piece)
        return piece[0] + "".join(original[ch] for ch in piece[1:])

    vocab = {unmark(piece): i for piece, i in bpe.get_vocab().items()}
    if len(vocab) != bpe.get_vocab_size():
        raise RuntimeError("wordpiece training produced two pieces with one spelling")  # cannot happen: bug
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=roles["unk"], continuing_subword_prefix="##"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(cfg.specials)
    cls, sep = roles["cls"], roles["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


#: Unicode private-use blocks (planes 15 and 16 first: text almost never uses them).
_PRIVATE_USE = ((0xF0000, 0xFFFFD), (0x100000, 0x10FFFD), (0xE000, 0xF8FF))


def _private_chars(n: int, used: set[str]) -> list[str]:
    """``n`` private-use characters, in code-point order, none of them in ``used``."""
    out: list[str] = []
    for start, stop in _PRIVATE_USE:
        for code in range(start, stop + 1):
            if len(out) == n:
                return out
            if chr(code) not in used:
                out.append(chr(code))
    if len(out) < n:
        raise DataError(f"the corpus has too many distinct characters ({n}) for wordpiece training")
    return out


def _with_byte_fallback(tok):
    """The trained unigram tokenizer with the 256 byte pieces added (lowest score) and byte fallback on."""
    from tokenizers import Tokenizer, decoders

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    have = {piece for piece, _ in vocab}
    lowest = min(score for _, score in vocab) - 1.0
    vocab.extend([f"<0x{b:02X}>", lowest] for b in range(BYTE_ALPHABET) if f"<0x{b:02X}>" not in have)
    data["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def _train_char(corpus: _Counted, cfg: TokenizerTrainConfig, roles: dict[str, str]):
    """One token per character: a BPE model with no merges over the sorted characters, no pre-tokenizer
    (whitespace and newlines are characters like any other), and a Fuse decoder (concatenation)."""
    from tokenizers import Tokenizer, decoders, models

    norm = _normalizer(cfg)
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(norm.normalize_str(text) if norm is not None else text)
    specials = cfg.specials
    chars = sorted(ch for ch, n in counts.items() if n >= cfg.min_count and ch not in specials)
    vocab = {ch: i for i, ch in enumerate(chars)}
    for tok_text in specials:
        vocab[tok_text] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=roles["unk"]))
    if norm is not None:
        tok.normalizer = norm
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return tok


def _save(tok, cfg: TokenizerTrainConfig, roles: dict[str, str], out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    kwargs = {f"{role}_token": roles[role] for role in ROLES if role in roles}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.max_length,
                                   clean_up_tokenization_spaces=False, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
