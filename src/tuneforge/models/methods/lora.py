"""``lora`` and ``dora`` (LoRA with ``use_dora: true``; both spellings give the same model), through PEFT.

Both are linear in the weights, so the export merges them into plain weights (``merge_and_unload``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.base import Method, register
from tuneforge.models.methods.peft_common import merge_and_unload, peft_apply
from tuneforge.sections import Section


class LoraConfig(Section):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA branch input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Names (or dotted name suffixes) of the linear layers to adapt, e.g. [query, value]; "
        "all-linear: every linear layer of the body (attention, feed-forward, pooler), never the output layer "
        "or the task head. null: the attention projections of the architecture (BERT-style: query, key, value, "
        "attention.output.dense; Llama-style: q/k/v/o_proj; T5: q, k, v, o; BART-style: q/k/v/out_proj; "
        "DistilBERT: q/k/v/out_lin; GPT-2: c_attn, attn.c_proj); other architectures: PEFT's default.",
    )
    include_mlp: bool = Field(
        False,
        description="With the default target_modules, also adapt the feed-forward layers (BERT-style: "
        "intermediate.dense, output.dense; Llama-style: gate/up/down_proj; T5: wi, wi_0, wi_1, wo; BART-style: "
        "fc1, fc2). More parameters, often a little better on harder tasks.",
    )
    use_dora: bool = Field(
        False,
        description="Weight-decomposed LoRA (DoRA): learns a per-output magnitude next to the LoRA direction. "
        "method: dora sets this.",
    )
    use_rslora: bool = Field(
        False,
        description="Rank-stabilised LoRA: scale the update by alpha/sqrt(r) instead of alpha/r, so higher ranks "
        "keep learning as fast as low ones (Kalajdzievski 2023). Worth it from r of about 32 up.",
    )
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default",
        description="How A and B start. default: A Kaiming-uniform, B zero (the update starts at 0); gaussian: A "
        "normal(0, 1/r); pissa: A and B from the top-r singular vectors of each weight (fast randomised SVD, 4 "
        "iterations), which are moved out of the frozen weight; olora: the same from a QR decomposition. pissa "
        "and olora change the frozen base weights (the export merges them back) and often converge faster.",
    )
    plus_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: the B matrices learn at plus_ratio x train.learning_rate, the A matrices at the "
        "learning rate (Hayou et al. 2024 suggest 16). null: one learning rate for both.",
    )

    @model_validator(mode="after")
    def _check(self) -> "LoraConfig":
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("lora.target_modules is empty; list module names, use all-linear, or null for the "
                             "default")
        if self.include_mlp and self.target_modules == "all-linear":
            raise ValueError("lora.include_mlp applies only to the default target list; all-linear already "
                             "includes the feed-forward layers: remove include_mlp")
        if self.include_mlp and self.target_modules is not None:
            raise ValueError(
                "lora.include_mlp applies only to the default target list; with lora.target_modules set, "
                "add the feed-forward layer names there and remove include_mlp"
            )
        return self


# ------------------------------------------------------------------------------------- LoRA targets

# model_type -> family; family -> (attention projections, feed-forward projections). Names are matched
# by PEFT as dotted suffixes, so "attention.output.dense" picks BERT's attention output but not the pooler.
_LORA_FAMILY = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), "bert"),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), "llama"),
    **dict.fromkeys(("t5", "mt5"), "t5"),
    **dict.fromkeys(("bart", "mbart", "marian", "pegasus", "m2m_100"), "bart"),
    "distilbert": "distilbert",
    "gpt2": "gpt2",
}
_LORA_TARGETS = {
    "bert": (["query", "key", "value", "attention.output.dense"], ["intermediate.dense", "output.dense"]),
    "llama": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "t5": (["q", "k", "v", "o"], ["wi", "wi_0", "wi_1", "wo"]),
    "bart": (["q_proj", "k_proj", "v_proj", "out_proj"], ["fc1", "fc2"]),
    "distilbert": (["q_lin", "k_lin", "v_lin", "out_lin"], ["lin1", "lin2"]),
    "gpt2": (["c_attn", "attn.c_proj"], ["c_fc", "mlp.c_proj"]),
}


def default_lora_targets(model, include_mlp: bool = False) -> list[str] | None:
    """The LoRA target names for ``model``'s architecture; None: let PEFT pick (unknown architecture)."""
    model_type = getattr(model.config, "model_type", "")
    family = _LORA_FAMILY.get(model_type)
    if family is None:
        if include_mlp:
            raise TuneforgeError(
                f"lora.include_mlp: no default layer list for model type {model_type!r}; list the layers in "
                "lora.target_modules instead (print(model) shows their names)"
            )
        return None
    attention, mlp = _LORA_TARGETS[family]
    return attention + mlp if include_mlp else list(attention)


#: lora.init -> PEFT's init_lora_weights. PiSSA with 4 iterations of randomised SVD instead of the full SVD:
#: the PiSSA paper's fast variant, close in quality, and seconds instead of minutes for 7B-size weights. Its
#: random projection is seeded (see peft_common.get_peft_model), so rebuilding the model (tuneforge export, a
#: resumed run) gives the same residual base weights.
LORA_INIT: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_4",
                                    "olora": "olora"}
#: Seed of the random projection of PiSSA's randomised SVD (any fixed value; it never touches the run's RNG).
_LORA_INIT_SEED = 0


def _peft_config(model, cfg: LoraConfig, ctx, task, save):
    import peft

    # "all-linear" goes to PEFT as is: it adapts every Linear/Conv1D but the output embeddings, and never
    # one inside modules_to_save (our task heads, which train whole).
    targets = cfg.target_modules or default_lora_targets(model, cfg.include_mlp)
    return peft.LoraConfig(task_type=task, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=targets, use_dora=cfg.use_dora or ctx.method == "dora",
                           use_rslora=cfg.use_rslora, init_lora_weights=LORA_INIT[cfg.init],
                           modules_to_save=save), "lora.target_modules"


def _init_seed(cfg: LoraConfig) -> int | None:
    return _LORA_INIT_SEED if cfg.init == "pissa" else None


_apply = peft_apply(_peft_config, seed=_init_seed)

LORA = register(Method("lora", _apply, "merged", section="lora", config=LoraConfig, merge=merge_and_unload))
DORA = register(Method("dora", _apply, "merged", section="lora", config=LoraConfig, merge=merge_and_unload))
