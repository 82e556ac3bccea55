"""`tuneforge tokenizer train`: bpe / wordpiece / unigram / char tokenizers trained on a corpus, saved
for transformers, round-tripping text as each type documents (tuneforge.models.tokenizer_train)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data.corpus import corpus_texts
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.models.tokenizer_train import (
    INFO_FILE,
    TokenizerTrainConfig,
    config_from_options,
    special_token_roles,
    train_tokenizer,
)

from tests.conftest import DATA

SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
SLICE_CHARS = 50_000
#: Byte-exact round trips for bpe and unigram: newlines, runs of spaces, tabs, CRLF, edge spaces, unicode
#: the corpus never showed.
ANY_TEXT = ["naïve café — 東京", "Hello  world\n\n  indented\tand\ttabbed\r\n", " leading and trailing ",
            "", " ", "\n", "emoji 🤗 and \x07 control",
            "First Citizen:\nBefore we proceed any further, hear me speak."]
runner = CliRunner()


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory) -> Path:
    """The first 50k characters of tiny shakespeare (a file, as the CLI would get it)."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:SLICE_CHARS], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(shakespeare, tmp_path_factory):
    """One tokenizer of each type on the slice (char on the whole file, as nanoGPT), loaded back."""
    from transformers import AutoTokenizer

    out = {}
    for kind, kwargs in (("bpe", {"vocab_size": 1000}), ("unigram", {"vocab_size": 1000}),
                         ("wordpiece", {"vocab_size": 1000}), ("char", {})):
        path = tmp_path_factory.mktemp(kind)
        train_tokenizer(corpus_texts([shakespeare], whole_files=kind == "char"),
                        TokenizerTrainConfig(type=kind, **kwargs), path)
        out[kind] = (path, AutoTokenizer.from_pretrained(path))
    return out


def round_trip(tok, text: str, skip_special: bool = False) -> str:
    return tok.decode(tok.encode(text), skip_special_tokens=skip_special)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_bpe_and_unigram_round_trip_any_text_exactly(trained, shakespeare, kind):
    tok = trained[kind][1]
    chunk = shakespeare.read_text(encoding="utf-8")[:3000]
    for text in [*ANY_TEXT, chunk]:
        assert round_trip(tok, text) == text, (kind, text)


def test_bpe_is_byte_level_and_never_unknown(trained):
    tok = trained["bpe"][1]
    assert tok.convert_ids_to_tokens(tok.encode("東")) == ["æ", "Ŀ", "±"]  # unseen: its 3 UTF-8 bytes, E6 9D B1
    ids = tok.encode("東京 🤗 \x00")
    assert tok.unk_token_id not in ids or tok.unk_token == tok.eos_token
    assert len(tok) == 1000


def test_unigram_spells_unseen_characters_in_bytes(trained):
    tok = trained["unigram"][1]
    pieces = tok.convert_ids_to_tokens(tok.encode("東"))
    assert pieces[-3:] == ["<0xE6>", "<0x9D>", "<0xB1>"]
    assert all(f"<0x{b:02X}>" in tok.get_vocab() for b in range(256))


def test_char_round_trips_seen_text_and_maps_unseen_to_unk(trained, shakespeare):
    tok = trained["char"][1]
    text = shakespeare.read_text(encoding="utf-8")
    assert round_trip(tok, text) == text
    assert round_trip(tok, "  two  spaces\n\nand newlines  ") == "  two  spaces\n\nand newlines  "
    ids = tok.encode("a東b")
    assert ids == [tok.convert_tokens_to_ids("a"), tok.unk_token_id, tok.convert_tokens_to_ids("b")]
    assert tok.unk_token == "<unk>" and round_trip(tok, "a東b") == "a<unk>b"


def test_wordpiece_keeps_non_whitespace_characters(trained, shakespeare):
    tok = trained["wordpiece"][1]
    chunk = shakespeare.read_text(encoding="utf-8")[:3000]
    for text in (chunk, "Hello  world\n\n  indented\tand\ttabbed\r\n", "First Citizen:\nBefore, we proceed!"):
        decoded = round_trip(tok, text, skip_special=True)
        assert "".join(decoded.split()) == "".join(text.split())
    # what it does not keep: whitespace layout (single spaces between words, some before punctuation)
    assert round_trip(tok, "Before  we\nproceed:", skip_special=True) == "Before we proceed :"
    ids = tok.encode("we proceed")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    # CJK characters are words of their own (BERT); unseen here, each is [UNK]
    assert tok.convert_ids_to_tokens(tok.encode("we 東京", add_special_tokens=False)) == ["we", "[UNK]", "[UNK]"]


