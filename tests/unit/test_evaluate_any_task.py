"""``tuneforge evaluate MODEL_DIR FILE`` on exports of every kind of task and method: tiny runs are trained
and exported, then the command scores the export on the run's own validation file, through the CLI.
The behaviour check: its metrics are the run's final validation metrics (same rows, same code)."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest

from tests.unit.test_task_seq2seq import ANTONYMS, tiny_bart_dir  # noqa: F401 - a fixture
from tests.unit.test_tasks_tiny import FILLER, PEOPLE, PLACES, _conll
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.train.run import train

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def evaluate_ok(*args) -> tuple[dict, str]:
    """Run the command; its eval.json (from output_dir=, the last argument) and console output."""
    result = invoke("evaluate", *args)
    assert result.exit_code == 0, result.output
    out = str(args[-1]).partition("=")[2]
    from pathlib import Path

    return json.loads((Path(out) / "eval.json").read_text()), result.output


def assert_same_metrics(evaluated: dict, trained: dict, required: set[str]) -> None:
    """The task's metrics are there, and every metric both have is the same (numbers to 1e-6)."""
    assert required <= set(evaluated), sorted(evaluated)
    shared = set(evaluated) & set(trained) - {"extra", "step", "base", "samples"}
    assert required <= shared, sorted(shared)
    for key in sorted(shared):
        _same(evaluated[key], trained[key], key)


