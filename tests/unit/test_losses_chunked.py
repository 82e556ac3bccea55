"""The chunked vocabulary loss (tuneforge.tasks.losses) against the full-logits computation it replaces:
the same summed loss and the same gradients (fp32, 1e-5) for every vocabulary-wide label kind (causal with
masked prompts and padding, masked LM, seq2seq on EncoderDecoderModel, T5 and BART), with and without LoRA
(lm_head included), the full-logits fallback for prompt-learning methods and post-head transformations,
evaluation's per-position top logit, and the evaluation batch size (auto sizing, halving on out-of-memory).
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.tasks.losses import VocabOutput, forward_loss_sum, loss_chunk_rows, unwrap  # noqa: E402
from tuneforge.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN, LAYERS, VOCAB = 32, 2, 160
LLAMA = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
BERT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, initializer_range=0.2)
LENGTHS = [12, 10, 7, 5]  # right-padded to 12
TARGET_LENGTHS = [6, 4, 5, 2]


def build(name: str):
    import transformers as t

    torch.manual_seed(0)
    if name == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**LLAMA))
    if name == "gpt2":  # tied input/output embeddings
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=2,
                                              n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    if name == "bert-mlm":  # a transform (dense, gelu, layer norm) before the decoder
        return t.BertForMaskedLM(t.BertConfig(**BERT))
    if name == "t5":  # tied: the decoder output is rescaled by d_model**-0.5 before lm_head
        return t.T5ForConditionalGeneration(t.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=64,
                                                       num_layers=LAYERS, num_heads=4, dropout_rate=0.0,
                                                       decoder_start_token_id=0, pad_token_id=0))
    if name == "bart":  # final_logits_bias after lm_head: made non-zero so that adding it is tested
        model = t.BartForConditionalGeneration(t.BartConfig(
            vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0, init_std=0.2))
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
        return model
    if name == "bert2bert":
        encoder = t.BertConfig(**BERT)
        decoder = t.BertConfig(**BERT, is_decoder=True, add_cross_attention=True)
        model = t.EncoderDecoderModel(config=t.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
        model.config.decoder_start_token_id, model.config.pad_token_id = 2, 0
        return model
    raise ValueError(name)


def batch(kind: str) -> dict:
    g = torch.Generator().manual_seed(1)
    n, width = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(5, VOCAB, (n, width), generator=g)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(LENGTHS):
        mask[i, :length] = 1
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "causal":  # the first half of each example is prompt (-100), padding too
        labels = ids.masked_fill(mask == 0, -100)
        for i, length in enumerate(LENGTHS):
            labels[i, : length // 2] = -100
        out["labels"] = labels
    elif kind == "mlm":  # ~30% of the real positions predicted, the inputs there masked (id 4)
        chosen = (torch.rand(n, width, generator=g) < 0.3) & (mask == 1)
        out["labels"] = ids.masked_fill(~chosen, -100)
        out["input_ids"] = ids.masked_fill(chosen, 4)
    else:
        labels = torch.randint(5, VOCAB, (n, max(TARGET_LENGTHS)), generator=g)
        for i, length in enumerate(TARGET_LENGTHS):
            labels[i, length:] = -100
        out["labels"] = labels
    return out


def reference_loss(model, batch: dict, kind: str, **model_kwargs):
    """The full-logits computation forward_loss_sum did before chunking (fp32 over every position)."""
    inputs = {**batch, **model_kwargs}
    labels = inputs.pop("labels")
    if kind == "target":
        out = model(**inputs, decoder_input_ids=unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels))
        logits = out.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                               reduction="sum"), out
    out = model(**inputs)
    logits = out.logits.float()[:, -labels.size(1):]
    if kind == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                           reduction="sum"), out


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def assert_same_loss_and_grads(model, kind: str, *, chunked: bool, chunk_rows: int | None = None, b=None,
                               **model_kwargs):
    b = batch(kind) if b is None else b
    model.train()
    want, _ = reference_loss(model, b, kind, **model_kwargs)
    want.backward()
    want_grads = grads(model)
    model.zero_grad(set_to_none=True)
    got, out = forward_loss_sum(model, b, kind, chunk_rows=chunk_rows)
    got.backward()
    got_grads = grads(model)
    model.zero_grad(set_to_none=True)
    assert isinstance(out, VocabOutput) == chunked, type(out)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want_grads and got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


CASES = [("llama", "causal"), ("gpt2", "causal"), ("bert-mlm", "mlm"), ("bert2bert", "target"), ("t5", "target"),
         ("bart", "target")]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_chunked_loss_and_gradients_equal_the_full_logits(name, kind):
    assert_same_loss_and_grads(build(name), kind, chunked=True)


@pytest.mark.parametrize(("name", "kind"), [("llama", "causal"), ("bert-mlm", "mlm"), ("bart", "target")])
def test_chunks_smaller_than_the_labelled_tokens_give_the_same_loss(name, kind):
    labelled = int((batch(kind)["labels"] != -100).sum())
    assert labelled > 3 * 3  # several chunks, the last one partial
    assert_same_loss_and_grads(build(name), kind, chunked=True, chunk_rows=3)


def test_chunk_rows_follow_the_vocabulary():
    assert loss_chunk_rows(49152) == 341 and loss_chunk_rows(32000) == 524
    assert loss_chunk_rows(262144) == 256  # never fewer rows: each chunk reads the whole output matrix


def test_packed_sequences_without_attention_mask():
    # Packed causal batches carry position ids that restart per document and no attention mask, from
    # which transformers builds a block-causal mask, but only without a key/value cache: forward_loss_sum
    # passes use_cache=False (config.use_cache would make a cache in training too).
    b = batch("causal")
    del b["attention_mask"]
    b["position_ids"] = torch.cat([torch.arange(7), torch.arange(5)]).repeat(len(LENGTHS), 1)
    assert_same_loss_and_grads(build("llama"), "causal", chunked=True, b=b, use_cache=False)


def lora(model, targets: list[str], task: str):
    from tuneforge.models.methods import LoraConfig, apply_method

    peft_model = apply_method(model, "lora", LoraConfig(r=4, dropout=0.0, target_modules=targets), task=get_task(task))
    with torch.no_grad():  # B starts at zero: make every adapter change the outputs, so its gradients are real
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return peft_model


def test_lora_keeps_the_chunked_path_and_its_gradients():
    assert_same_loss_and_grads(lora(build("llama"), ["q_proj", "v_proj"], "causal_lm"), "causal", chunked=True)


def test_lora_on_lm_head_is_applied_per_chunk():
    model = lora(build("llama"), ["q_proj", "v_proj", "lm_head"], "causal_lm")
    assert "lora_A" in dict(model.get_output_embeddings().named_children())  # the head itself is adapted
    assert_same_loss_and_grads(model, "causal", chunked=True, chunk_rows=5)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lm_head.lora_B" in n for n in names)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # PEFT's note on adapting a tied head
def test_lora_on_seq2seq():
    assert_same_loss_and_grads(lora(build("bart"), ["q_proj", "v_proj", "lm_head"], "seq2seq"), "target",
                               chunked=True, chunk_rows=5)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_learning_methods_fall_back_to_full_logits(method):
    from tuneforge.models.methods import PrefixTuningConfig, PromptTuningConfig, apply_method

    cfg = PrefixTuningConfig(num_virtual_tokens=4) if method == "prefix" else PromptTuningConfig(num_virtual_tokens=4)
    model = apply_method(build("llama"), method, cfg, task=get_task("causal_lm"))
    assert_same_loss_and_grads(model, "causal", chunked=False, chunk_rows=5)


def test_logit_softcapping_falls_back():
    import transformers as t

    torch.manual_seed(0)
    model = t.Gemma2ForCausalLM(t.Gemma2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                               num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                               head_dim=8, final_logit_softcapping=0.5, attn_implementation="eager"))
    assert_same_loss_and_grads(model, "causal", chunked=False)


def test_an_unknown_transformation_after_the_output_layer_is_caught_by_the_probe():
    import transformers as t

    class Squashed(t.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = torch.tanh(out.logits)  # no config key says so: only the probe can tell
            return out

    torch.manual_seed(0)
    assert_same_loss_and_grads(Squashed(t.LlamaConfig(**LLAMA)), "causal", chunked=False)


def test_a_wrapper_is_called_as_such_and_the_head_restored():
    model = build("llama")
    wrapped = torch.nn.DataParallel(model)  # on CPU it just calls the module: stands in for DDP here
    b = batch("causal")
    want, _ = reference_loss(model, b, "causal")
    got, out = forward_loss_sum(wrapped, b, "causal")
    assert isinstance(out, VocabOutput)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "forward" not in model.lm_head.__dict__  # the pass-through is gone after the call
    assert model(**{k: v for k, v in b.items() if k != "labels"}).logits.size(-1) == VOCAB


def test_a_batch_without_labels_still_reaches_the_output_layer():
    model = build("llama")
    b = batch("causal")
    b["labels"] = torch.full_like(b["labels"], -100)
    loss, _ = forward_loss_sum(model, b, "causal")
    loss.backward()
    assert loss.item() == 0.0 and model.lm_head.weight.grad is not None


# ------------------------------------------------------------------------------------------ evaluation


def encoded(kind: str):
    from tuneforge.data.batching import Encoded

    b = batch(kind)
    lengths = b["attention_mask"].sum(1).tolist()
    ids = [b["input_ids"][i, :n].tolist() for i, n in enumerate(lengths)]
    if kind == "causal":
        labels = [b["labels"][i, :n].tolist() for i, n in enumerate(lengths)]
    else:
        labels = [b["labels"][i, :n].tolist() for i, n in enumerate(TARGET_LENGTHS)]
    return Encoded(input_ids=ids, labels=labels, label_kind=kind)


def old_outputs(model, enc, kind: str) -> list:
    """predict's outputs before chunking: (top logit, id) from the full fp32 logits of each example."""
    from tuneforge.data.batching import collate

    out = []
    with torch.no_grad():
        for i in range(len(enc)):
            b = collate(enc, [i], 0)
            labels = b.pop("labels")
            if kind == "target":
                b["decoder_input_ids"] = unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
            logits = model(**b).logits.float()[0]
            top = logits.max(-1)
            out.append(torch.stack([top.values, top.indices.float()], -1)[-len(enc.input_ids[i]):]
                       if kind == "causal" else torch.stack([top.values, top.indices.float()], -1))
    return out


