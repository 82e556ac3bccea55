"""Models trained from scratch: an architecture sized in the recipe, randomly initialised.

``model.architecture`` names a family and its size; the vocabulary and special-token ids come from
``model.tokenizer`` (a directory written by ``tuneforge tokenizer train``, or any model whose
tokenizer should be reused). The family maps to a ``transformers`` config, so the result is an
ordinary ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` / ``BertForMaskedLM`` (or the task's head on
that body): it trains, saves, exports and serves like a pretrained model, and a later stage
(``stages:``) can fine-tune it.

Initialisation is transformers' own for the family (normal, std ``initializer_range`` = 0.02; GPT-2
also scales its residual projections by 1/sqrt(2 * layers), as nanoGPT and the GPT-2 paper do),
seeded by the recipe's seed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.sections import Section

Family = Literal["gpt2", "llama", "bert"]
# Which families can carry which task is the task's to say (TaskSpec.scratch_families): a masked LM
# needs bidirectional attention (bert), a causal LM causal attention (gpt2, llama).


class ArchitectureConfig(Section):
    """A transformer to initialise at random (pretraining from scratch)."""

    family: Family = Field(..., description="gpt2 (learned positions, GELU MLP), llama (RoPE, RMSNorm, SwiGLU, "
                                            "grouped-query attention) or bert (bidirectional encoder).")
    layers: int = Field(..., ge=1, description="Transformer blocks.")
    heads: int = Field(..., ge=1, description="Attention heads per block.")
    hidden: int = Field(..., ge=8, description="Hidden (embedding) width; a multiple of heads.")
    intermediate: int | None = Field(None, ge=1, description="MLP width; default 4 x hidden.")
    kv_heads: int | None = Field(None, ge=1, description="llama only: key/value heads (grouped-query "
                                                         "attention); default heads.")
    context: int | None = Field(None, ge=2, description="Position slots; default model.max_length.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals "
                                                             "(0 for small data and short runs, as in nanoGPT).")
    tie_embeddings: bool = Field(True, description="Share the input embedding with the output projection.")

    @model_validator(mode="after")
    def _check(self) -> "ArchitectureConfig":
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.kv_heads is not None:
            if self.family != "llama":
                raise ValueError(f"kv_heads applies to family llama only (got {self.family})")
            if self.heads % self.kv_heads:
                raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        return self


def config_class(family: str) -> Any:
    """The ``transformers`` config class of ``family`` (enough to know the model class before building it)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    return {"gpt2": GPT2Config, "llama": LlamaConfig, "bert": BertConfig}[family]


def build_config(arch: ArchitectureConfig, tokenizer: Any, max_length: int) -> Any:
    """The ``transformers`` config for ``arch`` with ``tokenizer``'s vocabulary and special tokens."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    vocab = len(tokenizer)
    context = arch.context or max_length
    if context < max_length:
        raise ValueError(f"model.architecture.context {context} is below model.max_length {max_length}")
    inner = arch.intermediate or 4 * arch.hidden
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    if arch.family == "gpt2":
        # Exact GELU, one fused kernel (nanoGPT's nn.GELU): GPT-2's default "gelu_new" is the tanh
        # approximation written out in Python ops, measured at a quarter of a small model's step time on CPU.
        return GPT2Config(vocab_size=vocab, n_positions=context, n_embd=arch.hidden, n_layer=arch.layers,
                          n_head=arch.heads, n_inner=inner, resid_pdrop=arch.dropout, embd_pdrop=arch.dropout,
                          attn_pdrop=arch.dropout, tie_word_embeddings=arch.tie_embeddings,
                          activation_function="gelu", **special)
    if arch.family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=arch.hidden, intermediate_size=inner,
                           num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                           num_key_value_heads=arch.kv_heads or arch.heads, max_position_embeddings=context,
                           attention_dropout=arch.dropout, tie_word_embeddings=arch.tie_embeddings, **special)
    return BertConfig(vocab_size=vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
                      num_attention_heads=arch.heads, intermediate_size=inner, max_position_embeddings=context,
                      hidden_dropout_prob=arch.dropout, attention_probs_dropout_prob=arch.dropout,
                      tie_word_embeddings=arch.tie_embeddings, pad_token_id=tokenizer.pad_token_id)


def scratch_model(arch: ArchitectureConfig, spec: Any, tokenizer: Any, max_length: int,
                  label_names: list[str] | None, attn_implementation: str | None = None) -> Any:
    """A randomly initialised ``spec.auto_class`` model of architecture ``arch``; ``attn_implementation``:
    transformers' attention kernel (model.attn_implementation as resolved by ``build.choose_attention``),
    None for transformers' default."""
    import transformers

    config = build_config(arch, tokenizer, max_length)
    for key, value in spec.head_kwargs(label_names).items():
        setattr(config, key, value)
    return getattr(transformers, spec.auto_class).from_config(config, attn_implementation=attn_implementation)
