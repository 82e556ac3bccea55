"""seq2seq on a tiny random BART: encoding (prefix, eos, truncation), the recipe section, generation-based
metrics, and a run end to end (loss falls, BLEU from generated outputs, export reloads to the same outputs)."""

from __future__ import annotations

import json
import random

import pytest

from tuneforge.errors import RecipeError

# A word-for-word "translation" into antonyms: monotone like Multi30k, small enough for a tiny model.
ANTONYMS = {"big": "small", "hot": "cold", "old": "new", "fast": "slow", "good": "bad", "up": "down",
            "open": "closed", "day": "night", "small": "big", "cold": "hot", "new": "old", "slow": "fast"}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tests.conftest import minilm_dir

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory):
    """A 2+2-layer, 64-wide BART with a word-level BERT tokenizer over the task's 16 words: a 30k
    vocabulary would make the test several times slower; [SEP] is the end-of-sequence token."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-bart")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(ANTONYMS) | set(ANTONYMS.values())))}
    BertTokenizer(vocab=vocab, model_max_length=64).save_pretrained(out)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(vocab), d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        max_position_embeddings=64, dropout=0.0, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=3, forced_eos_token_id=None)
    BartForConditionalGeneration(config).save_pretrained(out, safe_serialization=True)
    return out


def _parallel(tmp_path, n: int, seed: int = 0):
    rng = random.Random(seed)
    words = sorted(ANTONYMS)
    sources = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(n)]
    src, tgt = tmp_path / "train.src", tmp_path / "train.tgt"
    src.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    tgt.write_text("".join(" ".join(ANTONYMS[w] for w in s.split()) + "\n" for s in sources), encoding="utf-8")
    return src, tgt


def _recipe(model_dir, src, tgt, output_dir, *overrides):
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe

    base = {
        "name": "s2s", "seed": 7, "output_dir": str(output_dir), "task": "seq2seq", "method": "full",
        "model": {"name": str(model_dir), "max_length": 32},
        "data": {"sources": [{"path": str(src), "target_path": str(tgt)}], "split": {"validation_fraction": 0.15},
                 # the rows repeat a small vocabulary on purpose; dedup would collapse near-identical ones
                 "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
        "seq2seq": {"max_target_length": 16, "eval_generation_examples": 16,
                    "generation": {"max_new_tokens": 12, "batch_size": 16}},
        "train": {"epochs": 10, "batch_size": 16, "learning_rate": 3e-3, "eval_every_steps": 30, "log_every_steps": 1,
                  "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant"},
        "export": {"enabled": True},
    }
    return Recipe.model_validate(apply_overrides(base, list(overrides)))


# ----------------------------------------------------------------------------------------------- encode


def test_encode_prefixes_sources_and_keeps_eos_on_truncated_targets(tokenizer, tmp_path):
    from tuneforge.tasks.seq2seq import SPEC

    recipe = _recipe(tmp_path, "s.txt", "t.txt", tmp_path, "seq2seq.source_prefix='antonyms: '",
                     "seq2seq.max_target_length=3")
    enc = SPEC.encode([{"source": "big day", "target": "small night"}, {"source": "up", "target": "down"}],
                      tokenizer, recipe, None)
    assert enc.label_kind == "target" and enc.extra == {}
    assert [tokenizer.decode(ids) for ids in enc.input_ids] == ["[CLS] antonyms : big day [SEP]",
                                                               "[CLS] antonyms : up [SEP]"]
    # cut to max_target_length, and the tokenizer's end token ([SEP] for BERT) is still last
    assert [tokenizer.convert_ids_to_tokens(t) for t in enc.labels] == [["[CLS]", "small", "[SEP]"],
                                                                      ["[CLS]", "down", "[SEP]"]]
    assert enc.weights == [3, 3]


def test_encode_cuts_sources_at_model_max_length(tokenizer, tmp_path):
    from tuneforge.tasks.seq2seq import SPEC

    recipe = _recipe(tmp_path, "s.txt", "t.txt", tmp_path, "model.max_length=8")
    enc = SPEC.encode([{"source": " ".join(["open"] * 20), "target": "closed"}], tokenizer, recipe, None)
    assert len(enc.input_ids[0]) == 8 and enc.input_ids[0][-1] == tokenizer.sep_token_id


def test_with_eos_appends_only_when_the_tokenizer_did_not():
    from tuneforge.tasks.seq2seq import with_eos

    assert with_eos([5, 6, 2], 2, 4) == [5, 6, 2]  # T5/BART/Marian: already there
    assert with_eos([5, 6, 7, 8], 2, 4) == [5, 6, 7, 2]  # stays within max_target_length
    assert with_eos([5, 6], 2, 4) == [5, 6, 2]
    assert with_eos([5, 6], None, 4) == [5, 6]  # no eos token: nothing to add


# ------------------------------------------------------------------------------------------- the recipe


def test_recipe_section_defaults_and_metric_choices(tmp_path):
    from tuneforge.tasks import get_task

    recipe = _recipe(tmp_path, "s.txt", "t.txt", tmp_path, "seq2seq={}")
    assert recipe.train.metric_for_best == "bleu"
    assert recipe.seq2seq.source_prefix == "" and recipe.seq2seq.eval_generation_examples is None
    assert recipe.seq2seq.generation.do_sample is False
    assert list(get_task("seq2seq").selectable) == ["bleu", "chrf", "rougeL", "rouge1", "rouge2", "loss"]


@pytest.mark.parametrize("override, message", [
    ("train.metric_for_best=accuracy",
     "unknown metric 'accuracy' for task seq2seq; allowed: bleu, chrf, rougeL, rouge1, rouge2, loss"),
    ("seq2seq.generation.temperature=0.7",
     "generation.temperature=0.7 only applies when sampling, but generation.do_sample is false"),
    ("seq2seq.eval_generation_examples=0", "seq2seq.eval_generation_examples: got 0"),
    ("seq2seq.max_target_len=10", "seq2seq.max_target_len: unknown key (did you mean 'max_target_length'?)"),
])
def test_bad_seq2seq_settings_name_the_key(tmp_path, override, message):
    from tuneforge.config_io import load_config
    from tuneforge.recipe import Recipe, resolved_dict

    good = resolved_dict(_recipe(tmp_path, "s.txt", "t.txt", tmp_path))
    good["train"]["metric_for_best"] = None
    with pytest.raises(RecipeError) as exc:
        load_config(Recipe, None, [override], base=good)
    assert message in str(exc.value)


# -------------------------------------------------------------------------------------------- metrics


def test_token_accuracy_counts_target_tokens_only():
    import torch

    from tuneforge.evaluate.predict import Predictions
    from tuneforge.data.batching import Encoded
    from tuneforge.tasks.seq2seq import metrics

    # predict keeps (top logit, top token id) per target token
    outputs = [torch.tensor([[9.0, 5.0], [9.0, 6.0], [9.0, 1.0]]), torch.tensor([[9.0, 4.0], [9.0, 3.0]])]
    enc = Encoded(input_ids=[[1], [1]], labels=[[5, 7, -100], [4, 3]], label_kind="target")
    assert metrics(Predictions(outputs=outputs, loss=0.0), [], enc, None) == {"token_accuracy": 3 / 4}


def test_generate_metrics_prefixes_limits_and_seeds_sampling(tmp_path, monkeypatch):
    import tuneforge.models.generation as generation
    from tuneforge.tasks.seq2seq import SPEC

    seen = {}

    def fake_generate(model, tokenizer, prompts, cfg, progress=None):
        seen.update(prompts=list(prompts), seed=cfg.seed)
        return ["small night", "cold"]  # the first is right, the second half right

    monkeypatch.setattr(generation, "generate", fake_generate)
    recipe = _recipe(tmp_path, "s.txt", "t.txt", tmp_path, "seq2seq.source_prefix='x: '",
                     "seq2seq.eval_generation_examples=2", "seq2seq.generation.do_sample=true")
    records = [{"source": "big day", "target": "small night"}, {"source": "hot up", "target": "cold down"},
               {"source": "old", "target": "new"}]
    out = SPEC.generate_metrics(object(), object(), records, recipe)
    assert seen == {"prompts": ["x: big day", "x: hot up"], "seed": 7}  # unseeded sampling takes the recipe seed
    assert recipe.seq2seq.generation.seed is None  # the recipe itself is untouched
    assert out["generated_examples"] == 2
    assert out["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 2)  # F1 of "cold" vs "cold down" is 2/3
    assert out["samples"][1] == {"source": "hot up", "reference": "cold down", "prediction": "cold"}
    assert SPEC.summary({**out, "loss": 1.0}).startswith(f"BLEU {out['bleu']:.2f}, chrF {out['chrf']:.2f}")


# ----------------------------------------------------------------------------------------- end to end


def test_seq2seq_trains_generates_and_exports_verified(tiny_bart_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tuneforge.models.generation import generate
    from tuneforge.train.run import train

    src, tgt = _parallel(tmp_path, 160)
    # a source line without a translation is rejected with its line, never re-aligned
    src.write_text(src.read_text() + "big hot\n", encoding="utf-8")
    recipe = _recipe(tiny_bart_dir, src, tgt, tmp_path / "runs", "data.max_rejected_fraction=0.05")
    result = train(recipe)

    [rejected] = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (rejected["line"], rejected["reason"]) == (161, "no matching line: train.src has 161 lines, "
                                                           "train.tgt has 160 lines")
    losses = [r["loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses
    evals = [r for r in result.history if r["kind"] == "eval"]
    assert evals and all({"bleu", "chrf", "rouge1", "rouge2", "rougeL", "token_accuracy"} <= r.keys() for r in evals)
    assert result.metrics["generated_examples"] == 16
    assert evals[-1]["bleu"] > evals[0]["bleu"], evals
    assert result.metrics["bleu"] > 60 and result.metrics["token_accuracy"] > 0.9, result.metrics
    assert json.loads((result.run_dir / "eval" / "eval.json").read_text())["bleu"] == result.metrics["bleu"]

    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] < 1e-4
    assert result.verification["reloaded_with"] == "transformers.AutoModelForSeq2SeqLM"
    # a user's plain reload generates exactly what the run scored
    model = AutoModelForSeq2SeqLM.from_pretrained(result.export_dir)
    tok = AutoTokenizer.from_pretrained(result.export_dir)
    samples = result.metrics["samples"]
    again = generate(model, tok, [s["source"] for s in samples], recipe.seq2seq.generation)
    assert again == [s["prediction"] for s in samples]


def test_lora_on_seq2seq_generates_and_exports_merged(tiny_bart_dir, tmp_path):
    """peft's SEQ_2_SEQ_LM wrapper goes through the same generation and a merged, verified export."""
    from tuneforge.train.run import train

    src, tgt = _parallel(tmp_path, 80)
    result = train(_recipe(tiny_bart_dir, src, tgt, tmp_path / "runs", "method=lora", "train.max_steps=4",
                           "train.eval_every_steps=4", "train.learning_rate=1e-2"))
    assert 0 < result.params["trainable"] < result.params["total"]
    assert result.metrics["generated_examples"] == 12  # 80 rows, 15% held out: all 12 (fewer than 16)
    assert {"bleu", "chrf", "rougeL"} <= result.metrics.keys()
    assert result.verification["passed"] and result.verification["export"] == "merged"
    assert result.verification["reloaded_with"] == "transformers.AutoModelForSeq2SeqLM"


