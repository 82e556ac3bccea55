"""One-time conversion of a GGUF checkpoint into a plain safetensors model directory.

Why convert at all: transformers can *load* a GGUF file (it dequantises every tensor to float), but
the result is marked as a GGUF-quantised model, which ``save_pretrained``/PEFT/the trainer treat as
non-serialisable, and dequantising on every load costs ~25 s of CPU. Converting once gives a normal
``from_pretrained(dir)`` directory that every other stage (training, export, serving) understands.

torch/transformers are imported inside the functions so that importing this module stays cheap.

Run by hand: ``python -m tuneforge.models.gguf_convert MODEL.gguf OUT_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneforge.errors import ModelResolutionError

log = logging.getLogger(__name__)

#: Written last into a finished output directory; its presence means "conversion complete".
MARKER_NAME = "conversion.json"

#: Bump when the output layout changes, so caches written by older tuneforge versions are redone.
CONVERTER_VERSION = 1

# Both sides are float32 with identical weights, so the logits should agree to float rounding of
# the (deterministic) CPU kernels; anything bigger means weights were lost or mis-mapped.
_MAX_LOGIT_DIFF = 1e-3

# Short prompt for the parity check. It goes through the chat template so that the check also
# exercises the template and the special tokens it uses.
_PARITY_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

_HEAD_BYTES = 1 << 20


def gguf_fingerprint(gguf_file: Path) -> dict[str, Any]:
    """Cheap identity of a GGUF file: size plus sha256 of its first MiB.

    Hashing the whole ~100 MB file on every resolve would be slow; the GGUF header (metadata,
    tensor table) and the first tensors sit in the first MiB, so a different checkpoint of the same
    size is still caught. mtime is recorded for information only: a reinstall of the same package
    changes it without changing the content.
    """
    st = gguf_file.stat()
    h = hashlib.sha256()
    with open(gguf_file, "rb") as f:
        h.update(f.read(_HEAD_BYTES))
    return {
        "file": gguf_file.name,
        "size": st.st_size,
        "sha256_first_1mib": h.hexdigest(),
        "mtime": st.st_mtime,
    }


def is_complete(out_dir: Path, gguf_file: Path | None = None) -> bool:
    """True if ``out_dir`` holds a finished conversion (of ``gguf_file``, when given)."""
    try:
        marker = json.loads((out_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("converter_version") != CONVERTER_VERSION:
        return False
    if not (out_dir / "config.json").is_file() or not (out_dir / "model.safetensors").is_file():
        return False
    if gguf_file is not None:
        want = gguf_fingerprint(gguf_file)
        have = marker.get("source", {})
        if (have.get("size"), have.get("sha256_first_1mib")) != (
            want["size"],
            want["sha256_first_1mib"],
        ):
            return False
    return True


def convert_gguf_to_safetensors(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf_file`` into a float32 safetensors model directory at ``out_dir``.

    The directory gets config.json, generation_config.json, model.safetensors, the tokenizer files
    (chat template included) and, written last, ``conversion.json`` with the parity check result.
    Work happens in a temporary sibling directory that is renamed into place only after the reload
    check passed, so an interrupted conversion never leaves a directory that looks usable.
    Returns ``out_dir``.
    """
    gguf_file = Path(gguf_file).resolve()
    out_dir = Path(out_dir)
    if not gguf_file.is_file():
        raise ModelResolutionError(f"GGUF file not found: {gguf_file}")
    try:
        # transformers needs gguf to read the file; fail here with an install hint instead.
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelResolutionError(
            "converting a GGUF model needs the 'gguf' package: pip install 'gguf>=0.10'"
        ) from e

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same filesystem as out_dir, so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        t0 = time.monotonic()
        report = _convert_into(gguf_file, tmp)
        report["seconds"] = round(time.monotonic() - t0, 1)
        # The marker goes in last: a directory without it is treated as unfinished.
        (tmp / MARKER_NAME).write_text(json.dumps(report, indent=2) + "\n")
        _apply_umask(tmp)
        _move_into_place(tmp, out_dir, gguf_file)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s -> %s in %.1f s", gguf_file.name, out_dir, report["seconds"])
    return out_dir


