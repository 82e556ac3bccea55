"""Load an exported model for serving: which task it does, its labels, its context, its device.

Only inference libraries are imported here (transformers, and peft for a prefix/prompt export);
nothing of tuneforge's training code. Weights load from safetensors unless the server was started
with ``--allow-pickle`` (``tuneforge.models.resolve`` refuses pickle-only directories otherwise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError

# Serving imports inference code only (no tuneforge.tasks, whose specs reach the data stage), so the kinds
# of model it serves are its own: an export is served by its head class, and a sequence classifier whose one
# output is labelled "reward" (``is_reward_model``) by /v1/score.
#: architecture suffix -> (served kind, transformers auto class)
TASKS = {
    "ForSequenceClassification": ("classification", "AutoModelForSequenceClassification"),
    "ForTokenClassification": ("token_classification", "AutoModelForTokenClassification"),
    "ForCausalLM": ("causal_lm", "AutoModelForCausalLM"),
}
#: endpoints each served kind offers (besides /v1/models, /health, /metrics)
ENDPOINTS = {
    "classification": ["/v1/classify"],
    "token_classification": ["/v1/tokens"],
    "causal_lm": ["/v1/completions", "/v1/chat/completions"],
    "reward_model": ["/v1/score"],
}
#: The head a reward model's export declares (tuneforge's ``task: reward_model``): one output named "reward".
#: A one-output classifier with any other label name is a regression model and stays "classification".
REWARD_LABEL = "reward"


@dataclass
class ServedModel:
    id: str
    task: str  # a key of ENDPOINTS: classification, token_classification, causal_lm or reward_model
    model: Any
    tokenizer: Any
    device: Any
    max_input_tokens: int  # longest input the model reads (prompt + generated tokens for causal LMs)
    labels: list[str] = field(default_factory=list)  # label names by class index
    problem_type: str | None = None  # single_label_classification, multi_label_classification or regression
    # (regression for reward models: their score is the raw logit)
    created: int = field(default_factory=lambda: int(time.time()))
    dtype: str = "fp32"  # compute precision: fp32, or bf16/fp16 autocast (weights stay fp32)

    def autocast(self):
        """The precision context for a forward pass: matmuls in bf16/fp16, norms and softmax in fp32."""
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @property
    def endpoints(self) -> list[str]:
        return ENDPOINTS[self.task]


def is_reward_model(config) -> bool:
    """A ``*ForSequenceClassification`` config with one output labelled "reward" (``id2label {0: "reward"}``)."""
    id2label = getattr(config, "id2label", None) or {}
    try:
        names = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        return False
    return getattr(config, "num_labels", None) == 1 and names == {0: REWARD_LABEL}


def task_of(architecture: str) -> tuple[str, str]:
    for suffix, task in TASKS.items():
        if architecture.endswith(suffix):
            return task
    kinds = ", ".join(f"*{s}" for s in TASKS)
    raise TuneforgeError(f"the model is a {architecture}; tuneforge serve serves {kinds} models")


def _check_weights(info, allow_pickle: bool):
    """The directory's weights may be loaded: safetensors, or pickle with ``--allow-pickle``."""
    from tuneforge.errors import ModelResolutionError
    from tuneforge.models.load_export import check_export_weights

    try:
        return check_export_weights(info, allow_pickle=allow_pickle)
    except ModelResolutionError as exc:  # the shared message speaks of recipes; a server has a flag
        raise ModelResolutionError(str(exc).replace("set `model.allow_pickle: true` in the recipe",
                                                    "start the server with --allow-pickle")) from None


def context_length(model, tokenizer) -> int:
    """The most tokens the model reads: its position table, capped by the tokenizer's declared limit."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(model.config, "n_positions", None)]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < 10**9:
        limits.append(tok_limit)
    limits = [n for n in limits if isinstance(n, int) and n > 0]
    return min(limits) if limits else 512


def load_served_model(model_dir: Path | str, *, allow_pickle: bool = False, device: str = "auto",
                      threads: int | None = None, max_input_tokens: int | None = None,
                      model_id: str | None = None, dtype: str = "fp32") -> ServedModel:
    """Load ``model_dir`` in eval mode on ``device``, checking that it is a task model we serve.

    ``max_input_tokens`` lowers the model's own context limit; ``model_id`` defaults to the folder name.
    """
    import torch
    from transformers import AutoTokenizer

    from tuneforge.models.load_export import load_export_model, read_export
    from tuneforge.models.resolve import resolve_model

    model_id = model_id or Path(model_dir).name
    model_dir = Path(model_dir)
    if not model_dir.exists():  # an alias: resolve it (safetensors check included) to its directory
        model_dir = resolve_model(str(model_dir), allow_pickle=allow_pickle).path
    if not model_dir.is_dir():
        raise TuneforgeError(f"model directory not found: {model_dir}")
    info = read_export(model_dir, needed_by="tuneforge serve")
    # tuneforge's own method exports are safetensors; anything else goes through the pickle check first
    resolved = _check_weights(info, allow_pickle)
    task, auto_class = task_of(info.architecture)
    if threads:
        torch.set_num_threads(threads)
    model = load_export_model(info, auto_class, resolved)
    from tuneforge.models.load_export import device_of

    device = device_of(device)
    if dtype == "fp16" and device.type != "cuda":
        raise TuneforgeError("dtype fp16 needs a CUDA device; on a CPU use bf16 (fast on CPUs with AVX512-BF16 "
                             "or AMX) or fp32")
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The server measures every input against the context itself and answers 422; transformers'
    # "sequence length is longer than the specified maximum" log line would only repeat that.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    if task == "token_classification" and not getattr(tokenizer, "is_fast", False):
        raise TuneforgeError(f"{model_dir}: /v1/tokens needs a fast tokenizer (tokenizer.json) for character "
                             "offsets; this one is a slow tokenizer")
    limit = context_length(model, tokenizer)
    if max_input_tokens:
        limit = min(limit, max_input_tokens)
    config = model.config
    if task == "classification" and is_reward_model(config):
        task = "reward_model"
    labels = [config.id2label[i] for i in range(config.num_labels)] if task not in ("causal_lm", "reward_model") \
        else []
    problem = getattr(config, "problem_type", None)
    if task == "reward_model":
        problem = "regression"  # the score is the raw logit, whatever the config says
    if task == "classification" and problem is None:
        problem = "regression" if config.num_labels == 1 else "single_label_classification"
    return ServedModel(id=model_id, task=task, model=model, tokenizer=tokenizer, device=device,
                       max_input_tokens=limit, labels=labels, problem_type=problem, dtype=dtype)