def test_warm_started_bert2bert_learns_with_a_validation_source_and_exports(tiny_bart_dir, tmp_path):
    """The minilm-l6-bert2bert builder on a tiny BERT: both sides start from the encoder's weights, the
    composed model trains through the seq2seq task, its own validation pair files are read as one
    source (data.validation_file as a mapping), and the export reloads with AutoModelForSeq2SeqLM."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, BertConfig, BertModel

    from tuneforge.models.encoder_decoder import build_bert2bert, is_complete
    from tuneforge.train.run import train

    bert = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=21, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64)).save_pretrained(bert)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bart_dir / name).exists():
            (bert / name).write_bytes((tiny_bart_dir / name).read_bytes())
    out = build_bert2bert(bert, tmp_path / "b2b")
    assert is_complete(out, bert) and not is_complete(out, tiny_bart_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert (model.config.decoder_start_token_id, model.config.eos_token_id) == (2, 3)  # [CLS] starts, [SEP] ends
    encoder_weight = BertModel.from_pretrained(bert).encoder.layer[0].attention.self.query.weight
    assert torch.equal(model.decoder.bert.encoder.layer[0].attention.self.query.weight, encoder_weight)

    src, tgt = _parallel(tmp_path, 160)
    dev = tmp_path / "dev"
    dev.mkdir()
    val_src, val_tgt = _parallel(dev, 24, seed=5)
    result = train(_recipe(out, src, tgt, tmp_path / "runs", "train.epochs=8", "data.split={}",
                           f"data.validation_file={{path: {val_src}, target_path: {val_tgt}}}"))
    assert result.metrics["generated_examples"] == 16
    assert json.loads((result.run_dir / "data" / "prepared.json").read_text())["validation_source"] == str(val_src)
    losses = [r["loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses
    assert result.metrics["token_accuracy"] > 0.8, result.metrics
    assert result.verification["passed"]
