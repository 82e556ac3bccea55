"""Model FLOPs per token (hand-computed on tiny configs), the matmul peak cache, `bench peak`, live MFU."""

import json

import pytest
from typer.testing import CliRunner

from tuneforge.data.batching import Encoded
from tuneforge.train.flops import (FlopParams, count_flop_params, efficiency_for_run, example_flops,
                                   model_flops_per_token, stack_shapes, tokens_per_example)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "peak.json"


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=64, num_labels=2))


# Hand-computed matmul parameters (embedding lookups left out):
# GPT-2, per layer: ln_1 64 + c_attn 32*96+96 + attn c_proj 32*32+32 + ln_2 64 + c_fc 32*128+128 + c_proj 128*32+32
#   = 12,704; 2 layers + ln_f 64 = 25,472; + lm_head tied to wte, still a matmul: 100*32 = 3,200 -> 28,672.
GPT2_N = 2 * (64 + 3168 + 1056 + 64 + 4224 + 4128) + 64 + 3200
# Llama (GQA: 4 heads of 8, 2 KV heads), per layer: q 32*32 + k 32*16 + v 32*16 + o 32*32 + gate/up/down 3*32*64
#   + 2 RMSNorms 2*32 = 9,280; 2 layers + final norm 32 + untied lm_head 100*32 -> 21,792.
LLAMA_N = 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 32 + 3200
# BERT classifier, per layer: q/k/v/o 4*(32*32+32) + LN 64 + intermediate 32*64+64 + output 64*32+32 + LN 64 = 8,544;
#   embedding LayerNorm 64 + 2 layers + pooler 32*32+32 + classifier 32*2+2 -> 18,274.
BERT_LAYER = 4 * 1056 + 64 + 2112 + 2080 + 64
BERT_N = 64 + 2 * BERT_LAYER + 1056 + 66


def test_parameter_counts_by_hand():
    from transformers import LlamaConfig, LlamaForCausalLM

    assert count_flop_params(gpt2()) == (FlopParams(trainable=GPT2_N), None)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    assert count_flop_params(llama) == (FlopParams(trainable=LLAMA_N), None)
    assert count_flop_params(bert()) == (FlopParams(trainable=BERT_N), None)


def test_frozen_parameters_count_4n_and_2n_before_anything_trains():
    from peft import LoraConfig, get_peft_model

    model = bert()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")
    # head only: no gradient passes through the body, forward only
    assert count_flop_params(model) == (FlopParams(trainable=66, forward_only=BERT_N - 66), None)
    for name, p in model.named_parameters():
        p.requires_grad = not (name.startswith("bert.embeddings") or name.startswith("bert.encoder.layer.0."))
    assert count_flop_params(model)[0] == FlopParams(trainable=BERT_N - 64 - BERT_LAYER, forward_only=64 + BERT_LAYER)
    # LoRA r=4 on query/value: (32*4 + 4*32) * 2 targets * 2 layers = 1,024 trainable; the embedding LayerNorm and
    # layer 0's query (registered before its first adapter) forward only; everything after needs input gradients.
    lora = get_peft_model(bert(), LoraConfig(r=4, target_modules=["query", "value"]))
    assert count_flop_params(lora)[0] == FlopParams(trainable=1024, frozen=BERT_N + 1024 - 1024 - 64 - 1056,
                                                    forward_only=64 + 1056)
    assert FlopParams(trainable=10, frozen=100, forward_only=1000).flops_per_token == 60 + 400 + 2000


def test_flops_per_token_decoder_only_by_hand():
    model = gpt2()
    enc = Encoded(input_ids=[[1] * 4, [1] * 8], labels=[[1] * 4, [1] * 8], label_kind="causal")
    # per example s * (6N + 12 * n_layer * hidden * s): 4 * (6*28672 + 768*4) + 8 * (6*28672 + 768*8), over 12 tokens
    expected = (4 * (6 * GPT2_N + 768 * 4) + 8 * (6 * GPT2_N + 768 * 8)) / 12
    assert model_flops_per_token(model, enc) == pytest.approx(expected)
    assert expected == pytest.approx(6 * GPT2_N + 12 * 2 * 32 * (16 + 64) / 12)  # nanoGPT with L = E[s^2]/E[s]
    assert tokens_per_example(enc) == [4, 8]


