"""Pretraining objectives on tiny random models: masked LM (BERT) and causal LM (GPT-2, Llama) from
scratch, with streamed packing, paragraph rows and a sequential split; and the masking statistics."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from tuneforge.data.masking import IGNORE, MaskingSpec, mask_tokens
from tuneforge.data.packing import stream_blocks

WORDS = "the cat sat on a mat and the dog ran to the red ball while birds sang in old trees".split()


# ------------------------------------------------------------------------------------------- masking


def test_masking_statistics_are_15_percent_and_80_10_10():
    spec = MaskingSpec(mask_id=4, vocab_size=1000, special_ids=frozenset({0, 1, 2, 3, 4}), seed=7)
    rng = np.random.default_rng(0)
    chosen = masked = randomised = kept = maskable = 0
    for i in range(3000):
        ids = [2] + rng.integers(5, 1000, size=int(rng.integers(20, 120))).tolist() + [3]
        inputs, labels = mask_tokens(ids, spec, i, epoch=0)
        assert inputs[0] == 2 and inputs[-1] == 3 and labels[0] == labels[-1] == IGNORE  # specials untouched
        maskable += len(ids) - 2
        for x, y, original in zip(inputs, labels, ids):
            if y == IGNORE:
                assert x == original
                continue
            assert y == original
            chosen += 1
            if x == 4:
                masked += 1
            elif x == original:
                kept += 1
            else:
                randomised += 1
                assert x not in spec.special_ids
        assert sum(y != IGNORE for y in labels) == spec.targets(ids) == max(1, round(0.15 * (len(ids) - 2)))
    assert abs(chosen / maskable - 0.15) < 0.005
    # random replacements equal to the original by chance (1 in ~1000) count as kept
    assert abs(masked / chosen - 0.8) < 0.01 and abs(randomised / chosen - 0.1) < 0.01 and abs(kept / chosen - 0.1) < 0.01


def test_masking_is_fixed_per_example_and_epoch_and_changes_between_epochs():
    spec = MaskingSpec(mask_id=4, vocab_size=100, special_ids=frozenset({0, 4}), seed=1)
    ids = list(range(5, 65))
    assert mask_tokens(ids, spec, 3, 0) == mask_tokens(ids, spec, 3, 0)
    assert mask_tokens(ids, spec, 3, 0) != mask_tokens(ids, spec, 3, 1)
    assert mask_tokens(ids, spec, 3, None) == mask_tokens(ids, spec, 3, None) != mask_tokens(ids, spec, 3, 0)
    assert mask_tokens(ids, spec, 3, 0) != mask_tokens(ids, spec, 4, 0)


def test_masking_rejects_bad_rates():
    with pytest.raises(ValueError, match="mask_share 0.9 \\+ random_share 0.2 must lie in \\[0, 1\\]"):
        MaskingSpec(mask_id=1, vocab_size=10, special_ids=frozenset(), mask_share=0.9, random_share=0.2)


# ------------------------------------------------------------------------------------------- packing


def test_stream_blocks_predict_every_token_once():
    docs = [list(range(0, 7)), list(range(7, 10)), list(range(10, 23))]
    blocks = stream_blocks(docs, 5, overlap=1)
    assert blocks == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12], [12, 13, 14, 15, 16],
                      [16, 17, 18, 19, 20], [20, 21, 22]]
    targets = [t for b in blocks for t in b[1:]]  # a causal LM predicts all but each block's first token
    assert targets == list(range(1, 23))
    assert stream_blocks(docs, 5, overlap=0)[-1] == [20, 21, 22]
    assert stream_blocks([[1]], 5, overlap=1) == []


# --------------------------------------------------------------------------------- tiny end to end


def _corpus(path, paragraphs: int, seed: int = 0):
    rng = random.Random(seed)
    text = "\n\n".join("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
                                 for _ in range(rng.randint(1, 3))) for _ in range(paragraphs))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _recipe(tmp_path, corpus, task, arch, *overrides):
    from tests.conftest import minilm_dir
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe

    d = {
        "name": f"pre-{task}", "seed": 3, "output_dir": str(tmp_path / "runs"), "task": task, "method": "full",
        "model": {"architecture": arch, "tokenizer": str(minilm_dir()), "max_length": 33},
        "data": {"sources": [{"path": str(corpus), "format": "text", "text_unit": "paragraph"}],
                 "split": {"validation_fraction": 0.1, "order": "sequential"},
                 "dedup": {"exact": False, "near": False},
                 "decontaminate": {"enabled": False},
                 "formatting": {"packing": True, "packing_strategy": "stream", "max_length": 33,
                                "add_eos": False, "document_separator": "\n\n"}},
        "train": {"epochs": 6, "batch_size": 16, "learning_rate": 3e-3, "scheduler": "constant", "warmup_ratio": 0.0,
                  "log_every_steps": 1, "precision": "fp32", "eval_every_steps": 1000},
        "export": {"enabled": True},
    }
    return Recipe.model_validate(apply_overrides(d, list(overrides)))


ARCHS = {
    "gpt2": {"family": "gpt2", "layers": 2, "heads": 2, "hidden": 32},
    "llama": {"family": "llama", "layers": 2, "heads": 4, "kv_heads": 2, "hidden": 32, "intermediate": 64},
    "bert": {"family": "bert", "layers": 2, "heads": 2, "hidden": 32},
}


@pytest.mark.parametrize("task,family", [("causal_lm", "gpt2"), ("causal_lm", "llama"), ("masked_lm", "bert")])
def test_pretraining_from_scratch_loss_falls_and_export_reloads(task, family, tmp_path, one_thread):
    from tuneforge.train.run import train

    corpus = _corpus(tmp_path / "corpus.txt", 160)
    result = train(_recipe(tmp_path, corpus, task, ARCHS[family]))
    losses = [r["loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    # uniform over the 30k vocabulary is 30,522; the corpus uses 20 words
    assert result.metrics["perplexity"] < 100, result.metrics
    if task == "masked_lm":
        assert result.metrics["masked_accuracy"] > 0.1, result.metrics  # 20 words: 0.05 by chance
    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] < 1e-3
    # the validation rows are the corpus's last paragraphs, in order (sequential split)
    paragraphs = corpus.read_text().rstrip("\n").split("\n\n")
    val = [json.loads(line)["text"] for line in (result.run_dir / "data" / "validation.jsonl").read_text().splitlines()]
    assert val == paragraphs[-len(val):] and len(val) == 16


def test_architecture_rules_name_the_key(tmp_path):
    from pydantic import ValidationError

    corpus = _corpus(tmp_path / "c.txt", 20)
    with pytest.raises(ValidationError, match="family bert cannot do task causal_lm"):
        _recipe(tmp_path, corpus, "causal_lm", ARCHS["bert"])
    with pytest.raises(ValidationError, match="model.architecture starts from random weights: use method: full"):
        _recipe(tmp_path, corpus, "causal_lm", ARCHS["gpt2"], "method=lora")
    with pytest.raises(ValidationError, match="hidden 30 is not a multiple of heads 4"):
        _recipe(tmp_path, corpus, "causal_lm", {**ARCHS["gpt2"], "hidden": 30, "heads": 4})
    with pytest.raises(ValidationError, match="model.architecture needs model.tokenizer"):
        _recipe(tmp_path, corpus, "causal_lm", ARCHS["gpt2"], "model.tokenizer=null")


def test_time_budget_stops_training_and_samples_are_logged_and_reported(tmp_path, one_thread):
    from tuneforge.train.run import train

    corpus = _corpus(tmp_path / "corpus.txt", 160)
    result = train(_recipe(tmp_path, corpus, "causal_lm", ARCHS["gpt2"], "train.max_minutes=0.0001",
                           "train.eval_every_steps=1", "causal_lm.sample_prompts=['the cat', 'a dog']",
                           "causal_lm.sample_generation.max_new_tokens=5"))
    assert result.global_step == 1 < result.total_steps and not result.halted
    [record] = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and [s["prompt"] for s in record["samples"]] == ["the cat", "a dog"]
    assert [s["prompt"] for s in result.metrics["samples"]] == ["the cat", "a dog"]
    report = (result.run_dir / "eval" / "eval.md").read_text()
    assert "## Samples" in report and "**generated** (2):" in report


def test_min_lr_ratio_is_where_decay_ends():
    from tuneforge.train.optim import lr_factor

    assert lr_factor(100, total=100, warmup=10, kind="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(55, total=100, warmup=10, kind="cosine", min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(100, total=100, warmup=10, kind="linear", min_ratio=0.2) == pytest.approx(0.2)
    assert lr_factor(5, total=100, warmup=10, kind="cosine", min_ratio=0.1) == pytest.approx(0.6)


def test_paragraph_rows_and_sequential_split(tmp_path):
    from tuneforge.data.records import Row
    from tuneforge.data.sources import SourceConfig, iter_source
    from tuneforge.data.split import split_indices

    path = tmp_path / "t.txt"
    path.write_text("A:\nline one\n\nB:\nline two\nline three\n\n\nC:\nend\n", encoding="utf-8")
    rows = [r for r in iter_source(SourceConfig(path=path, format="text", text_unit="paragraph")) if isinstance(r, Row)]
    assert [(r.line, r.data["text"]) for r in rows] == [(1, "A:\nline one"), (4, "B:\nline two\nline three"),
                                                         (9, "C:\nend")]
    parts = split_indices(10, labels=[0, 1] * 5, groups=None, validation_fraction=0.2, test_fraction=0.1, seed=0,
                          sequential=True)
    assert parts == (list(range(7)), [7, 8], [9])


def test_run_trains_its_own_char_tokenizer_on_the_training_split_only(tmp_path, one_thread):
    from transformers import AutoTokenizer

    from tuneforge.train.run import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc abc\n\nab ca\n\nbca bb\n\n" * 20 + "xyz!\n", encoding="utf-8")  # x, y, z, ! only at the end
    recipe = _recipe(tmp_path, corpus, "causal_lm", ARCHS["gpt2"], "model.tokenizer={type: char}",
                     "train.max_steps=3", "data.split.validation_fraction=0.02")
    result = train(recipe)
    tok = AutoTokenizer.from_pretrained(result.run_dir / "tokenizer")
    vocab = set(tok.get_vocab())
    assert {"a", "b", "c", " ", "\n"} <= vocab and not {"x", "y", "z", "!"} & vocab
    info = json.loads((result.run_dir / "tokenizer" / "tokenizer_training.json").read_text())
    assert info["config"]["type"] == "char"
    # the export carries that tokenizer
    assert AutoTokenizer.from_pretrained(result.export_dir).get_vocab() == tok.get_vocab()
