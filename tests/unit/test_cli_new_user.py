"""What a new user meets first: ``validate`` checks what it claims (it reads the first rows of every data
source with the data stage's readers), ``--explain`` lists every key (list items and union members
too), overrides address list items (``data.sources.0.path=...``), and ``prepare --preview`` shows
exactly what training encodes, for every task."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli import app

REPO = Path(__file__).resolve().parents[2]
CONLL = REPO / "data" / "conll2003" / "train.head.iob2.txt"
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def flat(text: str) -> str:
    """Output with line breaks and runs of spaces made single spaces (messages are compared as text)."""
    return " ".join(text.split())


def write_recipe(tmp_path: Path, data: dict, **top) -> Path:
    recipe = {"name": "newuser", "output_dir": str(tmp_path / "runs"), "data": data, **top}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


SENTENCES = ["a great and moving film", "a dull and boring mess", "wonderful acting and a charming story",
             "terrible acting and a stupid plot", "truly delightful fun", "painfully bad and tedious",
             "brilliant and funny and warm", "awful and lifeless and flat"]


def good_csv(path: Path, header: str = "text,label") -> Path:
    rows = [f"{t},{('pos', 'neg')[i % 2]}" for i, t in enumerate(SENTENCES)]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def error_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith("error: ")]
    return line


# --------------------------------------------------------------------- 1. validate reads the data


UNTOLD = "cannot tell the format of {path}: suffix '.dat'; set format to one of: csv, tsv, jsonl"


@pytest.mark.parametrize("where", ["train_file", "validation_file", "test_file", "sources", "validation_source"])
def test_validate_fails_on_a_file_whose_format_cannot_be_told(tmp_path, where):
    good = good_csv(tmp_path / "good.csv")
    bad = good_csv(tmp_path / "bad.dat")  # CSV inside, but nothing says so
    data: dict = {"train_file": str(good), "validation_file": str(good)}
    if where == "sources":
        data = {"sources": [{"path": str(good)}, {"path": str(bad)}], "validation_file": str(good)}
        key = "data.sources.1"
    elif where == "validation_source":
        data["validation_file"] = {"path": str(bad), "text_column": "text"}
        key = "data.validation_file"
    else:
        data[where] = str(bad)
        key = f"data.{where}"
    path = write_recipe(tmp_path, data)
    result = invoke("validate", path)
    assert result.exit_code == 2, result.output
    message = UNTOLD.format(path=bad)
    assert f"error: {key}: {message}" in flat(result.output)
    # the very message the data stage gives when it gets there
    prepared = invoke("prepare", path)
    assert prepared.exit_code == 2 and message in flat(prepared.output)


def test_validate_fails_when_the_first_rows_lack_the_named_column(tmp_path):
    train = good_csv(tmp_path / "train.csv", header="sentence,label")
    path = write_recipe(tmp_path, {"train_file": str(train), "text_column": "review",
                                   "split": {"validation_fraction": 0.25}})
    result = invoke("validate", path)
    assert result.exit_code == 2, result.output
    message = f"{train}: line 2: no column 'review' (columns: sentence, label)"
    assert f"error: data.train_file: {message}" in flat(result.output)
    prepared = invoke("prepare", path)
    assert prepared.exit_code == 2 and message in flat(prepared.output)
    # the same with a source's target_column
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"src": s, "tgt": s[::-1]}) + "\n" for s in SENTENCES), encoding="utf-8")
    path = write_recipe(tmp_path, {"sources": [{"path": str(pairs), "text_column": "src", "target_column": "target"}],
                                   "split": {"validation_fraction": 0.25}}, task="causal_lm")
    result = invoke("validate", path)
    assert result.exit_code == 2, result.output
    assert f"error: data.sources.0: {pairs}: line 1: no target_column 'target' (columns: src, tgt)" \
        in flat(result.output)


def test_validate_fails_when_a_classification_source_has_no_label_column(tmp_path):
    train = good_csv(tmp_path / "train.csv", header="text,sentiment")
    path = write_recipe(tmp_path, {"train_file": str(train), "split": {"validation_fraction": 0.25}})
    result = invoke("validate", path)
    assert result.exit_code == 2, result.output
    assert (f"error: data.train_file: {train}: no column 'label' in the first record, so every row would be "
            "rejected as 'missing label'") in flat(result.output)


def test_a_good_recipe_still_validates(tmp_path):
    train = good_csv(tmp_path / "train.csv")
    path = write_recipe(tmp_path, {"sources": [{"path": str(train)}, {"path": str(train), "weight": 2.0}],
                                   "validation_file": {"path": str(train)}, "test_file": str(train)})
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert f"{path}: valid (run directory" in flat(result.output)
    shipped = invoke("validate", REPO / "recipes" / "sst2-minilm-lora.yaml")
    assert shipped.exit_code == 0, shipped.output


def test_validate_reads_the_data_of_every_stage(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    bad = good_csv(tmp_path / "labels.dat")
    doc = {"name": "chain", "output_dir": str(tmp_path / "runs"), "stages": ["adapt", "finetune"],
           "adapt": {"task": "masked_lm", "method": "full", "data": {"train_file": str(corpus),
                                                                      "split": {"validation_fraction": 0.25}}},
           "finetune": {"task": "classification", "method": "full",
                        "data": {"train_file": str(bad), "split": {"validation_fraction": 0.25}}}}
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = invoke("validate", path)
    assert result.exit_code == 2, result.output
    assert f"error: stage finetune: data.train_file: {UNTOLD.format(path=bad)}" in flat(result.output)


# ------------------------------------------------------ 2. --explain lists every key; list-item overrides


def test_describe_fields_descends_into_list_items_and_union_members():
    from tuneforge.recipe import describe_fields

    rows = {key: (default, desc) for key, default, desc in describe_fields()}
    assert rows["data.sources"][0] == "[]"
    assert rows["data.sources[].path"][0] == "required"
    assert rows["data.sources[].format"][0] == "auto"
    assert rows["data.sources[].weight"][0] == "1.0"
    assert "data.sources[].target_path" in rows and "data.sources[].role_map" in rows
    # unions: the section members, after the key itself
    assert rows["data.validation_file"][0] == "None" and rows["data.validation_file.path"][0] == "required"
    assert rows["data.test_file.target_column"][0] == "None"
    assert rows["model.architecture.family"][0] == "required"
    assert rows["model.tokenizer.type"][0] == "bpe"
    assert rows["model.quantize.bits"][0] == "required"
    assert rows["freeze"][0] == "none" and rows["freeze.first_n_layers"][0] == "required"
    assert all(desc for default, desc in rows.values())


def test_explain_prints_list_items(tmp_path):
    path = write_recipe(tmp_path, {"train_file": str(good_csv(tmp_path / "train.csv")),
                                   "split": {"validation_fraction": 0.25}})
    result = invoke("validate", path, "--explain")
    assert result.exit_code == 0, result.output
    assert "\n  data.sources[].path = required\n" in result.output
    assert "\n  data.sources[].format = auto\n" in result.output
    assert "\n  model.architecture.layers = required\n" in result.output


def test_apply_overrides_addresses_list_items():
    from tuneforge.config_io import apply_overrides

    data = {"data": {"sources": [{"path": "a.csv"}, {"path": "b.csv"}]}}
    out = apply_overrides(data, ["data.sources.1.weight=2", "data.sources.0.path=c.csv",
                                 "data.sources.1={path: d.csv}"])
    assert out == {"data": {"sources": [{"path": "c.csv"}, {"path": "d.csv"}]}}
    out = apply_overrides(data, ["data.sources.1.weight=2"])
    assert out["data"]["sources"] == [{"path": "a.csv"}, {"path": "b.csv", "weight": 2}]
    assert data == {"data": {"sources": [{"path": "a.csv"}, {"path": "b.csv"}]}}  # the input is left alone


def test_override_of_a_list_item_on_the_command_line(tmp_path):
    first, other = good_csv(tmp_path / "first.csv"), good_csv(tmp_path / "other.csv")
    path = write_recipe(tmp_path, {"sources": [{"path": str(first)}], "split": {"validation_fraction": 0.25}})
    from tuneforge.config_io import load_config
    from tuneforge.recipe import Recipe

    cfg = load_config(Recipe, path, [f"data.sources.0.path={other}", "data.sources.0.weight=3"])
    assert [(s.path, s.weight) for s in cfg.data.sources] == [(other, 3.0)]
    result = invoke("validate", path, f"data.sources.0.path={other}")
    assert result.exit_code == 0, result.output
    # the override is what validate reads: a file it cannot read fails
    result = invoke("validate", path, f"data.sources.0.path={tmp_path / 'bad.dat'}")
    assert result.exit_code == 2 and "data.sources.0.path: data file not found" in flat(result.output)


def test_override_past_the_end_of_a_list_names_its_length(tmp_path):
    path = write_recipe(tmp_path, {"sources": [{"path": str(good_csv(tmp_path / "a.csv"))}],
                                   "split": {"validation_fraction": 0.25}})
    result = invoke("validate", path, "data.sources.3.path=other.csv")
    assert result.exit_code == 2
    assert ("error: override 'data.sources.3.path=other.csv': index 3 is past the end of data.sources, which has "
            "1 item (index 0)") in flat(result.output)
    result = invoke("validate", path, "data.sources.path=other.csv")
    assert result.exit_code == 2
    assert ("error: override 'data.sources.path=other.csv': data.sources is a list (1 item): address an item by "
            "its index, e.g. data.sources.0.path") in flat(result.output)


# ------------------------------------------------------------------------ 3. the preview tells the truth


def test_preview_of_a_token_classification_recipe_shows_words_and_tags(tmp_path, tiny_model_dir):
    path = write_recipe(tmp_path, {"train_file": str(CONLL), "split": {"validation_fraction": 0.25},
                                   "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
                        task="token_classification", model={"name": str(tiny_model_dir), "max_length": 64})
    result = invoke("prepare", path, "--preview", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in
            (tmp_path / "runs" / "newuser" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    for i, row in enumerate(rows[:2], 1):
        assert f"example {i}/2" in result.output
        words = " ".join(f"{w}/{t}" for w, t in zip(row["tokens"], row["tags"]))
        assert f"\n{words}\n" in result.output, result.output
    assert len(re.findall(r"^-- \S+:\d+: \d+ words, \d+ tokens, \d+ tagged$", result.output, re.M)) == 2


MARKED = re.compile(r"⟦(.*?)⟧", re.S)
COUNTS = re.compile(r"^-- (\S+):(\d+): (\d+) tokens, (\d+) trained \(\d+\.\d%\)$", re.M)
PAIRS = [(f"the {a} and the {b} met near the river", f"{a} meets {b}")
         for a, b in [("apple", "stone"), ("cloud", "market"), ("window", "garden"), ("silver", "engine"),
                      ("forest", "candle"), ("harbor", "pencil"), ("thunder", "meadow"), ("rocket", "violin")]]


def test_preview_of_pairs_with_a_pair_prompt_marks_only_the_reply(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    from tuneforge.config_io import load_config
    from tuneforge.recipe import Recipe
    from tuneforge.tasks import spec_for

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in PAIRS), encoding="utf-8")
    path = write_recipe(tmp_path, {"train_file": str(pairs), "text_column": "src", "target_column": "tgt",
                                   "split": {"validation_fraction": 0.25}, "formatting": {"template": "chatml"},
                                   "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
                        task="causal_lm", model={"name": str(tiny_llama_dir), "max_length": 64},
                        causal_lm={"pair_prompt": "Summarise: "})
    result = invoke("prepare", path, "--preview", "2")
    assert result.exit_code == 0, result.output
    counts = COUNTS.findall(result.output)
    assert len(counts) == 2, result.output
    examples = result.output.split("\n-- ")[:2]
    recipe = load_config(Recipe, path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [json.loads(line) for line in
            (tmp_path / "runs" / "newuser" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    for row, (file, line, n_tokens, n_trained), text in zip(rows, counts, examples):
        assert f"{file}:{line}" == row["_origin"]
        encoded = spec_for(recipe).encode([row], tokenizer, recipe, None)  # what training trains on
        [ids], [labels] = encoded.input_ids, encoded.labels
        trained = [t for t, label in zip(ids, labels) if label != -100]
        assert (int(n_tokens), int(n_trained)) == (len(ids), len(trained))
        assert 0 < len(trained) < len(ids)
        marked = MARKED.findall(text)
        # the marked text is exactly the trained tokens: the reply, not the prompt or the source
        assert "".join("".join(marked).split()) == "".join(tokenizer.decode(trained).split())
        assert row["target"] in "".join(marked) and "summarise" not in "".join(marked).lower()
        assert row["source"] not in "".join(marked) and row["source"] in MARKED.sub("", text)


CONTEXT = "alice met bob in paris on a sunny day"
PREVIEW_CASES = {
    # task overrides, prepared record (without _origin), label names, what the printed example shows
    "classification": ((), {"text": "a great film", "label": "positive"}, ["negative", "positive"],
                       ["a great film", "-- label: positive; 5 tokens"]),
    "multi_label": (("classification.multi_label=true",), {"text": "a great film", "label": ["positive"]},
                    ["negative", "positive"], ["a great film", "-- labels: positive; 5 tokens"]),
    "regression": (("task=regression",), {"text": "a great film", "label": 0.25}, None,
                   ["a great film", "-- value: 0.25; 5 tokens"]),
    "token_classification": (("task=token_classification",),
                             {"tokens": ["alice", "met", "bob"], "tags": ["B-PER", "O", "B-PER"]},
                             ["O", "B-PER", "I-PER"], ["alice/B-PER met/O bob/B-PER", "3 words, 5 tokens, 3 tagged"]),
    "causal_lm": (("task=causal_lm", "data.formatting.template=chatml", "model.max_length=64"),
                  {"messages": [{"role": "user", "content": "who met bob"},
                                {"role": "assistant", "content": "alice met bob"}]}, None,
                  ["⟦alice met bob < | im _ end | >⟧", "trained"]),
    "seq2seq": (("task=seq2seq",), {"source": "alice met bob", "target": "alice a vu bob"},
                None, ["source: [CLS] alice met bob [SEP]", "target: [CLS] alice a vu bob [SEP]"]),
    "extractive_qa": (("task=extractive_qa", "extractive_qa.doc_stride=8"),
                      {"question": "who met bob", "context": CONTEXT, "answers": [{"text": "alice", "answer_start": 0}]},
                      None, ["answer: alice", "answer at tokens 5-5"]),
    "masked_lm": (("task=masked_lm",), {"text": "alice met bob in paris"}, None,
                  ["[CLS] alice met bob in paris [SEP]", "7 tokens; the predicted (masked) positions"]),
}


@pytest.mark.parametrize("case", list(PREVIEW_CASES))
def test_preview_renders_what_every_task_encodes(case, make_recipe, tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneforge.data.preview import render_encoded
    from tuneforge.data.preview_command import preview_examples
    from tuneforge.tasks import spec_for

    overrides, record, names, expected = PREVIEW_CASES[case]
    recipe = make_recipe(*overrides)
    record = {**record, "_origin": "rows.jsonl:1"}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = spec_for(recipe)
    [example] = preview_examples(spec, [record], tokenizer, recipe, names)
    assert example.reason is None and example.encoded is not None
    encoded = spec.encode([record], tokenizer, recipe, names)  # the preview's sequences are training's
    assert (example.encoded.input_ids, example.encoded.labels) == (encoded.input_ids, encoded.labels)
    word_ids = encoded.meta.get("word_ids") or [None]
    text = render_encoded(encoded.label_kind, record, encoded.input_ids[0], encoded.labels[0], tokenizer,
                          label_names=names, word_ids=word_ids[0], max_length=recipe.model.max_length)
    for shown in expected:
        assert shown in text, text
