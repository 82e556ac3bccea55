"""``tuneforge prepare`` on broken input: one clear message or a quarantined row, never a traceback.

Every bad-input case ends one of two ways: exit code 2 with a message naming the file and the
problem, or exit code 0 with the bad row in ``rejected.jsonl`` (file, line, reason) and the good
rows prepared. ``--preview N`` shows what the model will see: chat rows through the chat template
with the trained span marked ``⟦ ⟧`` (CliRunner's output is not a terminal), classification rows
with their label and token count.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data.readers import UNDECODABLE
from tuneforge.recipe import resolved_dict

runner = CliRunner()

WORDS = (
    "apple river stone cloud market window garden silver engine forest candle harbor pencil thunder meadow "
    "rocket violin desert crystal lantern bridge copper falcon glacier hammer island jacket kettle ladder magnet"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct 8-word sentences (no two are near-duplicates)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.sample(WORDS, 8))
        if text not in out:
            out.append(text)
    return out


def good_jsonl(n: int = 20) -> str:
    return "".join(json.dumps({"text": t, "label": ("neg", "pos")[i % 2]}) + "\n" for i, t in enumerate(sentences(n)))


def write_recipe(tmp_path: Path, train: Path, *, model: str = "minilm-l6", **data) -> Path:
    recipe = {"name": "prep", "output_dir": str(tmp_path / "runs"), "model": {"name": model},
              "data": {"train_file": str(train), "split": {"validation_fraction": 0.25}, **data}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def prepare(*args):
    result = runner.invoke(app, ["prepare", *(str(a) for a in args)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def rejected(tmp_path: Path) -> list[dict]:
    path = tmp_path / "runs" / "prep" / "data" / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


LENIENT = "data.max_rejected_fraction=0.5"


# ---------------------------------------------------------------------------------- broken files


def test_truncated_last_jsonl_line_fails_over_the_threshold(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(good_jsonl() + '{"text": "cut off', encoding="utf-8")  # the write stopped mid-line
    result = prepare(write_recipe(tmp_path, train))
    assert result.exit_code == 2
    assert (f"error: {train}: 1 of 21 rows rejected (4.8% > data.max_rejected_fraction 1%); most common: "
            "1 x malformed JSON. See rejected.jsonl for every row and reason.") in result.output
    [row] = rejected(tmp_path)  # written before the run stopped
    assert (row["line"], row["raw"]) == (21, '{"text": "cut off')


def test_truncated_last_jsonl_line_is_quarantined(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(good_jsonl() + '{"text": "cut off', encoding="utf-8")
    result = prepare(write_recipe(tmp_path, train), LENIENT)
    assert result.exit_code == 0, result.output
    assert "splits: train 15, validation 5, test 0" in result.output
    assert "rows read: 21; rejected or removed: 1 " in result.output  # the unreadable row counts as read
    [row] = rejected(tmp_path)
    assert (row["file"], row["line"], row["stage"], row["reason"]) == (
        str(train), 21, "read", "malformed JSON: Unterminated string starting at (column 10)")


def test_csv_row_with_a_wrong_column_count_is_quarantined(tmp_path):
    rows = [f"{t},{('neg', 'pos')[i % 2]}" for i, t in enumerate(sentences(20))]
    train = tmp_path / "train.csv"
    train.write_text("\n".join(["text,label", *rows[:10], "an extra,comma,pos", *rows[10:]]) + "\n", encoding="utf-8")
    result = prepare(write_recipe(tmp_path, train), LENIENT)
    assert result.exit_code == 0, result.output
    assert "splits: train 15, validation 5, test 0" in result.output
    [row] = rejected(tmp_path)
    assert (row["file"], row["line"], row["reason"], row["raw"]) == (
        str(train), 12, "wrong number of fields: expected 2, got 3", "an extra,comma,pos")


def test_latin1_row_is_quarantined(tmp_path):
    lines = good_jsonl(20).encode().splitlines(keepends=True)
    train = tmp_path / "train.jsonl"
    train.write_bytes(b"".join(lines[:10]) + b'{"text": "caf\xe9 au lait", "label": "pos"}\n' + b"".join(lines[10:]))
    result = prepare(write_recipe(tmp_path, train), LENIENT)
    assert result.exit_code == 0, result.output
    assert "splits: train 15, validation 5, test 0" in result.output
    [row] = rejected(tmp_path)
    assert (row["file"], row["line"], row["reason"]) == (str(train), 11, UNDECODABLE)
    assert row["raw"] == '{"text": "caf\ufffd au lait", "label": "pos"}'


def test_utf16_file_is_a_clear_error(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_bytes(good_jsonl().encode("utf-16"))
    result = prepare(write_recipe(tmp_path, train))
    assert result.exit_code == 2
    assert (f"error: {train} is not UTF-8 text: it starts with a UTF-16 byte-order mark; convert it to "
            "UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 in.txt > out.txt`") in result.output


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.tsv"])
def test_empty_file_is_a_clear_error(tmp_path, name):
    train = tmp_path / name
    train.write_bytes(b"")
    result = prepare(write_recipe(tmp_path, train))
    assert result.exit_code == 2
    assert f"error: data file has no rows: {train} is empty (0 bytes)" in result.output


def test_missing_validation_file_is_a_clear_error(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(good_jsonl(), encoding="utf-8")
    result = prepare(write_recipe(tmp_path, train, validation_file=str(tmp_path / "dev.jsonl"), split={}))
    assert result.exit_code == 2
    assert f"error: data.validation_file: data file not found: {tmp_path / 'dev.jsonl'}" in result.output


# ------------------------------------------------------------------------------------------ chat

CHATS = [
    ("what colour is the sky on a clear day", "the sky is blue on a clear day"),
    ("name a large animal that lives in africa", "the elephant lives in africa"),
    ("how many legs does a spider have", "a spider has eight legs"),
    ("what do bees make from nectar", "bees make honey from nectar"),
    ("which metal is liquid at room temperature", "mercury is a liquid metal"),
    ("what is frozen water called", "frozen water is called ice"),
    ("which animal is known for black and white stripes", "the zebra has black and white stripes"),
]


def chat_file(tmp_path: Path, fmt: str, extra: list | None = None) -> Path:
    if fmt == "sharegpt":
        records = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in CHATS]
    else:
        records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                   for q, a in CHATS]
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records + (extra or [])), encoding="utf-8")
    return path


@pytest.mark.parametrize(("fmt", "bad"), [
    ("sharegpt", {"conversations": [{"from": "human", "value": "call the weather api"},
                                    {"from": "tool", "value": "sunny"}]}),
    ("messages", {"messages": [{"role": "function", "content": "call the weather api"},
                               {"role": "assistant", "content": "sunny"}]}),
])
def test_chat_record_with_an_unknown_role_is_quarantined(tmp_path, fmt, bad):
    train = chat_file(tmp_path, fmt, [bad])
    result = prepare(write_recipe(tmp_path, train), LENIENT)
    assert result.exit_code == 0, result.output
    assert "splits: train 5, validation 2, test 0" in result.output
    [row] = rejected(tmp_path)
    role, turn = ("tool", 2) if fmt == "sharegpt" else ("function", 1)
    assert (row["file"], row["line"], row["stage"]) == (str(train), 8, "read")
    assert row["reason"].startswith(f"turn {turn}: unknown role '{role}' (allowed: system, human, user, gpt, "
                                    "assistant, model; add it to role_map")
    prepared = tmp_path / "runs" / "prep" / "data" / "train.jsonl"
    assert all("messages" in json.loads(line) for line in prepared.read_text(encoding="utf-8").splitlines())


MARKED = re.compile(r"⟦(.*?)⟧", re.S)
COUNTS = re.compile(r"^-- (.+):(\d+): (\d+) tokens, (\d+) trained \(\d+\.\d%\)$", re.M)


def test_preview_marks_the_assistant_reply_of_chat_rows(tmp_path, tiny_model_dir):
    train = chat_file(tmp_path, "sharegpt")
    recipe = write_recipe(tmp_path, train, model=str(tiny_model_dir))
    # chat rows are causal-LM data: the preview shows what that task trains on
    result = prepare(recipe, "task=causal_lm", "data.formatting.template=chatml", "--preview", "2")
    assert result.exit_code == 0, result.output
    counts = COUNTS.findall(result.output)
    assert len(counts) == 2, result.output
    assert result.output.count("⟦") == 2 and result.output.count("⟧") == 2
    examples = result.output.split("\n-- ")[:2]
    train_rows = [json.loads(line) for line in
                  (tmp_path / "runs" / "prep" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    for i, ((file, line, n_tokens, n_trained), text) in enumerate(zip(counts, examples)):
        assert f"{file}:{line}" == train_rows[i]["_origin"] and file == str(train)
        question, answer = CHATS[int(line) - 1]
        assert 0 < int(n_trained) < int(n_tokens)
        [marked] = MARKED.findall(text)
        assert answer in marked and question not in marked
        assert question in MARKED.sub("", text)
        assert f"example {i + 1}/2" in text


def test_preview_of_chat_rows_without_a_template_is_a_clear_error(tmp_path, tiny_model_dir):
    train = chat_file(tmp_path, "messages")
    result = prepare(write_recipe(tmp_path, train, model=str(tiny_model_dir)), "task=causal_lm", "--preview", "1")
    assert result.exit_code == 2
    assert "error: data.formatting.template: the tokenizer" in result.output
    assert "has no chat template of its own; set data.formatting.template to one of: chatml, llama3, zephyr, " \
           "alpaca, plain" in result.output


def test_preview_shows_text_label_and_token_count(tmp_path, make_recipe, tiny_model_dir):
    from transformers import AutoTokenizer

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(resolved_dict(make_recipe())), encoding="utf-8")
    result = prepare(path, "--preview", "2")
    assert result.exit_code == 0, result.output
    assert "splits: train 96, validation 24, test 0" in result.output
    train_rows = [json.loads(line) for line in
                  (tmp_path / "runs" / "tiny" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lines = result.output.splitlines()
    label_lines = [i for i, line in enumerate(lines) if line.startswith("-- label: ")]
    assert len(label_lines) == 2
    for row, at in zip(train_rows[:2], label_lines):
        n_tokens = len(tokenizer(row["text"], truncation=True, max_length=32)["input_ids"])
        assert lines[at - 1] == row["text"]
        assert lines[at] == f"-- label: {row['label']}; {n_tokens} tokens"
        assert row["label"] in ("negative", "positive")