def test_normalisers_are_part_of_the_tokenizer(shakespeare, tmp_path):
    from transformers import AutoTokenizer

    train_tokenizer(corpus_texts([shakespeare]), TokenizerTrainConfig(vocab_size=400, lowercase=True,
                                                                      normalization="nfkc"), tmp_path / "bpe")
    tok = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    assert round_trip(tok, "ＦＩＲＳＴ Citizen") == "first citizen"  # fullwidth folded by NFKC, then lowercased
    train_tokenizer(corpus_texts([shakespeare]), TokenizerTrainConfig(type="wordpiece", vocab_size=400, lowercase=True),
                    tmp_path / "wp")
    tok = AutoTokenizer.from_pretrained(tmp_path / "wp")
    assert round_trip(tok, "FIRST   Citizen", skip_special=True) == "first citizen"


# ---------------------------------------------------------------------------- vocabularies


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_vocab_size_is_reached_not_exceeded(trained, kind):
    path, tok = trained[kind]
    assert 950 <= len(tok) <= 1000
    info = json.loads((path / INFO_FILE).read_text())
    assert info["vocab_size"] == len(tok)
    assert info["corpus"]["characters"] == SLICE_CHARS - info["corpus"]["texts"] - _blank_lines()
    assert info["config"]["type"] == kind and info["config"]["vocab_size"] == 1000


def _blank_lines() -> int:
    # line mode drops newlines and blank lines: characters = slice - one newline per line
    text = SHAKESPEARE.read_text(encoding="utf-8")[:SLICE_CHARS]
    return text.count("\n") - len([line for line in text.split("\n") if line.strip()])


def test_small_corpus_gives_a_smaller_vocabulary(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat on the log\n")
    train_tokenizer(corpus_texts([corpus]), TokenizerTrainConfig(vocab_size=8000), tmp_path / "out")
    info = json.loads((tmp_path / "out" / INFO_FILE).read_text())
    assert 256 + 3 < info["vocab_size"] < 300
    assert info["corpus"] == {"texts": 2, "characters": 44, "rejected_rows": 0}


def test_char_vocabulary_is_sorted_characters_then_specials(trained, shakespeare):
    path, tok = trained["char"]
    chars = sorted(set(shakespeare.read_text(encoding="utf-8")))
    vocab = tok.get_vocab()
    assert [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])] == \
        chars + ["<|endoftext|>", "<pad>", "<mask>", "<unk>"]
    info = json.loads((path / INFO_FILE).read_text())
    assert info["vocab_size"] == len(chars) + 4 and info["config"]["vocab_size"] is None
    assert info["corpus"] == {"texts": 1, "characters": SLICE_CHARS, "rejected_rows": 0}


def test_char_on_full_tiny_shakespeare_is_nanogpt(tmp_path):
    from transformers import AutoTokenizer

    train_tokenizer(corpus_texts([SHAKESPEARE], whole_files=True), TokenizerTrainConfig(type="char"), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    data = SHAKESPEARE.read_text(encoding="utf-8")
    chars = sorted(set(data))
    assert len(chars) == 65 and len(tok) == 69
    head = data[:20_000]
    assert tok.encode(head) == [chars.index(c) for c in head]  # nanoGPT's stoi, id for id


# -------------------------------------------------------------------------- special tokens


def test_default_special_tokens_and_roles(trained):
    for kind in ("bpe", "unigram"):
        tok = trained[kind][1]
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<pad>", "<mask>"]) == [0, 1, 2]
        assert (tok.eos_token, tok.bos_token, tok.pad_token, tok.mask_token) == \
            ("<|endoftext|>", "<|endoftext|>", "<pad>", "<mask>")
        assert (tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2)
    tok = trained["wordpiece"][1]
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token, tok.bos_token,
            tok.eos_token) == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[CLS]", "[SEP]")
    path, tok = trained["char"]
    n = len(tok) - 4
    assert (tok.eos_token_id, tok.pad_token_id, tok.mask_token_id, tok.unk_token_id) == (n, n + 1, n + 2, n + 3)
    info = json.loads((path / INFO_FILE).read_text())
    assert info["special_tokens"]["mask"] == {"token": "<mask>", "id": n + 2}


