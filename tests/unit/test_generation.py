"""tuneforge.models.generation with tiny random models (Llama, BART) and a word-level tokenizer.

One word is one token, so token counts and decoded texts are exact. The references come from
``model.generate`` on one unpadded prompt at a time: batched generation must reproduce them, which
only holds with left padding and a correct attention mask.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from pydantic import ValidationError

from tuneforge.errors import TuneforgeError
from tuneforge.models.generation import GenerationConfig, cut_at_stop, generate, generate_from_messages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ("<unk> <s> </s> system user assistant : the a cat dog sat on mat red blue big small ran jumped over "
         "under and or but so very quick lazy fox bird tree house car road sky sun moon star day night").split()
BOS, EOS = 1, 2
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")
# Different lengths (1 to 10 words), so every batch needs padding.
PROMPTS = ["the cat sat on the mat", "dog", "a very quick red fox jumped over the lazy dog", "sun", "blue sky and sea"]


def make_tokenizer(chat_template: str | None = TEMPLATE):
    """Word-level, no pad token (as Llama/GPT-2 ship), right padding side (the transformers default)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>")
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def llama():
    # A wide init makes the random logits decisive (no near-ties) and the outputs varied.
    torch.manual_seed(1)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=BOS, eos_token_id=EOS,
        initializer_range=0.5)).eval()


@pytest.fixture(scope="module")
def bart():
    torch.manual_seed(0)
    return transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=len(WORDS), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=EOS, bos_token_id=BOS, eos_token_id=EOS, forced_eos_token_id=None, init_std=0.5,
        # A word, not a special token: the output must leave it out because it was not generated.
        decoder_start_token_id=WORDS.index("the"))).eval()


def reference(model, tok, text: str, max_new_tokens: int, num_beams: int = 1) -> str:
    """Plain transformers generation of one prompt, no padding: what batched generation must match."""
    ids = torch.tensor([tok(text)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         num_beams=num_beams, do_sample=False, pad_token_id=EOS)
    start = 1 if model.config.is_encoder_decoder else ids.shape[1]  # decoder start token / prompt
    return tok.decode(out[0, start:], skip_special_tokens=True).strip()


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------------------------------ config


def test_config_defaults():
    cfg = GenerationConfig()
    assert (cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k, cfg.num_beams, cfg.stop,
            cfg.batch_size, cfg.seed) == (128, False, 1.0, 1.0, 0, 1, [], 8, None)
    # Sampling settings and a seed are fine together with do_sample; a seed alone is ignored by greedy.
    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=40, seed=3)
    GenerationConfig(seed=3, num_beams=4, stop=["\n\n"])


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.7}, "generation.temperature=0.7 only applies when sampling, but generation.do_sample is false"),
    ({"top_p": 0.9, "top_k": 5}, "generation.top_p=0.9 and generation.top_k=5 only apply when sampling"),
    ({"stop": ["###", ""]}, "generation.stop[1] is an empty string"),
    ({"do_sample": True, "temperature": 0.0}, "greater than 0"),
    ({"do_sample": True, "top_p": 1.5}, "less than or equal to 1"),
    ({"max_new_tokens": 0}, "greater than or equal to 1"),
    ({"beams": 2}, "Extra inputs are not permitted"),
])
def test_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace(".", r"\.")):
        GenerationConfig(**kwargs)


def test_importing_generation_loads_neither_torch_nor_transformers():
    # data.augment imports this module, and data preparation runs before any model is loaded.
    code = ("import sys, tuneforge.models.generation, tuneforge.data.augment\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cut_at_stop_uses_the_earliest_stop_string():
    assert cut_at_stop("answer: 4\n### next\n\nmore", ["\n\n", "###"]) == "answer: 4\n"
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"
    assert cut_at_stop("### at the start", ["###"]) == ""
    assert cut_at_stop("text", []) == "text"


# ------------------------------------------------------------------------------------ decoder-only


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_left_padded_generation_matches_one_prompt_at_a_time(llama, tok, num_beams):
    expected = [reference(llama, tok, p, 6, num_beams) for p in PROMPTS]
    assert len(set(expected)) == len(PROMPTS) and all(expected)  # varied outputs, or the check proves little
    cfg = GenerationConfig(max_new_tokens=6, num_beams=num_beams, batch_size=3)  # batches of 3 and 2
    assert generate(llama, tok, PROMPTS, cfg) == expected


def test_max_new_tokens_is_respected(llama, tok):
    for limit in (1, 4):
        counts = [n_tokens(tok, t) for t in generate(llama, tok, PROMPTS, GenerationConfig(max_new_tokens=limit))]
        assert max(counts) == limit and min(counts) >= 0


def test_stop_strings_cut_the_output_and_end_generation_early(llama, tok):
    full = generate(llama, tok, PROMPTS, GenerationConfig(max_new_tokens=8))
    stop = full[0].split()[2]  # a word generated in the middle of the first output
    cut = generate(llama, tok, PROMPTS, GenerationConfig(max_new_tokens=8, stop=[stop, "never generated"]))
    for whole, short in zip(full, cut):
        assert short == (whole[:whole.find(stop)].strip() if stop in whole else whole)
    assert cut[0] == " ".join(full[0].split()[:2])

    calls: list[int] = []
    hook = llama.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        generate(llama, tok, PROMPTS[:1], GenerationConfig(max_new_tokens=8))
        without_stop = len(calls)
        calls.clear()
        generate(llama, tok, PROMPTS[:1], GenerationConfig(max_new_tokens=8, stop=[stop]))
    finally:
        hook.remove()
    assert without_stop == 8 and len(calls) == 3  # stopped on the step that produced the stop word


def test_seeded_sampling_is_reproducible_and_leaves_the_callers_rng_alone(llama, tok):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, seed=11, batch_size=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate(llama, tok, PROMPTS, cfg)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate(llama, tok, PROMPTS, cfg) == first
    assert generate(llama, tok, PROMPTS, cfg.model_copy(update={"seed": 12})) != first
    assert first != generate(llama, tok, PROMPTS, GenerationConfig(max_new_tokens=8))  # it did sample


def test_unseeded_sampling_uses_the_global_rng(llama, tok):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True)
    torch.manual_seed(5)
    first = generate(llama, tok, PROMPTS, cfg)
    torch.manual_seed(5)
    assert generate(llama, tok, PROMPTS, cfg) == first


