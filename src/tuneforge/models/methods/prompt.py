"""``prompt``: prompt tuning (Lester et al. 2021), a learned soft prompt prepended to the input, through PEFT.

Exported like prefix tuning: the base model plus PEFT's adapter folder (export kind ``peft_prompt``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.base import Method, register
from tuneforge.models.methods.peft_common import peft_apply
from tuneforge.sections import Section


class PromptTuningConfig(Section):
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="Learned embeddings prepended to the input (soft prompt)."
    )
    init: Literal["random", "text"] = Field(
        "random",
        description="random: random vectors; text: the embeddings of init_text's tokens (repeated or cut to "
        "num_virtual_tokens), usually faster to train.",
    )
    init_text: str | None = Field(
        None, description="Text whose token embeddings start the soft prompt; only with init: text."
    )

    @model_validator(mode="after")
    def _check(self) -> "PromptTuningConfig":
        if self.init == "text" and not (self.init_text or "").strip():
            raise ValueError("prompt.init is 'text' but prompt.init_text is empty; give the text, e.g. "
                             "'Classify the sentiment of this review:', or use init: random")
        if self.init == "random" and self.init_text is not None:
            raise ValueError("prompt.init_text is set but prompt.init is 'random'; set init: text or "
                             "remove init_text")
        return self


def _check(cfg: PromptTuningConfig, ctx) -> None:
    if cfg.init == "text" and ctx.tokenizer is None:
        raise TypeError("apply_method: prompt.init 'text' needs the tokenizer (tokenizer=...)")


def _peft_config(model, cfg: PromptTuningConfig, ctx, task, save):
    import peft

    # Always random here: PEFT's own text init reloads a tokenizer by name, which a local or offline
    # model may not have; _init_prompt_from_text does the same with the tokenizer we already hold.
    return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens,
                                   prompt_tuning_init="RANDOM", modules_to_save=save), "prompt"


def _finish(wrapped, cfg: PromptTuningConfig, ctx) -> None:
    if cfg.init == "text":
        _init_prompt_from_text(wrapped, cfg.init_text, ctx.tokenizer)


def _init_prompt_from_text(peft_model, text: str, tokenizer) -> None:
    """Start the soft prompt at the embeddings of ``text`` (as PEFT's TEXT init, without special tokens:
    a [CLS]/<s> in the middle of the prompt would mean nothing)."""
    import torch

    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise TuneforgeError(f"prompt.init_text {text!r} has no tokens; give a non-empty text")
    table = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    total = table.weight.shape[0]  # num_virtual_tokens x transformer sub-modules (2 for seq2seq)
    ids = (ids * (total // len(ids) + 1))[:total]
    words = peft_model.get_base_model().get_input_embeddings()
    with torch.no_grad():
        vectors = words(torch.tensor(ids, device=words.weight.device))
        table.weight.copy_(vectors.to(table.weight.dtype))


PROMPT = register(Method("prompt", peft_apply(_peft_config, check=_check, finish=_finish), "peft_prompt",
                         section="prompt", config=PromptTuningConfig))
