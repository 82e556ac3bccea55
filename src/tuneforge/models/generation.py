"""Batched text generation for evaluation, augmentation and serving: one config, one code path.

Generation goes wrong quietly: right padding makes a decoder-only model continue from pad tokens,
a missing attention mask lets it attend to them, a model left in training mode applies dropout, and
an unseeded sampler makes two runs of one recipe disagree. ``generate`` owns those details so every
caller gets the same, tested behaviour:

* decoder-only prompts are left-padded by hand (with the pad token, or the eos token when the
  tokenizer has none), so the caller's tokenizer is never changed, not even temporarily;
  encoder-decoder prompts are right-padded; both pass an attention mask;
* only the newly generated text is returned, decoded without special tokens, cut at the first stop
  string (which is removed) and stripped;
* the model runs in eval mode under ``torch.inference_mode`` and every module gets its previous
  train/eval mode back afterwards;
* greedy and beam search are deterministic; sampling with ``seed`` is reproducible and runs in a
  forked RNG, so the caller's torch RNG state is left as it was;
* encoder inputs are cut at the tokenizer's ``model_max_length``; decoder-only prompts are never cut.

Settings the config does not name (eos ids, bad words, repetition penalty, ...) come from the
model's own ``generation_config``, as with ``model.generate``. torch and transformers are imported
inside the functions: importing this module must stay cheap for data preparation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.sections import Section

# Values under which a sampling setting changes nothing; any other value needs do_sample.
_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


class GenerationConfig(Section):
    max_new_tokens: int = Field(128, ge=1, description="Most tokens generated per prompt (the prompt not counted).")
    do_sample: bool = Field(
        False, description="Sample the next token; false: greedy (num_beams 1) or beam search, deterministic."
    )
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature; below 1 sharper, above 1 flatter.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the smallest set of tokens "
                         "whose probability adds up to top_p; 1: off.")
    top_k: int = Field(0, ge=0, description="Sample only among the top_k most likely tokens; 0: off.")
    num_beams: int = Field(1, ge=1, le=64, description="Beam width; 1: no beam search.")
    stop: list[str] = Field(
        default_factory=list,
        description="Stop strings: the output is cut at the first one found, which is removed. Matched in the "
                    "text decoded without special tokens; generation of a prompt ends once one appears.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call.")
    seed: int | None = Field(
        None, ge=0, description="Seed for sampling (reproducible; the caller's RNG is untouched). Greedy and beam "
                                "search ignore it. None: use the global torch RNG.",
    )

    @model_validator(mode="after")
    def _check(self) -> "GenerationConfig":
        if not self.do_sample:
            changed = [k for k, default in _SAMPLING_DEFAULTS.items() if getattr(self, k) != default]
            if changed:
                settings = " and ".join(f"generation.{k}={getattr(self, k)}" for k in changed)
                raise ValueError(
                    f"{settings} only {'applies' if len(changed) == 1 else 'apply'} when sampling, but "
                    f"generation.do_sample is false; set do_sample: true, or remove {' and '.join(changed)} "
                    "(off: temperature 1.0, top_p 1.0, top_k 0)"
                )
        empty = [i for i, s in enumerate(self.stop) if not s]
        if empty:
            raise ValueError(f"generation.stop[{empty[0]}] is an empty string; it would cut every output to "
                             "nothing. Remove it or give the text to stop at")
        return self


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], cfg: GenerationConfig, *, chat: bool = False,
    system: str | None = None, progress: str | None = None,
) -> list[str]:
    """Generate a continuation for each prompt; returns one string per prompt, in order.

    With ``chat=True`` each prompt becomes a user message (after a system message when ``system``
    is given) rendered with the tokenizer's chat template and ``add_generation_prompt=True``;
    otherwise prompts are tokenized as they are, with the tokenizer's special tokens. ``progress``: a
    label for a progress bar over the prompts (long evaluations), None for none.
    """
    if system is not None and not chat:
        raise ValueError("generate(system=...) needs chat=True: a system message only exists in a chat template")
    if chat:
        head = [{"role": "system", "content": system}] if system is not None else []
        return generate_from_messages(model, tokenizer, [[*head, {"role": "user", "content": p}] for p in prompts],
                                      cfg, progress=progress)
    return _generate_encoded(model, tokenizer, _tokenize(model, tokenizer, prompts, special_tokens=True), cfg,
                             progress)


def generate_from_messages(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]], cfg: GenerationConfig, *,
    progress: str | None = None,
) -> list[str]:
    """Generate the next assistant turn of each conversation (lists of ``{"role", "content"}`` messages)."""
    if conversations and not getattr(tokenizer, "chat_template", None):
        raise TuneforgeError(
            f"the tokenizer ({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '') or 'unnamed'}) "
            "has no chat template, so chat prompts cannot be rendered; use an instruction-tuned model's tokenizer "
            "or set a chat_template on it"
        )
    for i, conversation in enumerate(conversations):
        if not conversation:
            raise ValueError(f"conversation {i} has no messages")
    # The template writes the special tokens (BOS, role markers) itself; adding them again on
    # tokenization would put a second BOS in front of every prompt.
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
             for c in conversations]
    return _generate_encoded(model, tokenizer, _tokenize(model, tokenizer, texts, special_tokens=False), cfg,
                             progress)


def generate_ids(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, *,
    num_return_sequences: int = 1,
) -> list[list[int]]:
    """Token-level ``generate``, for callers that train on what was generated (GRPO): the new token ids
    of ``num_return_sequences`` continuations of each prompt (token-id lists, e.g. rendered chat
    prompts), prompt-major: prompt 0's continuations, then prompt 1's, ...

    Each continuation ends with (and includes) its first end-of-sequence token (the model's
    ``generation_config.eos_token_id``, else the tokenizer's), or with the token that completes a stop
    string of ``cfg.stop``, or after ``cfg.max_new_tokens`` tokens; no padding follows it. Decoder-only
    models only. Left padding, eval mode (each module's mode restored), seeding and inference mode as in
    ``generate``; ``cfg.batch_size`` counts sequences (prompt copies) per ``model.generate`` call. A
    prompt that does not fit the model's position table together with ``max_new_tokens`` is an error:
    the caller trains on prompt + continuation as one sequence, so there is no sliding window here."""
    import torch

    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise TuneforgeError("generate_ids continues decoder-only prompts; this model is an encoder-decoder")
    if not prompts:
        return []
    empty = [i for i, ids in enumerate(prompts) if not ids]
    if empty:
        raise TuneforgeError(f"prompt {empty[0]} has no tokens; generation needs at least one prompt token")
    window = _position_slots(model)
    longest = max(len(ids) for ids in prompts)
    if window is not None and longest + cfg.max_new_tokens > window:
        raise TuneforgeError(f"a prompt of {longest} tokens plus max_new_tokens {cfg.max_new_tokens} is more than the "
                             f"model's {window} positions; shorten the prompts or lower max_new_tokens")
    expanded = [list(ids) for ids in prompts for _ in range(num_return_sequences)]
    pad_id, device, eos_ids = _pad_id(tokenizer), _device(model), _eos_ids(model, tokenizer)
    kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams,
                                  do_sample=cfg.do_sample, pad_token_id=pad_id)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    outputs: dict[int, list[int]] = {}
    with _eval_mode(model), seeded(model, cfg.seed if cfg.do_sample else None), torch.inference_mode():
        for indices in _batches(expanded, cfg.batch_size, unpadded=_ignores_positions(model)):
            input_ids, mask = pad_ids([expanded[i] for i in indices], pad_id, left=True, device=device)
            offset = input_ids.shape[1]
            stopping = _stop_criteria(tokenizer, cfg.stop, offset) if cfg.stop else None
            ids = model.generate(input_ids=input_ids, attention_mask=mask, stopping_criteria=stopping, **kwargs)
            for i, row in zip(indices, ids[:, offset:].tolist()):
                outputs[i] = _cut_ids(row, eos_ids, tokenizer, cfg.stop)
    return [outputs[i] for i in range(len(expanded))]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


def _cut_ids(row: list[int], eos_ids: set[int], tokenizer: Any, stop: Sequence[str]) -> list[int]:
    """``row`` up to and including its first end-of-sequence token, or the token completing a stop string."""
    end = next((k + 1 for k, token in enumerate(row) if token in eos_ids), len(row))
    row = row[:end]
    if stop:
        for k in range(len(row)):
            if any(s in tokenizer.decode(row[:k + 1], skip_special_tokens=True) for s in stop):
                return row[:k + 1]
    return row


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string; all of it if none occurs."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(found)] if found else text


# ------------------------------------------------------------------------------------------ internals


def _tokenize(model: Any, tokenizer: Any, texts: Sequence[str], *, special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    # An encoder reads at most model_max_length tokens (Marian: 512), so longer inputs are cut as
    # in training. A decoder-only prompt is not: cutting it would drop the instruction or the
    # generation prompt, and the caller must decide what to keep.
    limit = getattr(tokenizer, "model_max_length", None)
    truncate = bool(getattr(model.config, "is_encoder_decoder", False)) and isinstance(limit, int) and limit < 10**9
    return tokenizer(list(texts), add_special_tokens=special_tokens, truncation=truncate)["input_ids"]


def _generate_encoded(model: Any, tokenizer: Any, encoded: list[list[int]], cfg: GenerationConfig,
                      progress: str | None = None) -> list[str]:
    if progress is None or not encoded:
        return _generate_batches(model, tokenizer, encoded, cfg, lambda n: None)
    from tuneforge.console import progress_bar

    with progress_bar(progress, len(encoded), unit="prompts", transient=True) as advance:
        return _generate_batches(model, tokenizer, encoded, cfg, advance or (lambda n: None))


def _generate_batches(model: Any, tokenizer: Any, encoded: list[list[int]], cfg: GenerationConfig,
                      advance) -> list[str]:
    import torch

    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise TuneforgeError(f"prompt {empty[0]} is empty after tokenization; generation needs at least one "
                             "prompt token (remove empty prompts or give the model a BOS token)")
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    pad_id = _pad_id(tokenizer)
    device = _device(model)
    kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams,
                                  do_sample=cfg.do_sample, pad_token_id=pad_id)
    if cfg.do_sample:
        # Passed even at their "off" values: otherwise the model's generation_config (or
        # transformers' global top_k=50) would apply settings the recipe does not show.
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    outputs: dict[int, str] = {}
    window = None if encoder_decoder else _position_slots(model)
    if window is not None and max(len(ids) for ids in encoded) + cfg.max_new_tokens > window:
        # More tokens than the model has positions (a small model pretrained on short blocks): slide a
        # window over the text, as nanoGPT's sampler does, one prompt at a time.
        with _eval_mode(model), seeded(model, cfg.seed if cfg.do_sample else None), torch.inference_mode():
            for i, ids in enumerate(encoded):
                new = _windowed(model, ids, window, cfg, kwargs, tokenizer, device)
                text = tokenizer.decode(new, skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, cfg.stop).strip()
                advance(1)
        return [outputs[i] for i in range(len(encoded))]
    with _eval_mode(model), seeded(model, cfg.seed if cfg.do_sample else None), torch.inference_mode():
        for indices in _batches(encoded, cfg.batch_size, unpadded=not encoder_decoder and _ignores_positions(model)):
            batch = [encoded[i] for i in indices]
            # Decoder-only models continue from the last position, so pads go on the left;
            # an encoder reads the whole input, so they go on the right as in training.
            input_ids, mask = pad_ids(batch, pad_id, left=not encoder_decoder, device=device)
            # New tokens start after the prompt (decoder-only) or after the decoder start token.
            offset = 1 if encoder_decoder else input_ids.shape[1]
            stopping = _stop_criteria(tokenizer, cfg.stop, offset) if cfg.stop else None
            ids = model.generate(input_ids=input_ids, attention_mask=mask, stopping_criteria=stopping, **kwargs)
            texts = tokenizer.batch_decode(ids[:, offset:], skip_special_tokens=True)
            outputs.update((i, cut_at_stop(t, cfg.stop).strip()) for i, t in zip(indices, texts))
            advance(len(indices))
    return [outputs[i] for i in range(len(encoded))]


def _position_slots(model: Any) -> int | None:
    """How many positions a decoder-only model can attend over: learned position tables have a hard limit
    (GPT-2's n_positions); rotary models report max_position_embeddings, which they may exceed, so only
    learned-position families count."""
    config = model.config
    if getattr(config, "model_type", "") in ("gpt2", "gpt_neo", "gptj", "opt", "bloom") or hasattr(config, "n_positions"):
        slots = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        return int(slots) if slots else None
    return None


def _windowed(model: Any, ids: list[int], window: int, cfg: GenerationConfig, kwargs: dict, tokenizer: Any,
              device: Any) -> list[int]:
    """Generate ``cfg.max_new_tokens`` after ``ids`` one token at a time, conditioning on the last ``window - 1``
    tokens (a plain forward per token, no cache: the window moves, so cached positions would be wrong);
    greedy or sampled with the config's temperature, top-k and top-p. Ends early at the model's
    end-of-sequence token or a stop string."""
    import torch

    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    text = list(ids)
    for _ in range(cfg.max_new_tokens):
        context = torch.tensor([text[-(window - 1):]], device=device)
        logits = model(input_ids=context).logits[0, -1].float()
        token = sample_token(logits, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p) \
            if cfg.do_sample else int(logits.argmax())
        if token in eos_ids:
            break
        text.append(token)
        if cfg.stop and any(s in tokenizer.decode(text[len(ids):], skip_special_tokens=True) for s in cfg.stop):
            break
    return text[len(ids):]


#: Below this a temperature is greedy in effect, and logits / temperature could overflow to inf (NaN
#: probabilities); sampling clamps to it.
MIN_TEMPERATURE = 1e-4


def sample_token(logits: Any, *, temperature: float, top_k: int = 0, top_p: float = 1.0, generator: Any = None) -> int:
    """Sample one token id from a ``[vocab]`` row: temperature, then top-k, then top-p (nucleus), as
    transformers orders them; ``generator`` (a ``torch.Generator``) or the global RNG. The most likely
    token always stays in, so a tiny top_p cannot leave nothing to sample."""
    import torch

    logits = logits.float() / max(temperature, MIN_TEMPERATURE)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set reaching top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


def _batches(encoded: list[list[int]], batch_size: int, *, unpadded: bool) -> list[list[int]]:
    """Prompt indices per generate() call: consecutive chunks, or (``unpadded``) chunks of equal length."""
    if not unpadded:
        return [list(range(s, min(s + batch_size, len(encoded)))) for s in range(0, len(encoded), batch_size)]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    return [same[s:s + batch_size] for _, same in sorted(by_length.items()) for s in range(0, len(same), batch_size)]


def _ignores_positions(model: Any) -> bool:
    # peft's prompt tuning and p-tuning drop position_ids, so left padding would shift the prompt's
    # positions relative to the virtual tokens and change the output; such models get batches of
    # equal-length prompts (no padding) instead. Prefix tuning offsets position_ids and pads fine.
    peft_config = getattr(model, "active_peft_config", None)
    if not getattr(peft_config, "is_prompt_learning", False):
        return False
    peft_type = getattr(peft_config, "peft_type", "")
    return str(getattr(peft_type, "value", peft_type)) not in {"PREFIX_TUNING", "CARTRIDGE"}


def _pad_id(tokenizer: Any) -> int:
    # Pad positions are masked out, so any id works; eos is what decoder-only models (Llama, GPT-2)
    # use, and taking it here avoids setting tokenizer.pad_token on the caller's tokenizer.
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise TuneforgeError(f"the tokenizer ({type(tokenizer).__name__}) has neither a pad nor an eos token, so "
                         "prompts of different lengths cannot be batched; set tokenizer.pad_token")


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def pad_ids(batch: list[list[int]], pad_id: int, *, left: bool, device: Any) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of token-id lists padded to the longest: on the left for a
    decoder-only model (it continues from the last position), on the right for an encoder."""
    import torch

    width = max(len(ids) for ids in batch)
    rows, masks = [], []
    for ids in batch:
        pads = [pad_id] * (width - len(ids))
        ones, zeros = [1] * len(ids), [0] * len(pads)
        rows.append(pads + list(ids) if left else list(ids) + pads)
        masks.append(zeros + ones if left else ones + zeros)
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device)


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    # Restored module by module, not with model.train(was_training): a training model may hold
    # submodules that are deliberately in eval mode (frozen, or BatchNorm kept fixed).
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def seeded(model: Any, seed: int | None) -> Iterator[None]:
    """Seed torch inside a forked RNG (CPU and the model's GPUs); nothing happens for ``seed=None``."""
    if seed is None:
        yield
        return
    import torch

    gpus = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=gpus):
        # Seed only the generators fork_rng restores: torch.manual_seed would also reseed GPUs
        # the model does not use and leave them changed for the caller.
        torch.random.default_generator.manual_seed(seed)
        for index in gpus:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _stop_criteria(tokenizer: Any, stop: Sequence[str], offset: int) -> Any:
    """A stopping criterion that ends each sequence once its new text contains a stop string.

    Only saves work: the output is cut at the stop string afterwards in any case. It decodes the
    same way as the final output, so it works for any tokenizer, unlike matching token strings.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            texts = tokenizer.batch_decode(input_ids[:, offset:], skip_special_tokens=True)
            hit = [any(s in t for s in stop) for t in texts]
            return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopStrings()])


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` since transformers 5.25 (which
    accepts ``past_key_values`` with a warning until 5.40), ``past_key_values`` before. A PEFT
    prompt-learning model keeps ``past_key_values``: PEFT reads that name to decide whether to add its
    virtual tokens, so a cache passed under the new name would get the prefix again at every step."""
    import inspect

    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return "past_key_values"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, under either name (see ``cache_argument``)."""
    return out["cache"] if "cache" in out else out.get("past_key_values")