@pytest.mark.parametrize(("name", "kind", "method"), [("llama", "causal", None), ("bart", "target", None),
                                                      ("llama", "causal", "prompt")])
def test_predict_keeps_the_top_logit_per_position(name, kind, method):
    from tuneforge.evaluate.predict import predict

    model = build(name)
    if method == "prompt":
        from tuneforge.models.methods import PromptTuningConfig, apply_method

        model = apply_method(model, "prompt", PromptTuningConfig(num_virtual_tokens=4), task=get_task("causal_lm"))
    model.eval()
    enc = encoded(kind)
    preds = predict(model, enc, batch_size=3, pad_id=0)
    want = old_outputs(model, enc, kind)
    assert [tuple(p.shape) for p in preds.outputs] == [tuple(w.shape) for w in want]
    for got, ref in zip(preds.outputs, want):
        torch.testing.assert_close(got[:, 0], ref[:, 0], rtol=1e-5, atol=1e-5)
        assert torch.equal(got[:, 1], ref[:, 1])
    weights = sum(enc.weights)
    with torch.no_grad():
        from tuneforge.data.batching import collate

        full, _ = reference_loss(model, collate(enc, list(range(len(enc))), 0), kind)
    assert preds.loss == pytest.approx(float(full) / weights, rel=1e-5)


