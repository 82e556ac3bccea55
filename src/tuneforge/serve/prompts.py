"""Generation prompts, prepared on the event loop before they reach the engine: chat rendering (with a
ChatML fallback for tokenizers without a template), completion prompts (text or token ids), and the
token budget a prompt leaves in the model's context, each refused with a 422 that says why."""

from __future__ import annotations

from typing import Any

from tuneforge.serve.errors import APIError
from tuneforge.serve.loader import ServedModel

#: Used when the tokenizer has no chat template of its own: ChatML, the most common chat layout
#: (Qwen, SmolLM, many community fine-tunes). A model never trained on it may answer poorly; the
#: server warns at startup. Its end-of-turn marker is a stop string (``FALLBACK_STOP``).
FALLBACK_CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                          "{{ '<|im_start|>assistant\n' }}{% endif %}")
FALLBACK_STOP = "<|im_end|>"


def chat_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template (its ``default`` entry when it has several), or ``None``."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    return own or None


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template and the assistant's generation prompt.

    The template writes the special tokens itself, so none are added on tokenization. A template that
    refuses the conversation (many insist on alternating user/assistant turns) is a 422 with its reason.
    """
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, chat_template=chat_template(tokenizer) or
                                             FALLBACK_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:
        raise APIError(422, f"the model's chat template cannot render these messages: {exc}",
                       param="messages", code="invalid_messages") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(served: ServedModel, prompt: str | list[int], param: str) -> list[int]:
    """A completion prompt's token ids (with the tokenizer's special tokens, as in evaluation), or the
    ids the client sent, checked against the vocabulary."""
    if isinstance(prompt, str):
        return served.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    vocab = served.model.get_input_embeddings().num_embeddings
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise APIError(422, f"{param} holds token id {bad[0]}, outside the model's vocabulary (0 to {vocab - 1})",
                       param=param, code="invalid_token_id")
    return list(prompt)


def token_budget(prompt_tokens: int, requested: int | None, *, context: int, limit: int,
                 param: str = "max_tokens", prompt_param: str = "prompt", what: str = "the prompt") -> int:
    """How many tokens to generate after a prompt of ``prompt_tokens``: ``requested`` when it fits,
    else ``min(limit, room left in the context)``; 422 when it is over ``limit`` or the context.
    ``param`` and ``prompt_param`` name the request's fields, ``what`` the prompt in messages."""
    if requested is not None and requested > limit:
        raise APIError(422, f"{param}={requested} is over this server's limit of {limit} new tokens per request "
                            "(--max-new-tokens); ask for fewer", param=param, code="max_tokens_too_large")
    room = context - prompt_tokens
    if prompt_tokens == 0:
        raise APIError(422, f"{what} is empty after tokenization; the model needs at least one prompt token",
                       param=prompt_param, code="empty_prompt")
    if room <= 0:
        raise APIError(422, f"{what} is {prompt_tokens} tokens long, which fills the model's context of {context} "
                            "tokens and leaves no room to generate: shorten it", param=prompt_param,
                       code="context_length_exceeded")
    if requested is not None and requested > room:
        raise APIError(422, f"{what} ({prompt_tokens} tokens) plus {param}={requested} is {prompt_tokens + requested}"
                            f" tokens, over the model's context of {context} tokens: shorten the prompt or ask for "
                            f"at most {room} tokens", param=param, code="context_length_exceeded")
    return requested if requested is not None else min(limit, room)
