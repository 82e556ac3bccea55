"""Extractive question answering (SQuAD style): reading, windowing, and answer extraction.

An extractive model predicts two token positions (answer start and end) in a window of
``[CLS] question [SEP] context [SEP]``, while the data marks the answer by *character* offset in
the context. Three steps bridge the two:

* ``read_squad`` reads a SQuAD v1.1 file into ``qa`` rows, rejecting a question whose answer text
  is not found at its ``answer_start`` (such a row would train the model on a wrong span);
* ``prepare_qa_features`` tokenises each question with its context, splitting a context longer
  than ``max_length`` into overlapping windows (``stride`` tokens of overlap, so an answer cut by
  one window boundary lies whole in the next), and maps the answer's characters to token
  positions in every window; a window that does not hold the whole answer points at the ``[CLS]``
  token, as in the BERT paper;
* ``postprocess_qa`` turns the model's start/end logits back into answer text: the best-scoring
  valid span over all windows of an example, cut from the context by character offsets (so the
  answer keeps the context's original case and spacing, whatever the tokenizer normalised).

transformers is never imported here: the tokenizer is passed in by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.text_formats import SOURCE_NAME_KEY, check_text_file
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.sections import Section

SQUAD_LAYOUT = '{"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", "answers"}]}]}]}'


class QAConfig(Section):
    """How long contexts are windowed and how answers are picked from the logits."""

    doc_stride: int = Field(
        128,
        ge=0,
        description="Tokens shared by consecutive windows of a context longer than the model's max_length; "
        "must be smaller than what a window leaves for the context after the question.",
    )
    n_best: int = Field(
        20,
        ge=1,
        description="Start and end candidates (highest logits) tried per window when picking the answer.",
    )
    max_answer_length: int = Field(
        30, ge=1, description="Longest answer, in tokens, the model may predict."
    )


# ---------------------------------------------------------------------------------- reading


def read_squad(path: Path, name: str) -> Iterator[Row | RejectedRow]:
    """One ``qa`` row per question of a SQuAD v1.1 JSON file, in file order.

    A row's ``line`` is the 1-based index of its question in the file (the n-th question of the
    file, counting over every article and paragraph), since JSON has no useful line per record.
    The file's layout is checked here, before the first ``next()``: a file that is not SQuAD
    raises ``DataError`` naming the first misplaced key. A question with a bad answer, an empty
    question or no answers becomes a ``RejectedRow`` with the reason.
    """
    path = Path(path)
    check_text_file(path)
    try:
        # utf-8-sig: Windows tools often save JSON with a byte-order mark, which json.load refuses.
        with open(path, encoding="utf-8-sig") as fh:
            document = json.load(fh)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{path}: not valid JSON ({where}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; convert it to UTF-8") from None
    paragraphs = _paragraphs(path, document)
    return _questions(path, name, paragraphs)


def _paragraphs(path: Path, document: Any) -> list[tuple[str, Any, list[Any]]]:
    """(where, context, questions) per paragraph, after checking the nesting SQuAD prescribes."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(
            f"{path}: not a SQuAD file: expected an object with a 'data' list, laid out as {SQUAD_LAYOUT}"
        )
    found = []
    for i, article in enumerate(document["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{i}] must be an object with a 'paragraphs' list ({SQUAD_LAYOUT})")
        for j, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{path}: {where} must be an object with 'context' and a 'qas' list")
            found.append((where, paragraph.get("context"), paragraph["qas"]))
    if not any(questions for _, _, questions in found):
        raise DataError(f"data file has no rows: {path} contains no questions")
    return found


def _questions(
    path: Path, name: str, paragraphs: list[tuple[str, Any, list[Any]]]
) -> Iterator[Row | RejectedRow]:
    number = 0
    for where, context, questions in paragraphs:
        for qa in questions:
            number += 1
            raw = json.dumps(qa, ensure_ascii=False, default=str)
            if not isinstance(context, str) or not context.strip():
                yield RejectedRow(str(path), number, f"{where} has no context text", raw)
                continue
            problem = _entry_problem(qa)
            if problem is None:
                data = {"question": qa.get("question"), "context": context, "answers": qa["answers"]}
                problem = check_qa_row(data)
            if problem is not None:
                yield RejectedRow(str(path), number, problem, raw)
                continue
            # Only the two answer keys the row kind defines (SQuAD files may carry more).
            data["answers"] = [{"text": a["text"], "answer_start": a["answer_start"]} for a in qa["answers"]]
            data["id"] = str(qa["id"])
            yield Row("qa", data, str(path), number, extra={SOURCE_NAME_KEY: name})


def _entry_problem(qa: Any) -> str | None:
    if not isinstance(qa, dict):
        return f"question entry is not an object (got {type(qa).__name__})"
    if qa.get("id") is None:
        return "missing 'id'"
    if not isinstance(qa.get("answers"), list):
        return "missing 'answers' list"
    return None


def check_qa_row(data: Mapping[str, Any]) -> str | None:
    """Why a ``qa`` row cannot be trained on (a reject reason), or None when it can.

    Every answer must be a non-empty ``text`` found verbatim at its ``answer_start`` in the
    context; at least one answer is required (unanswerable SQuAD v2 questions are not supported).
    Answer positions in the reasons are 1-based.
    """
    for key in ("question", "context"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} is not a string (got {type(value).__name__})"
        if value is None or not value.strip():
            return f"empty {key}"
    answers = data.get("answers")
    if not isinstance(answers, list) or not answers:
        return "no answers (every question needs one; SQuAD v2 unanswerable questions are not supported)"
    context = data["context"]
    for position, answer in enumerate(answers, start=1):
        problem = _answer_problem(answer, context)
        if problem is not None:
            return f"answer {position}: {problem}"
    return None


def _answer_problem(answer: Any, context: str) -> str | None:
    if not isinstance(answer, dict):
        return f"not an object with text and answer_start (got {type(answer).__name__})"
    text, start = answer.get("text"), answer.get("answer_start")
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        return f"answer_start must be a character offset >= 0 (got {start!r})"
    found = context[start : start + len(text)]
    if found == text:
        return None
    elsewhere = context.find(text)
    hint = f"; the text occurs at {elsewhere}" if elsewhere >= 0 else "; the text is not in the context"
    return f"text {text!r} is not at answer_start {start} (the context has {found!r} there{hint})"


# ------------------------------------------------------------------------------- windowing


def prepare_qa_features(
    rows_data: list[dict[str, Any]], tokenizer: Any, max_length: int = 384, stride: int = 128
) -> list[dict[str, Any]]:
    """Tokenised windows ("features") of every example; an example with a long context gives several.

    Each feature holds the tokenizer's model inputs (``input_ids``, ``attention_mask``, and
    ``token_type_ids`` when it makes them), unpadded; ``start_positions``/``end_positions``: the
    token span of the example's first answer, or both the ``[CLS]`` index (0 for BERT-like
    tokenizers) when the window does not hold the whole answer or there is no answer;
    ``example_index``: the position in ``rows_data``; ``offset_mapping``: per token its
    ``(start, end)`` characters in the context, None for question and special tokens.
    ``example_index`` and ``offset_mapping`` are for ``postprocess_qa``, not model inputs.

    The question always comes first, whole; only the context is cut. A question so long that a
    window has no room for more than ``stride`` context tokens raises ``DataError`` (check rows
    with ``qa_length_problem`` first to reject them instead).
    """
    _require_fast(tokenizer)
    if not rows_data:
        return []
    # Leading spaces would only waste window room; the rows themselves are left untouched.
    questions = [data["question"].lstrip() for data in rows_data]
    _check_room(rows_data, questions, tokenizer, max_length, stride)
    encoded = tokenizer(
        questions, [data["context"] for data in rows_data], truncation="only_second", max_length=max_length,
        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
    )  # fmt: skip
    inputs = [key for key in encoded if key not in ("offset_mapping", "overflow_to_sample_mapping")]
    features = []
    for window, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(window)
        offsets = [
            tuple(offset) if sequence_ids[k] == 1 else None
            for k, offset in enumerate(encoded["offset_mapping"][window])
        ]
        feature = {key: list(encoded[key][window]) for key in inputs}
        answers = rows_data[example_index].get("answers") or []
        start, end = _answer_tokens(answers, offsets, _cls_index(tokenizer, feature))
        feature.update(
            start_positions=start, end_positions=end, example_index=example_index, offset_mapping=offsets
        )
        features.append(feature)
    return features


def _check_room(
    rows_data: list[dict[str, Any]], questions: list[str], tokenizer: Any, max_length: int, stride: int
) -> None:
    """Raise ``DataError`` for the first question that leaves no room for the stride. Checked
    before encoding because the tokenizer aborts the whole batch (a Rust panic, not an exception
    naming the row) when a window has no room for more than ``stride`` context tokens."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for index, length in enumerate(lengths):
        problem = _room_problem(length, specials, max_length, stride)
        if problem is not None:
            raise DataError(f"question {rows_data[index].get('id', index)!r}: {problem}")


def qa_length_problem(question: str, tokenizer: Any, max_length: int, stride: int) -> str | None:
    """Why ``question`` leaves too little room for its context in a ``max_length`` window, or None.

    Each window holds the whole question plus the special tokens; the rest is context, and it must
    be longer than ``stride`` or the windows could not advance through the context.
    """
    question_tokens = len(tokenizer(question.lstrip(), add_special_tokens=False)["input_ids"])
    return _room_problem(question_tokens, tokenizer.num_special_tokens_to_add(pair=True), max_length, stride)


def _room_problem(question_tokens: int, specials: int, max_length: int, stride: int) -> str | None:
    room = max_length - question_tokens - specials
    if room > stride:
        return None
    return (
        f"the question is {question_tokens} tokens, leaving {max(room, 0)} of max_length {max_length} "
        f"for the context, which must be more than the stride ({stride}); raise max_length, lower the "
        "stride, or shorten the question"
    )


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TuneforgeError(
            "extractive QA needs a fast tokenizer (one with offset mappings), but "
            f"{type(tokenizer).__name__} is a slow one; use a model that ships a tokenizer.json"
        )


def _cls_index(tokenizer: Any, feature: Mapping[str, Any]) -> int:
    """Where "no answer in this window" points: the CLS token (first for BERT, last for XLNet)."""
    cls_id = getattr(tokenizer, "cls_token_id", None)
    ids = feature["input_ids"]
    return ids.index(cls_id) if cls_id is not None and cls_id in ids else 0


def _answer_tokens(
    answers: Sequence[Mapping[str, Any]], offsets: Sequence[tuple[int, int] | None], cls: int
) -> tuple[int, int]:
    """Token span of the first answer inside this window, or ``(cls, cls)`` when it is not whole in it."""
    context_tokens = [k for k, offset in enumerate(offsets) if offset is not None]
    if not answers or not context_tokens:
        return cls, cls
    # Training follows the first answer (SQuAD train has exactly one); the others are for evaluation.
    text = answers[0]["text"]
    # Spaces around the answer text belong to no token; measure the span without them.
    start_char = answers[0]["answer_start"] + len(text) - len(text.lstrip())
    end_char = answers[0]["answer_start"] + len(text.rstrip())
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return cls, cls
    # The last token starting at or before the answer's first character, and the first token
    # ending at or after its last one (an answer may start or end inside a sub-token).
    start = max(k for k in context_tokens if offsets[k][0] <= start_char)
    end = min(k for k in context_tokens if offsets[k][1] >= end_char)
    return start, end


# ---------------------------------------------------------------------------- postprocessing


def postprocess_qa(
    features: Sequence[Mapping[str, Any]],
    start_logits: Sequence[Sequence[float]],
    end_logits: Sequence[Sequence[float]],
    contexts: Sequence[str],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[str]:
    """The predicted answer text of every example: its best valid span over all its windows.

    ``start_logits[i]``/``end_logits[i]`` belong to ``features[i]`` and may be longer than it
    (right padding of a batch); arrays and float32 CPU tensors work as well as lists. For each window the
    ``n_best`` highest start and end logits are paired; a pair is valid when both tokens are in
    the context, the end is not before the start and the span is at most ``max_answer_length``
    tokens. The score is the sum of the two logits; an example with no valid span gets ``""``.
    """
    import numpy as np

    if not len(features) == len(start_logits) == len(end_logits):
        raise ValueError(
            f"{len(features)} features, {len(start_logits)} start and {len(end_logits)} end logit rows: "
            "they must be the same windows"
        )
    best: dict[int, tuple[float, str]] = {}
    for feature, starts, ends in zip(features, start_logits, end_logits):
        offsets = feature["offset_mapping"]
        starts = np.asarray(starts, dtype=np.float64)[: len(offsets)]
        ends = np.asarray(ends, dtype=np.float64)[: len(offsets)]
        # Stable sort of the negated logits: highest first, ties in token order, so the answer
        # does not depend on the sort algorithm.
        top_starts = np.argsort(-starts, kind="stable")[:n_best]
        top_ends = np.argsort(-ends, kind="stable")[:n_best]
        example = feature["example_index"]
        context = contexts[example]
        for s in top_starts.tolist():
            for e in top_ends.tolist():
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(starts[s] + ends[e])
                if example not in best or score > best[example][0]:
                    best[example] = (score, context[offsets[s][0] : offsets[e][1]])
    return [best[i][1] if i in best else "" for i in range(len(contexts))]