def test_the_callers_tokenizer_and_model_modes_are_unchanged(tok):
    torch.manual_seed(0)
    # Heavy dropout: any forward pass in training mode would change the output.
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.5, attention_dropout=0.9))
    tokenizer = make_tokenizer()
    cfg = GenerationConfig(max_new_tokens=5)
    expected = generate(model.eval(), tokenizer, PROMPTS, cfg)

    model.train()
    model.model.layers[0].eval()  # e.g. a frozen block kept in eval mode on purpose
    modes = [m.training for m in model.modules()]
    assert generate(model, tokenizer, PROMPTS, cfg) == expected  # dropout was off while generating
    assert [m.training for m in model.modules()] == modes
    assert (tokenizer.padding_side, tokenizer.pad_token, tokenizer.pad_token_id) == ("right", None, None)


def test_chat_prompts_use_the_chat_template(llama, tok):
    cfg = GenerationConfig(max_new_tokens=6)
    rendered = "system : be brief user : the cat assistant :"
    assert generate(llama, tok, ["the cat"], cfg, chat=True, system="be brief") == [reference(llama, tok, rendered, 6)]
    assert generate(llama, tok, ["the cat"], cfg, chat=True) == [reference(llama, tok, "user : the cat assistant :", 6)]

    conversations = [
        [{"role": "user", "content": "the dog"}, {"role": "assistant", "content": "ran"},
         {"role": "user", "content": "and the cat"}],
        [{"role": "user", "content": "sun"}],
    ]
    expected = [reference(llama, tok, "user : the dog assistant : ran user : and the cat assistant :", 6),
                reference(llama, tok, "user : sun assistant :", 6)]
    assert generate_from_messages(llama, tok, conversations, cfg) == expected


def test_chat_without_a_template_and_bad_prompts_are_clear_errors(llama, tok):
    cfg = GenerationConfig(max_new_tokens=2)
    with pytest.raises(TuneforgeError, match="has no chat template"):
        generate(llama, make_tokenizer(chat_template=None), ["the cat"], cfg, chat=True)
    with pytest.raises(ValueError, match="needs chat=True"):
        generate(llama, tok, ["the cat"], cfg, system="be brief")
    with pytest.raises(TuneforgeError, match="prompt 1 is empty after tokenization"):
        generate(llama, tok, ["the cat", ""], cfg)
    assert generate(llama, tok, [], cfg) == []


def test_peft_prompt_tuning_batches_match_one_prompt_at_a_time(llama, tok):
    # peft's prompt tuning ignores position_ids, so left padding would shift the prompt against the
    # virtual tokens; generate batches equal-length prompts instead and keeps the input order.
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(copy.deepcopy(llama), peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=3))
    prompts = PROMPTS + ["red fox", "blue"]
    cfg = GenerationConfig(max_new_tokens=5, batch_size=2)
    one_by_one = [generate(model, tok, [p], cfg)[0] for p in prompts]
    assert generate(model, tok, prompts, cfg) == one_by_one
    assert len(set(one_by_one)) > 3


# ---------------------------------------------------------------------------------- encoder-decoder


def test_encoder_decoder_batches_match_one_prompt_at_a_time(bart, tok):
    expected = [reference(bart, tok, p, 5) for p in PROMPTS]
    assert len(set(expected)) > 2 and all(expected)
    assert generate(bart, tok, PROMPTS, GenerationConfig(max_new_tokens=5, batch_size=2)) == expected
    counts = [n_tokens(tok, t) for t in generate(bart, tok, PROMPTS, GenerationConfig(max_new_tokens=3))]
    assert max(counts) == 3


def test_encoder_inputs_are_cut_at_the_tokenizers_limit(bart):
    short = make_tokenizer()
    short.model_max_length = 4
    long_prompt = "a very quick red fox jumped over the lazy dog"
    cfg = GenerationConfig(max_new_tokens=4)
    assert generate(bart, short, [long_prompt], cfg) == generate(bart, make_tokenizer(), ["a very quick red"], cfg)


def test_generation_longer_than_the_position_table_slides_a_window():
    """A small GPT-2 pretrained on short blocks has n_positions slots; samples longer than that slide
    over the text (nanoGPT's sampler) instead of indexing past the position table."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import minilm_dir
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=8, n_embd=16, n_layer=1, n_head=2,
                                       eos_token_id=None, bos_token_id=None))
    greedy = GenerationConfig(max_new_tokens=20)
    [out] = generate(model, tok, ["the cat sat"], greedy)
    assert len(tok(out, add_special_tokens=False)["input_ids"]) >= 15  # ~20 tokens, beyond the 8 slots
    # the first new token is what one ordinary greedy step gives
    ids = tok("the cat sat", return_tensors="pt")["input_ids"]
    first = int(model(input_ids=ids).logits[0, -1].argmax())
    assert out.startswith(tok.decode([first]).strip())
    sampled = GenerationConfig(max_new_tokens=12, do_sample=True, top_k=5, seed=3)
    assert generate(model, tok, ["a dog"], sampled) == generate(model, tok, ["a dog"], sampled)