# ------------------------------------------------------------------------------------------ batch size


class _Fake:
    """A model whose forward runs out of memory above ``limit`` examples, counting the sizes it saw."""

    def __init__(self, limit: int, message: str):
        self.limit, self.message, self.sizes = limit, message, []
        self.linear = torch.nn.Linear(2, 3)
        self.training = False

    def parameters(self):
        return self.linear.parameters()

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def fake_forward(model, batch, kind, **_):
    n = batch["input_ids"].size(0)
    model.sizes.append(n)
    if n > model.limit:
        raise (torch.OutOfMemoryError(model.message) if model.message.startswith("CUDA")
               else RuntimeError(model.message))
    logits = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    return F.cross_entropy(logits, batch["labels"], reduction="sum"), type("Out", (), {"logits": logits})()


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
           "allocate 123456789 bytes.")


@pytest.mark.parametrize("message", [CPU_OOM, "CUDA out of memory. Tried to allocate 2.00 GiB"])
def test_an_out_of_memory_batch_is_halved_and_retried(monkeypatch, message, capsys):
    import tuneforge.tasks.losses as losses
    from tuneforge.data.batching import Encoded
    from tuneforge.evaluate.predict import predict

    monkeypatch.setattr(losses, "forward_loss_sum", fake_forward)
    enc = Encoded(input_ids=[[1] * (20 - i) for i in range(20)], labels=[i % 3 for i in range(20)])
    model = _Fake(limit=3, message=message)
    preds = predict(model, enc, batch_size=16, pad_id=0)
    assert model.sizes[:4] == [16, 8, 4, 2] and set(model.sizes[4:]) == {2}  # stays halved afterwards
    assert sum(model.sizes[3:]) == 20 and len(preds.outputs) == 20
    assert "ran out of memory; continuing with 8 per batch" in capsys.readouterr().err


