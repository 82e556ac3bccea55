"""Named chat templates, and the rule that picks the template a recipe's chat rows are rendered with.

A chat model must be fine-tuned in the exact format it will be prompted with at inference, so the
default is the tokenizer's own ``chat_template`` (what ``tokenizer.apply_chat_template`` and every
serving stack use). Base models ship without one; for them a recipe names one of the
``NAMED_TEMPLATES`` below. The named templates are ordinary Jinja in the form transformers expects
(``messages``, ``add_generation_prompt``, the tokenizer's special tokens such as ``eos_token`` as
variables; a tokenizer without an ``eos_token`` renders it as nothing), so the chosen template can be
saved with the fine-tuned tokenizer unchanged.

Every named template renders a conversation *prefix-consistently*: rendering the first k messages
gives a prefix of rendering all of them. The loss-mask code in ``formatting.py`` relies on that.

Templates are whitespace-exact: transformers compiles them with ``trim_blocks``/``lstrip_blocks``, so
every newline that belongs in the output is written as a string literal, never as template layout.
"""

from __future__ import annotations

from typing import Any

from tuneforge.errors import DataError

#: ChatML (Qwen, SmolLM, many community fine-tunes). The assistant turn ends with ``<|im_end|>``.
CHATML = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

#: Llama 3 / 3.1 instruct layout (without the tool-calling and date preamble of Meta's full template).
LLAMA3 = (
    "{{- bos_token | default('') }}"
    "{%- for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

#: Zephyr: ``<|role|>`` headers, every turn closed by the tokenizer's ``eos_token``.
ZEPHYR = (
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + (eos_token | default('')) + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{%- endif %}"
)

#: Stanford Alpaca's plain-text layout, for base models without chat tokens. The response is closed
#: by ``eos_token`` so the model learns to stop; multi-turn chats repeat the instruction/response pair.
ALPACA = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{ '### Response:\n' + message['content'] + (eos_token | default('')) + '\n\n' }}"
    "{%- else %}{{ raise_exception('the alpaca template has no role ' + message['role']"
    " + ' (allowed: system, user, assistant)') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '### Response:\n' }}{%- endif %}"
)

#: No markup at all: each message on its own line, assistant turns closed by ``eos_token``. For
#: prompt/completion data where the prompt already carries whatever format the user wants.
PLAIN = (
    "{%- for message in messages %}"
    "{{ message['content'] }}"
    "{%- if message['role'] == 'assistant' %}{{ eos_token | default('') }}{%- endif %}"
    "{{ '\n' }}"
    "{%- endfor %}"
)

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama3": LLAMA3,
    "zephyr": ZEPHYR,
    "alpaca": ALPACA,
    "plain": PLAIN,
}

#: Values of the template setting that mean "the tokenizer's own template".
AUTO_NAMES: tuple[None, str] = (None, "auto")


def _names() -> str:
    return ", ".join(NAMED_TEMPLATES)


def resolve_template(tokenizer: Any, name: str | None, *, key: str = "data.formatting.template") -> str:
    """The Jinja text chat rows are rendered with.

    ``None`` or ``"auto"``: the tokenizer's own ``chat_template`` (its ``"default"`` entry when it has
    several); a name from ``NAMED_TEMPLATES``: that template. Anything else is a ``DataError`` that
    lists the names, and so is ``auto`` for a tokenizer without a template: silently falling back to
    some format the model was never trained on would produce a model that answers in the wrong format.
    """
    if name in AUTO_NAMES:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):
            own = own.get("default")
        if not own:
            raise DataError(
                f"{key}: the tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) "
                f"has no chat template of its own; set {key} to one of: {_names()}"
            )
        return own
    if name in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[name]
    raise DataError(
        f"{key}: unknown chat template {name!r}; use 'auto' (the tokenizer's own) or one of: {_names()}"
    )
