"""A small encoder-decoder built offline from a BERT encoder (a "bert2bert" model).

No encoder-decoder checkpoint ships as a pip package, and the Hub may be unreachable, so the
``minilm-l6-bert2bert`` alias warm-starts one from all-MiniLM-L6-v2 (Rothe et al. 2020, "Leveraging
Pre-trained Checkpoints for Sequence Generation Tasks"): the encoder *and* the decoder start from
the BERT weights; only the decoder's cross-attention and its LM-head transform are new, so it needs
more steps than a pretrained seq2seq model but far fewer than one from scratch.

``transformers.EncoderDecoderModel`` does the composition; this module sets what BERT lacks for
generation ([CLS] starts the decoder, [SEP] ends it, [PAD] pads) and writes a directory that
``AutoModelForSeq2SeqLM`` and ``AutoTokenizer`` load like any other, atomically (a temporary
sibling renamed into place, a marker written last) so parallel runs never see half a model.

The attention kernel (``model.attn_implementation``) is not part of the build: a saved config names none,
and ``build.load_task_model`` passes the run's choice to ``from_pretrained``, which hands it to the encoder
and the decoder alike; so one cached build serves every kernel.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

MARKER_NAME = "warm_start.json"
BUILDER_VERSION = 1


def is_complete(out_dir: Path, encoder_dir: Path) -> bool:
    """True if ``out_dir`` holds a finished build from ``encoder_dir`` by this builder version."""
    try:
        marker = json.loads((Path(out_dir) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(encoder_dir) and (Path(out_dir) / "model.safetensors").is_file()


def build_bert2bert(encoder_dir: Path, out_dir: Path) -> Path:
    """Write an encoder-decoder warm-started from the BERT model in ``encoder_dir`` to ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, EncoderDecoderModel

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        # Seeded: the new cross-attention weights are random, and two builds must be identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(encoder_dir), str(encoder_dir))
        special = {"decoder_start_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        for key, value in special.items():
            setattr(model.config, key, value)
            setattr(model.generation_config, key, value)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps(_marker(encoder_dir), indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _marker(encoder_dir: Path) -> dict:
    weights = Path(encoder_dir) / "model.safetensors"
    size = weights.stat().st_size if weights.is_file() else None
    return {"builder_version": BUILDER_VERSION, "encoder": str(Path(encoder_dir).resolve()), "weights_size": size}