def test_special_tokens_are_not_split_and_pad_batches(trained):
    tok = trained["bpe"][1]
    assert tok.encode("a<|endoftext|>b") == tok.encode("a") + [0] + tok.encode("b")
    batch = tok(["to be", "or not to be, that is"], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id and batch["attention_mask"][0][-1] == 0
    assert tok.model_max_length == 1024 and tok.mask_token_id in tok.all_special_ids


def test_custom_special_tokens_get_roles_by_name(shakespeare, tmp_path):
    from transformers import AutoTokenizer

    cfg = TokenizerTrainConfig(type="unigram", vocab_size=600, special_tokens=["<s>", "</s>", "<unk>", "<pad>"])
    train_tokenizer(corpus_texts([shakespeare]), cfg, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token, tok.mask_token) == \
        ("<s>", "</s>", "<unk>", "<pad>", None)
    assert tok.convert_tokens_to_ids(["<s>", "</s>", "<unk>", "<pad>"]) == [0, 1, 2, 3]


def test_role_names():
    assert special_token_roles(["<|im_end|>", "<|pad|>"], "bpe") == \
        {"pad": "<|pad|>", "eos": "<|im_end|>", "bos": "<|im_end|>", "unk": "<|im_end|>"}
    assert special_token_roles(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "wordpiece") == \
        {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "bos": "[CLS]", "eos": "[SEP]"}


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, message", [
    ({"type": "char", "vocab_size": 100}, "vocab_size does not apply to type 'char'"),
    ({"type": "unigram", "min_frequency": 2}, "min_frequency does not apply to type 'unigram'"),
    ({"vocab_size": 258}, "vocab_size 258 is smaller than the alphabet plus special tokens: the 256 byte "
                          "symbols + 3 special tokens need at least 259"),
    ({"type": "char", "special_tokens": ["<pad>"]}, "type 'char' needs special tokens for unk"),
    ({"type": "wordpiece", "special_tokens": ["[UNK]", "[PAD]"]}, "type 'wordpiece' needs special tokens for "
                                                                  "cls, sep"),
    ({"special_tokens": ["<pad>", "<pad>"]}, "special_tokens lists <pad> more than once"),
    ({"type": "bpe", "vocab_sise": 10}, "Extra inputs are not permitted"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TokenizerTrainConfig(**kwargs)


def test_option_errors_are_one_line():
    with pytest.raises(TuneforgeError) as err:
        config_from_options(type="sentencepiece", vocab_size=None)
    assert str(err.value) == "--type 'sentencepiece': Input should be 'bpe', 'wordpiece', 'unigram' or 'char'"
    assert config_from_options(type="char", vocab_size=None).type == "char"  # None = not given


def test_vocab_size_below_the_corpus_alphabet(shakespeare, tmp_path):
    with pytest.raises(DataError, match="vocab_size 30 is too small for this corpus: its alphabet plus the 5 "
                                        r"special tokens already make \d+ tokens; raise vocab_size"):
        train_tokenizer(corpus_texts([shakespeare]), TokenizerTrainConfig(type="wordpiece", vocab_size=30), tmp_path)
    with pytest.raises(DataError, match="vocab_size 300 is too small for this corpus's alphabet"):
        train_tokenizer(corpus_texts([shakespeare]), TokenizerTrainConfig(type="unigram", vocab_size=300), tmp_path)


def test_empty_corpus_and_stream_errors(tmp_path):
    with pytest.raises(DataError, match="^the corpus is empty: no text to train a tokenizer on$"):
        train_tokenizer(iter(["", ""]), TokenizerTrainConfig(), tmp_path)

    def failing():
        yield "some text"
        raise DataError("bad file somewhere")

    for kind in ("bpe", "unigram", "wordpiece", "char"):  # the stream's own error, unchanged
        with pytest.raises(DataError, match="^bad file somewhere$"):
            train_tokenizer(failing(), TokenizerTrainConfig(type=kind), tmp_path)


# ------------------------------------------------------------------------------------ corpus


def test_corpus_texts_reads_records_text_and_whole_files(tmp_path):
    lines = tmp_path / "a.txt"
    lines.write_text("first line\n\n  second line\n")
    records = tmp_path / "b.jsonl"
    records.write_text('{"body": "a record", "label": 1}\n{"body": ""}\n{"body": "another"}\n')
    chats = tmp_path / "c.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    texts = corpus_texts([lines, records], text_column="body")
    assert list(texts) == ["first line", "  second line", "a record", "another"]
    assert (texts.rows, texts.rejected) == (4, 1) and texts.rejected_examples == [f"{records}:2: empty text"]
    assert list(corpus_texts([lines], whole_files=True)) == ["first line\n\n  second line\n"]
    assert list(corpus_texts([chats])) == ["hi", "hello"]
    with pytest.raises(DataError, match=f"^data file not found: {tmp_path / 'absent.txt'}$"):
        corpus_texts([lines, tmp_path / "absent.txt"])  # at the call, before reading anything
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        corpus_texts([lines, tmp_path / "empty.txt"])
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "one.md").write_text("# One\n\ntext")
    (docs / "sub" / "two.txt").write_text("two\nlines")
    assert list(corpus_texts([docs])) == ["two\nlines"]  # a folder: every *.txt below it, one text a file
    assert list(corpus_texts([docs / "**" / "*.md"])) == ["# One\n\ntext"]  # a glob


def test_training_streams_the_corpus(tmp_path):
    seen = []

    def texts():
        for i in range(2500):  # several trainer batches
            seen.append(i)
            yield f"text number {i} of a generated corpus"

    train_tokenizer(texts(), TokenizerTrainConfig(vocab_size=300), tmp_path)
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert len(seen) == 2500 and info["corpus"]["texts"] == 2500 and "rejected_rows" not in info["corpus"]


# ------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "char"])
def test_training_is_deterministic(trained, shakespeare, tmp_path, kind):
    path = trained[kind][0]
    kwargs = {} if kind == "char" else {"vocab_size": 1000}
    train_tokenizer(corpus_texts([shakespeare], whole_files=kind == "char"), TokenizerTrainConfig(type=kind, **kwargs),
                    tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()


@pytest.mark.xfail(reason="tokenizers' UnigramTrainer sums EM statistics in hash-map order: scores (and so ids) "
                          "differ in the last digits between runs (documented in docs/pretraining.md)", strict=False)
def test_unigram_training_is_deterministic(trained, shakespeare, tmp_path):
    train_tokenizer(corpus_texts([shakespeare]), TokenizerTrainConfig(type="unigram", vocab_size=1000), tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (trained["unigram"][0] / "tokenizer.json").read_bytes()


# ---------------------------------------------------------------------------------------- CLI


def test_cli_trains_a_loadable_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20)
    out = tmp_path / "tok"
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--out", str(out), "--type", "wordpiece",
                                 "--vocab-size", "200", "--special-token", "[PAD]", "--special-token", "[UNK]",
                                 "--special-token", "[CLS]", "--special-token", "[SEP]", "--special-token", "[MASK]",
                                 "--lowercase"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wordpiece tokenizer: vocabulary ")
    assert ", 40 texts, 1,660 characters, " in result.output and f"saved to {out}" in result.output
    tok = AutoTokenizer.from_pretrained(out)
    assert round_trip(tok, "TO BE, or not", skip_special=True) == "to be, or not"
    assert json.loads((out / INFO_FILE).read_text())["config"]["lowercase"] is True


def test_cli_char_whole_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\n\nba\n")
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--out", str(tmp_path / "tok"), "--type", "char",
                                 "--whole-files"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("char tokenizer: vocabulary 7, 1 text, 7 characters, ")


def test_cli_errors_are_one_line_exit_2(tmp_path):
    missing = tmp_path / "absent.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "  "}\n')
    cases = [
        ([str(missing)], f"error: data file not found: {missing}"),
        ([str(empty)], f"error: data file has no rows: {empty} is empty (0 bytes)"),
        ([str(blank)], f"error: the corpus is empty: no text to train a tokenizer on (1 row rejected, e.g. "
                       f"{blank}:1: empty text)"),
        ([str(empty), "--type", "char", "--vocab-size", "50"], "error: vocab_size does not apply to type 'char': "
         "its vocabulary is the corpus's characters plus the special tokens; remove vocab_size"),
        ([str(empty), "--vocab-size", "100"], "error: vocab_size 100 is smaller than the alphabet plus special "
         "tokens: the 256 byte symbols + 3 special tokens need at least 259"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["tokenizer", "train", *args, "--out", str(tmp_path / "tok")])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == message
    assert not (tmp_path / "tok").exists()
