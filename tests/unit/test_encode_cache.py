"""Classification tokenisation goes through the token cache: reused when nothing changed, rebuilt
when the tokenizer changes."""

from __future__ import annotations

from transformers import AutoTokenizer

from tuneforge.data.prepare import encode, encode_cached, prepare_classification


def test_token_cache_hit_and_tokenizer_change(tmp_path, make_recipe, tiny_model_dir):
    recipe = make_recipe()
    data = prepare_classification(recipe.data, recipe.seed, tmp_path / "data")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    section = recipe.data.model_dump(mode="json")
    cache = tmp_path / "cache"

    first = encode_cached(tok, data, "train", 32, section, cache)
    assert first.input_ids == encode(tok, data.train, 32).input_ids and first.labels == data.train.labels
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1
    again = encode_cached(tok, data, "train", 32, section, cache)
    assert again.input_ids == first.input_ids
    assert sorted(p.name for p in cache.iterdir()) == entries  # a hit: nothing new written

    tok.add_tokens(["toyword"])  # a changed tokenizer must not reuse the old entry
    encode_cached(tok, data, "train", 32, section, cache)
    assert len(list(cache.iterdir())) == 2
    encode_cached(tok, data, "train", 16, section, cache)  # and neither must another max_length
    assert len(list(cache.iterdir())) == 3