def _apply_umask(directory: Path) -> None:
    """mkdtemp (and safetensors' writer) create owner-only files; a shared model cache should get
    the usual permissions instead, so another user or a serving process can read it."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~mask)


def _move_into_place(tmp: Path, out_dir: Path, gguf_file: Path) -> None:
    if out_dir.exists():
        if is_complete(out_dir, gguf_file):
            # Another process finished the same conversion first; keep theirs, drop ours.
            return
        # Leftover of an interrupted or outdated conversion.
        shutil.rmtree(out_dir)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        # Lost a race against a concurrent converter between the check and the rename.
        if not is_complete(out_dir, gguf_file):
            raise


def _convert_into(gguf_file: Path, out_dir: Path) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_file.parent), gguf_file.name

    # GGUF dequantisation yields float32 tensors; ask for float32 explicitly so the default dtype
    # of a future transformers version cannot silently change what we store.
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    gguf_model.eval()
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    if not tokenizer.chat_template:
        raise ModelResolutionError(
            f"the GGUF file {gguf_file} has no chat template; it cannot be used as a chat model"
        )
    # GGUF metadata has no tokenizer max length, so transformers falls back to "unlimited" (1e30)
    # and truncation=True would silently not truncate; use the model's context length instead.
    context = getattr(gguf_model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:
        tokenizer.model_max_length = context

    # The GGUF-loaded config carries quantization_config={"quant_method": "gguf", ...}; saved as
    # is, every later from_pretrained would try to treat the safetensors as GGUF-quantised.
    config = gguf_model.config.__class__.from_dict(
        {
            k: v
            for k, v in gguf_model.config.to_dict().items()
            if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")
        }
    )
    config.dtype = torch.float32
    # Float32 storage (540 MB instead of 270 MB for bf16): keeps fine-tuning numerics simple and is
    # exactly what the dequantised GGUF holds, so nothing is rounded a second time.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    # strict=True: a tensor the GGUF mapping missed would otherwise stay randomly initialised.
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        # SmolLM2 ties lm_head to embed_tokens; load_state_dict copies values into the shared
        # parameter, but make sure they really are one tensor so the save stores it once.
        model.tie_weights()
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        if out_emb is not None and out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
            raise RuntimeError("tied embeddings did not stay tied after rebuilding the model")
    model.generation_config = gguf_model.generation_config
    model.eval()

    prompt_ids = tokenizer.apply_chat_template(
        _PARITY_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        ref_logits = gguf_model(prompt_ids).logits
    del gguf_model, state

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del model

    # Reload exactly the way the training pipeline will, and compare against the GGUF model.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, use_safetensors=True)
    reloaded.eval()
    re_tok = AutoTokenizer.from_pretrained(out_dir)
    if not re_tok.chat_template:
        raise RuntimeError("the chat template was lost when saving the tokenizer")
    re_ids = re_tok.apply_chat_template(
        _PARITY_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    if not torch.equal(re_ids, prompt_ids):
        raise RuntimeError(
            f"tokenizer changed after saving: {prompt_ids.tolist()} != {re_ids.tolist()}"
        )
    with torch.no_grad():
        new_logits = reloaded(prompt_ids).logits
    max_diff = (new_logits - ref_logits).abs().max().item()
    same_argmax = bool(torch.equal(new_logits.argmax(-1), ref_logits.argmax(-1)))
    if not max_diff <= _MAX_LOGIT_DIFF or not same_argmax:
        raise RuntimeError(
            f"converted model does not reproduce the GGUF model: max |logit diff| {max_diff:.3g}"
            f" (limit {_MAX_LOGIT_DIFF}), same argmax: {same_argmax}"
        )
    n_params = sum(p.numel() for p in reloaded.parameters())
    tied = bool(getattr(reloaded.config, "tie_word_embeddings", False))

    return {
        "converter_version": CONVERTER_VERSION,
        "source": gguf_fingerprint(gguf_file),
        "model_type": reloaded.config.model_type,
        "architecture": type(reloaded).__name__,
        "parameters": n_params,
        "stored_dtype": "float32",
        "tie_word_embeddings": tied,
        "parity_check": {
            "prompt_tokens": int(prompt_ids.shape[-1]),
            "max_abs_logit_diff": max_diff,
            "same_argmax": same_argmax,
            "limit": _MAX_LOGIT_DIFF,
        },
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_unix": int(time.time()),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tuneforge.models.gguf_convert MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = convert_gguf_to_safetensors(Path(args[0]), Path(args[1]))
    except ModelResolutionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