def test_out_of_memory_at_one_example_names_the_settings(monkeypatch):
    import tuneforge.tasks.losses as losses
    from tuneforge.data.batching import Encoded
    from tuneforge.evaluate.predict import predict

    monkeypatch.setattr(losses, "forward_loss_sum", fake_forward)
    enc = Encoded(input_ids=[[1] * 7] * 4, labels=[0] * 4)
    with pytest.raises(TuneforgeError, match=r"train\.eval_batch_size 1 .*7 tokens.*lower model\.max_length"):
        predict(_Fake(limit=0, message=CPU_OOM), enc, batch_size=4, pad_id=0)


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    import tuneforge.tasks.losses as losses
    from tuneforge.data.batching import Encoded
    from tuneforge.evaluate.predict import predict

    monkeypatch.setattr(losses, "forward_loss_sum", fake_forward)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict(_Fake(limit=0, message="shape mismatch"), Encoded(input_ids=[[1]] * 2, labels=[0] * 2),
                batch_size=2, pad_id=0)


def test_auto_batch_size_follows_free_memory_and_an_integer_wins(monkeypatch):
    import tuneforge.evaluate.predict as predict_mod

    model, enc = build("llama"), encoded("causal")
    per_example, fixed = predict_mod.eval_memory_estimate(model, enc)
    assert per_example > 0 and fixed == 3 * 4 * loss_chunk_rows(VOCAB) * VOCAB  # one chunk, not one per example
    monkeypatch.setattr(predict_mod, "available_memory", lambda device: 2 * (fixed + 10 * per_example))
    assert predict_mod.auto_eval_batch_size(model, enc) == 10
    monkeypatch.setattr(predict_mod, "available_memory", lambda device: 2**50)
    assert predict_mod.auto_eval_batch_size(model, enc) == predict_mod.MAX_AUTO_EVAL_BATCH
    monkeypatch.setattr(predict_mod, "available_memory", lambda device: 0)
    assert predict_mod.auto_eval_batch_size(model, enc) == 1
    # "auto" batches and a fixed size give the same predictions; a fixed size never asks for the memory
    auto = predict_mod.predict(model, enc, batch_size="auto", pad_id=0)
    monkeypatch.setattr(predict_mod, "auto_eval_batch_size", lambda *a: pytest.fail("sized an explicit batch"))
    fixed_size = predict_mod.predict(model, enc, batch_size=2, pad_id=0)
    assert auto.loss == pytest.approx(fixed_size.loss, rel=1e-5)


def test_a_model_that_keeps_full_logits_is_estimated_per_token():
    from tuneforge.evaluate.predict import eval_memory_estimate
    from tuneforge.models.methods import PromptTuningConfig, apply_method

    enc = encoded("causal")
    chunked, _ = eval_memory_estimate(build("llama"), enc)
    prompt = apply_method(build("llama"), "prompt", PromptTuningConfig(num_virtual_tokens=4), task=get_task("causal_lm"))
    full, fixed = eval_memory_estimate(prompt, enc)
    assert fixed == 0 and full - chunked == 12 * VOCAB * max(enc.lengths)


def test_eval_batch_size_setting():
    from tuneforge.recipe import TrainSection

    assert TrainSection().eval_batch_size == "auto"
    assert TrainSection(eval_batch_size=8).eval_batch_size == 8
    with pytest.raises(ValueError):
        TrainSection(eval_batch_size=0)
    with pytest.raises(ValueError):
        TrainSection(eval_batch_size="big")


def test_copy_of_model_is_probed_separately():
    # the probe verdict is per model object: a deep copy (e.g. the tuner's) gets its own
    model = build("llama")
    b = batch("causal")
    forward_loss_sum(model, b, "causal")
    clone = copy.deepcopy(model)
    _, out = forward_loss_sum(clone, b, "causal")
    assert isinstance(out, VocabOutput)


def test_the_split_is_verified_under_accelerates_bf16_autocast():
    """Accelerate wraps the forward in autocast and returns fp32 outputs: the probe must still accept the
    split (it compares half-precision logits with an fp32 projection), or every bf16 run falls back to
    the full logits."""
    import torch
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.tasks import losses

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    from accelerate.state import AcceleratorState, GradientState

    def reset():  # Accelerate's state is a process-wide singleton; leave it as other tests expect it
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
        ids = torch.randint(0, 256, (2, 24))
        assert losses._verified_split(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}) is not None
    finally:
        reset()
