"""Classification tokenisation goes through the token cache: reused when nothing changed, rebuilt
when the tokenizer changes."""

from __future__ import annotations

from transformers import AutoTokenizer

from tuneforge.data.prepare import encode_cached, encode_split, prepare_task_data
from tuneforge.tasks import get_task


def test_token_cache_hit_and_tokenizer_change(tmp_path, make_recipe, tiny_model_dir):
    recipe = make_recipe()
    spec = get_task("classification")
    data = prepare_task_data(recipe.data, recipe.seed, tmp_path / "data", spec)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = tmp_path / "cache"

    first = encode_cached(tok, data, "train", recipe, spec, cache)
    direct = encode_split(spec, tok, data, "train", recipe)
    assert first.input_ids == direct.input_ids and first.labels == direct.labels
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1
    again = encode_cached(tok, data, "train", recipe, spec, cache)
    assert again.input_ids == first.input_ids
    assert sorted(p.name for p in cache.iterdir()) == entries  # a hit: nothing new written

    tok.add_tokens(["toyword"])  # a changed tokenizer must not reuse the old entry
    encode_cached(tok, data, "train", recipe, spec, cache)
    assert len(list(cache.iterdir())) == 2
    shorter = make_recipe("model.max_length=16")
    encode_cached(tok, data, "train", shorter, spec, cache)  # and neither must another max_length
    assert len(list(cache.iterdir())) == 3
