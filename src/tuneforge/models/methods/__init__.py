"""Training methods: which weights a run trains (full, head only, PEFT, bottleneck adapters) and how it exports.

One entry point, ``apply_method(model, method, cfg, task=spec)``, turns a freshly loaded task model
into the model the training loop optimises; ``merge_for_export`` and ``save_method_export`` /
``load_method_export`` turn the trained model into something that reloads and predicts identically.

Methods, one module each, registered in ``REGISTRY`` (``base.Method``):

- ``full``: nothing changes (freezing layers is ``build.apply_freeze``'s job); ``head_only``: every weight
  frozen except the task head (see ``head_modules``) (``full.py``);
- ``lora`` / ``dora``: PEFT LoRA; ``dora`` is ``lora`` with ``use_dora: true`` (both spellings give the
  same model) (``lora.py``); ``ia3`` (``ia3.py``), ``prefix`` (``prefix.py``), ``prompt`` (``prompt.py``):
  PEFT, sharing ``peft_common.py``;
- ``adapter``: our bottleneck adapters (``adapter.py``, with the modules in ``tuneforge.models.adapters``;
  the ``adapters`` library pins transformers 4.x).

Adding a method: a module here that ends with ``register(Method(name, apply, export_kind, section=...,
config=..., merge=...))``, its name in ``BUILTIN`` below and in ``base.MethodName`` (the recipe's accepted
``method:`` values), and its settings section in the recipe. A method exports as one of the kinds of
``export.EXPORT_FORMATS`` (plain, merged, peft_prompt, bottleneck_adapters); a new kind is a new
``ExportFormat`` there.

The task head: classification, regression, token_classification and extractive_qa models get a newly
initialised head (``classifier``, ``score``, ``qa_outputs``, ``classification_head``, ...). It must train
under every method, else the model can only output noise; it is found generically as the top-level
modules outside the pretrained body (``model.base_model``) and, for PEFT, listed in ``modules_to_save``
(PEFT's own default list misses e.g. DistilBERT's ``pre_classifier`` and BART's ``classification_head``).
causal_lm and seq2seq models keep their pretrained LM head: it stays frozen under PEFT and adapters, and
``head_only`` trains the output embeddings (``model.get_output_embeddings()``; when they are tied to the
input embeddings, those train too, since they are the same tensor).

``apply_method`` modifies ``model`` in place and returns it (or the PEFT wrapper around it), as
``peft.get_peft_model`` does: copying a multi-GB model to keep the original intact would be the surprise.

The configs import only pydantic, so the recipe can embed them and validate without torch; torch,
transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib

#: modules of the built-in methods, in the order they register (the order of ``METHODS``)
BUILTIN = ("full", "lora", "ia3", "prefix", "prompt", "adapter")

for _name in BUILTIN:
    importlib.import_module(f"tuneforge.models.methods.{_name}")

from tuneforge.models.methods.adapter import AdapterConfig, load_adapter_export, save_adapter_export  # noqa: E402
from tuneforge.models.methods.base import (  # noqa: E402
    EXPORT_KINDS,
    METHODS,
    REGISTRY,
    ApplyContext,
    ExportKind,
    Method,
    MethodName,
    apply_method,
    get_method,
    head_modules,
    method_sections,
    register,
)
from tuneforge.models.methods.export import (  # noqa: E402
    EXPORT_CONTENTS,
    EXPORT_FORMATS,
    EXPORT_MANIFEST,
    ExportFormat,
    load_method_export,
    merge_for_export,
    save_method_export,
)
from tuneforge.models.methods.ia3 import IA3Config  # noqa: E402
from tuneforge.models.methods.lora import LORA_INIT, LoraConfig, default_lora_targets  # noqa: E402
from tuneforge.models.methods.neftune import add_neftune, remove_neftune  # noqa: E402
from tuneforge.models.methods.prefix import PrefixTuningConfig, prefix_compatible  # noqa: E402
from tuneforge.models.methods.prompt import PromptTuningConfig  # noqa: E402

MethodConfig = LoraConfig | IA3Config | PrefixTuningConfig | PromptTuningConfig | AdapterConfig

# The recipe section that configures each method, and its class; full and head_only take none.
METHOD_SECTIONS: dict[str, tuple[str, type]] = method_sections()

__all__ = [
    "BUILTIN", "EXPORT_CONTENTS", "EXPORT_FORMATS", "EXPORT_KINDS", "EXPORT_MANIFEST", "LORA_INIT", "METHODS",
    "METHOD_SECTIONS", "REGISTRY", "AdapterConfig", "ApplyContext", "ExportFormat",
    "ExportKind", "IA3Config", "LoraConfig", "Method", "MethodConfig", "MethodName", "PrefixTuningConfig",
    "PromptTuningConfig", "add_neftune", "apply_method", "default_lora_targets", "get_method",
    "head_modules", "load_adapter_export", "load_method_export", "merge_for_export", "method_sections",
    "prefix_compatible", "register", "remove_neftune", "save_adapter_export", "save_method_export",
]