def _same(a, b, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), f"{where}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _base(make_recipe, task: str, data: dict, *, section: dict | None = None, model: dict | None = None):
    """The tiny recipe's resolved dict with this task, data section and task settings; a short run, exported."""
    from tuneforge.recipe import resolved_dict

    d = resolved_dict(make_recipe())
    d.pop("classification")
    d.update(task=task, data={"dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}, **data})
    d["train"].update(metric_for_best=None, max_steps=12, eval_every_steps=1000)  # one evaluation: the final one
    d["export"]["enabled"] = True
    if model:
        d["model"] = model
    if section:
        d[task] = section
    return d


def _recipe(d: dict, *overrides: str):
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe

    return Recipe.model_validate(apply_overrides(d, list(overrides)))


# ------------------------------------------------------------------------------------- NER, CoNLL




def test_ner_export_scores_a_conll_file_like_its_run(tmp_path, make_recipe, one_thread):
    rng = random.Random(0)
    tr, dev = _conll(tmp_path / "tr.iob2", 64, rng), _conll(tmp_path / "dev.conll", 20, rng)
    recipe = _recipe(_base(make_recipe, "token_classification", {"train_file": str(tr), "validation_file": str(dev)}),
                     "train.max_steps=10", "train.learning_rate=3e-3")
    result = train(recipe)
    evaluated, output = evaluate_ok(result.export_dir, dev, f"output_dir={tmp_path / 'ev'}")
    assert_same_metrics(evaluated, result.metrics,
                        {"entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss", "per_type"})
    assert f"entity F1 {evaluated['entity_f1']:.4f}" in output and "on 20 examples of" in output
    assert str(dev) in output and "token_classification" in output and str(tmp_path / "ev" / "eval.md") in output
    extra = evaluated["extra"]
    assert (extra["task"], extra["method"], extra["export"], extra["examples"]) == (
        "token_classification", "full", "plain", 20)
    assert (tmp_path / "ev" / "eval.md").exists() and (tmp_path / "ev" / "rejected.jsonl").read_text() == ""


# ------------------------------------------------------------------------------------ seq2seq, pairs






def _pairs(path, n, rng):
    words = sorted(ANTONYMS)
    rows = []
    for _ in range(n):
        source = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        rows.append({"src": source, "tgt": " ".join(ANTONYMS[w] for w in source.split())})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_seq2seq_export_scores_a_pairs_file_like_its_run(tmp_path, make_recipe, tiny_bart_dir, one_thread):
    rng = random.Random(1)
    tr, dev = tmp_path / "tr.jsonl", tmp_path / "dev.jsonl"
    _pairs(tr, 64, rng)
    rows = _pairs(dev, 12, rng)
    d = _base(make_recipe, "seq2seq", {"train_file": str(tr), "validation_file": str(dev), "text_column": "src",
                                       "target_column": "tgt"},
              model={"name": str(tiny_bart_dir), "max_length": 32},
              section={"max_target_length": 16, "generation": {"max_new_tokens": 8, "batch_size": 16}})
    result = train(_recipe(d, "train.max_steps=60", "train.learning_rate=3e-3"))
    required = {"bleu", "chrf", "rougeL", "token_accuracy", "loss", "generated_examples"}
    evaluated, output = evaluate_ok(result.export_dir, dev, f"output_dir={tmp_path / 'ev'}")
    assert_same_metrics(evaluated, result.metrics, required)
    assert evaluated["samples"] == result.metrics["samples"]  # the same generated outputs
    assert f"BLEU {evaluated['bleu']:.2f}" in output and "on 12 examples" in output
    # the same pairs as two line-aligned files (format parallel): the same figures
    (tmp_path / "dev.src").write_text("".join(r["src"] + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "dev.tgt").write_text("".join(r["tgt"] + "\n" for r in rows), encoding="utf-8")
    parallel, _ = evaluate_ok(result.export_dir, tmp_path / "dev.src", f"target_file={tmp_path / 'dev.tgt'}",
                              f"output_dir={tmp_path / 'ev2'}")
    assert_same_metrics(parallel, result.metrics, required)


# -------------------------------------------------------------------------------- causal LM, chat


def _chats(path, n, rng):
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"messages": [{"role": "user", "content": f"add {a} and {b}"},
                                  {"role": "assistant", "content": f"the answer is {a + b}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_causal_lm_export_scores_a_chat_file_like_its_run(tmp_path, make_recipe, tiny_llama_dir, one_thread):
    rng = random.Random(2)
    tr, dev = _chats(tmp_path / "tr.jsonl", 64, rng), _chats(tmp_path / "dev.jsonl", 12, rng)
    d = _base(make_recipe, "causal_lm", {"train_file": str(tr), "validation_file": str(dev),
                                         "formatting": {"template": "chatml"}},
              model={"name": str(tiny_llama_dir), "max_length": 64},
              section={"eval_metric": "final_number", "eval_examples": 8, "compare_with_base": False,
                       "generation": {"max_new_tokens": 8}})
    result = train(_recipe(d, "train.max_steps=48", "train.learning_rate=1e-2"))
    evaluated, output = evaluate_ok(result.export_dir, dev, f"output_dir={tmp_path / 'ev'}")
    assert_same_metrics(evaluated, result.metrics, {"loss", "perplexity", "final_number_accuracy", "answered"})
    assert f"perplexity {evaluated['perplexity']:.2f}" in output and "on 12 examples" in output


# ---------------------------------------------------- a prefix-tuning classifier, bad rows, bad columns


@pytest.fixture
def prefix_run(make_recipe, one_thread):
    result = train(make_recipe("method=prefix", "train.max_steps=12", "export.enabled=true",
                               "train.learning_rate=1e-2", "train.eval_every_steps=1000"))
    assert result.verification["export"] == "peft_prompt"
    return result


def test_prefix_export_scores_like_its_run_and_rejects_bad_files(tmp_path, prefix_run, toy_data):
    dev = toy_data[1]
    evaluated, output = evaluate_ok(prefix_run.export_dir, dev, f"output_dir={tmp_path / 'ev'}")
    assert_same_metrics(evaluated, prefix_run.metrics,
                        {"accuracy", "macro_f1", "loss", "confusion_matrix", "per_class", "num_examples"})
    assert (tmp_path / "ev" / "confusion_matrix.png").exists()
    assert (evaluated["extra"]["method"], evaluated["extra"]["export"]) == ("prefix", "peft_prompt")
    assert f"accuracy {evaluated['accuracy']:.4f}, macro F1" in output and "on 24 examples" in output
    # the prefix counts: the export's base model alone (trained head, no prefix) scores otherwise
    alone = tmp_path / "alone"
    shutil.copytree(prefix_run.export_dir / "base_model", alone)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(prefix_run.export_dir / name, alone / name)
    without, _ = evaluate_ok(alone, dev, f"output_dir={tmp_path / 'ev-alone'}")
    assert abs(without["loss"] - evaluated["loss"]) > 1e-4, (without["loss"], evaluated["loss"])

    # too many rows the data stage rejects: exit 2, the count, the share, the reason, and rejected.jsonl
    bad = tmp_path / "bad.tsv"
    bad.write_text(dev.read_text() + "".join(f"so so film {i}\tmaybe\n" for i in range(4)), encoding="utf-8")
    result = invoke("evaluate", prefix_run.export_dir, bad, f"output_dir={tmp_path / 'bad'}")
    assert result.exit_code == 2, result.output
    assert "4 of 28 rows rejected (14.3% > max_rejected_fraction 1%)" in result.output
    assert "4 x unknown label 'maybe'" in result.output and "rejected.jsonl" in result.output
    assert len((tmp_path / "bad" / "rejected.jsonl").read_text().splitlines()) == 4
    # allowed: the other rows are scored (the run's 24), and the rejected ones are said
    evaluated, output = evaluate_ok(prefix_run.export_dir, bad, "max_rejected_fraction=0.2",
                                    f"output_dir={tmp_path / 'bad'}")
    assert "rejected 4 of 28 rows (14.3%), most common: unknown label 'maybe' (4)" in output
    assert_same_metrics(evaluated, prefix_run.metrics, {"accuracy", "confusion_matrix"})

    # an unknown column: the existing clear error, exit 2
    result = invoke("evaluate", prefix_run.export_dir, dev, "text_column=nope", f"output_dir={tmp_path / 'col'}")
    assert result.exit_code == 2, result.output
    assert "missing column 'nope' (available columns: sentence, label)" in result.output


def test_plain_transformers_classifier_without_a_card_still_works(tmp_path, tiny_model_dir, toy_data, one_thread):
    """No tuneforge card: classification from config.json's architecture, columns guessed (sentence, label)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig.from_pretrained(tiny_model_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
                                        label2id={"negative": 0, "positive": 1})
    out = tmp_path / "hf"
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    evaluated, output = evaluate_ok(out, toy_data[1], f"output_dir={tmp_path / 'ev'}")
    assert evaluated["num_examples"] == 24 and sum(map(sum, evaluated["confusion_matrix"])) == 24
    assert evaluated["extra"]["method"] is None and evaluated["extra"]["task"] == "classification"
    assert "on 24 examples" in output


# ------------------------------------------------ regression, multi-label, extractive QA, masked LM


TOPICS = {"sport": ["goal", "match", "team"], "music": ["song", "band", "album"], "food": ["pasta", "bread", "soup"]}
WINNERS = ["alice", "bob", "carol", "dave", "erin", "frank"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _regression_rows(n, rng):
    rows = []
    for _ in range(n):
        words = [rng.choice(["good", "bad", "plain", "film", "story"]) for _ in range(rng.randint(3, 8))]
        rows.append({"text": " ".join(words), "score": words.count("good") - words.count("bad")})
    return rows


def _multilabel_rows(n, rng):
    rows = []
    for i in range(n):
        labels = sorted(rng.sample(sorted(TOPICS), rng.randint(0, 2)))
        words = [rng.choice(TOPICS[t]) for t in labels for _ in range(2)] + ["the", "news", "today"]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels if i % 2 or not labels else ";".join(labels)})
    return rows


def _squad(path, n, rng):
    paragraphs = []
    for i in range(n):
        name, other = rng.sample(WINNERS, 2)
        prefix = f"{' '.join(rng.choice(['race', 'rain', 'crowd', 'park']) for _ in range(rng.randint(1, 6)))} " \
                 f"{other} cheered and the winner was "
        paragraphs.append({"context": f"{prefix}{name} .", "qas": [
            {"id": f"q{i}", "question": "who won?", "answers": [{"text": name, "answer_start": len(prefix)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "races", "paragraphs": paragraphs}]}))
    return path


def _sentences(path, n, rng):
    words = FILLER + PEOPLE + PLACES
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + "\n" for _ in range(n)))
    return path


@pytest.mark.parametrize("task", ["regression", "multi_label", "extractive_qa", "masked_lm"])
def test_more_tasks_score_like_their_run(task, tmp_path, make_recipe, one_thread):
    rng = random.Random(3)
    if task == "regression":
        tr, dev = _jsonl(tmp_path / "tr.jsonl", _regression_rows(64, rng)), _jsonl(tmp_path / "dev.jsonl",
                                                                                 _regression_rows(16, rng))
        d = _base(make_recipe, task, {"train_file": str(tr), "validation_file": str(dev), "label_column": "score"})
        required = {"mse", "mae", "pearson", "spearman", "loss"}
    elif task == "multi_label":
        tr, dev = _jsonl(tmp_path / "tr.jsonl", _multilabel_rows(64, rng)), _jsonl(tmp_path / "dev.jsonl",
                                                                                 _multilabel_rows(16, rng))
        d = _base(make_recipe, "classification", {"train_file": str(tr), "validation_file": str(dev),
                                                  "label_separator": ";"}, section={"multi_label": True})
        required = {"micro_f1", "macro_f1", "micro_f1_at_0.5", "thresholds", "loss"}
    elif task == "extractive_qa":
        tr, dev = _squad(tmp_path / "tr.json", 48, rng), _squad(tmp_path / "dev.json", 12, rng)
        d = _base(make_recipe, task, {"train_file": str(tr), "validation_file": str(dev)},
                  section={"doc_stride": 16})
        d["model"]["max_length"] = 64
        required = {"f1", "exact_match", "loss"}
    else:
        tr, dev = _sentences(tmp_path / "tr.txt", 64, rng), _sentences(tmp_path / "dev.txt", 16, rng)
        d = _base(make_recipe, task, {"train_file": str(tr), "validation_file": str(dev)})
        required = {"loss", "perplexity", "masked_accuracy"}
    result = train(_recipe(d, "train.max_steps=16", "train.learning_rate=3e-3"))
    evaluated, output = evaluate_ok(result.export_dir, dev, f"output_dir={tmp_path / 'ev'}")
    assert_same_metrics(evaluated, result.metrics, required)
    assert "on 16 examples" in output or "on 12 examples" in output, output