def test_encoder_decoder_shapes_and_flops():
    from transformers import BartConfig, BartForConditionalGeneration, EncoderDecoderConfig, BertConfig, T5Config

    assert stack_shapes(T5Config(d_model=32, num_layers=3, num_decoder_layers=2)) == ((3, 32), (2, 32))
    small, big = BertConfig(hidden_size=32, num_hidden_layers=2), BertConfig(hidden_size=48, num_hidden_layers=3)
    assert stack_shapes(EncoderDecoderConfig.from_encoder_decoder_configs(small, big)) == ((2, 32), (3, 48))
    config = BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    enc_p, dec_p = count_flop_params(BartForConditionalGeneration(config))
    # encoder: 2 * (4*1056 + 64 + 2112 + 2080 + 64) + layernorm_embedding 64; decoder: 1 layer with cross-attention
    # 2 * 4*1056 + 3 * 64 + 2112 + 2080, layernorm_embedding 64, lm_head tied to the shared embedding 3,200
    assert enc_p == FlopParams(trainable=2 * 8544 + 64)
    assert dec_p == FlopParams(trainable=2 * 4224 + 192 + 4192 + 64 + 3200)
    # source 5 tokens, target 3: encoder 5 * (6N_enc + 12*2*32*5), decoder 3 * (6N_dec + 12*1*32*(3 + 5))
    expected = 5 * (6 * enc_p.total + 768 * 5) + 3 * (6 * dec_p.total + 384 * 8)
    assert example_flops(config, enc_p, dec_p, 5, 3) == pytest.approx(expected)
    enc = Encoded(input_ids=[[1] * 5], labels=[[1] * 3], label_kind="target")
    assert tokens_per_example(enc) == [8]
    assert model_flops_per_token(BartForConditionalGeneration(config), enc) == pytest.approx(expected / 8)


def test_peak_cache_round_trip(cache):
    from tuneforge.train.peak import cache_key, get_peak, measure_peak, store

    entry = measure_peak("cpu", "fp32", sizes=(32, 64), run_seconds=0.01, repeats=2)
    assert set(entry["by_size"]) == {"32", "64"} and entry["flops"] == max(entry["by_size"].values()) > 0
    assert entry["fingerprint"]["threads"] == 1 and "threads=1" in cache_key("cpu", "fp32")
    assert get_peak("cpu", "fp32") is None
    assert store(entry) == cache
    assert get_peak("cpu", "fp32", measure_if_missing=False) == entry["flops"]
    assert get_peak("cpu", "bf16", measure_if_missing=False) is None
    assert list(json.loads(cache.read_text())) == [cache_key("cpu", "fp32")]


def test_bench_peak_cli(cache):
    from tuneforge.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["bench", "peak", "--dtype", "fp32", "--device", "cpu", "--sizes", "32,48"])
    assert first.exit_code == 0, first.output
    assert "fp32 matmul 32x32:" in first.output and "fp32 matmul 48x48:" in first.output
    assert f"cached in {cache}" in first.output and cache.exists()
    again = runner.invoke(app, ["bench", "peak", "--dtype", "fp32", "--device", "cpu", "--sizes", "32"])
    assert again.exit_code == 0 and "cached value from" in again.output and "48x48" in again.output
    forced = runner.invoke(app, ["bench", "peak", "--dtype", "fp32", "--device", "cpu", "--sizes", "32", "--force"])
    assert forced.exit_code == 0 and "48x48" not in forced.output
    bad = runner.invoke(app, ["bench", "peak", "--dtype", "fp16", "--device", "cpu"])
    assert bad.exit_code == 2 and "CUDA only" in bad.output


def test_no_cached_peak_gives_tflops_and_advice(cache):
    enc = Encoded(input_ids=[[1] * 4], labels=[[1] * 4], label_kind="causal")
    eff, note = efficiency_for_run(gpt2(), enc, "cpu", "bf16", world_size=1)
    assert eff.peak_flops is None and "tuneforge bench peak --dtype bf16" in note
    assert eff.rates(1000.0) == (pytest.approx(1000.0 * eff.flops_per_token / 1e12), None)


def test_training_records_tflops_and_mfu(cache, make_recipe, capsys):
    from tuneforge.train.peak import fingerprint, store
    from tuneforge.train.run import train

    store({"device": "cpu", "dtype": "fp32", "flops": 1e10, "by_size": {"64": 1e10},
           "fingerprint": fingerprint("cpu", "fp32"), "measured_at": "test"})
    result = train(make_recipe("train.max_steps=4", "train.eval_every_steps=4"))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 4
    for r in train_records[1:]:  # the first step has no rate yet
        assert r["tflops"] > 0 and 0 < r["mfu"] <= 1
        assert r["mfu"] == pytest.approx(r["tflops"] * 100, rel=2e-2)  # peak 0.01 TFLOP/s
    err = capsys.readouterr().err
    assert "bench peak" not in err and "% " in err.split("step 4/4")[1].split("MFU ")[1]
