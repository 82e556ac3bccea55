"""Model FLOPs per trained token, and the achieved TFLOP/s and MFU that training reports.

Convention (PaLM appendix B, nanoGPT ``estimate_mfu``): a matmul with a weight of N parameters costs
2N FLOPs per token forward and 4N backward (2N for the gradient of its input, 2N for the gradient of
its weight), so a fully trained model costs ``6 N`` per token; attention adds ``12 * n_layer * hidden
* seq_len`` per token (QK^T and AV: 4 * hidden * seq_len per layer forward, times 3 for forward +
backward; the causal mask is not subtracted, as in PaLM and nanoGPT). These are *model* FLOPs: what
the maths needs, not what the hardware runs (padding, activation recomputation and the softmax are
not counted).

What N is:

- every parameter that multiplies activations: input embedding tables (``nn.Embedding``: word,
  position, token-type) are lookups and are left out; an output projection tied to the input
  embedding (a causal LM's ``lm_head``) is a matmul and is counted, as in nanoGPT;
- where tuneforge trains only part of the model (LoRA and the other PEFT methods, ``freeze``,
  ``head_only``) the weight gradient exists only for trainable parameters, so we count
  ``6 N_trainable + 4 N_frozen`` (frozen: forward 2N + input gradient 2N), and ``2 N`` for frozen
  parameters that no gradient has to pass through because nothing before them trains (the body under
  ``head_only``, the first layers under ``freeze: {first_n_layers: k}``). "Before" is the order in
  which the model registers its parameters (embeddings, layers, head), which is the data flow for
  ``transformers`` models, to within the first trained layer (LoRA: the frozen projections of that
  layer registered after its first adapter count 4N, though autograd skips their input gradient);
  PEFT prompt/prefix tuning feeds every layer, so there every frozen parameter needs its input
  gradient. nanoGPT and PaLM count 6N for all parameters; with all
  parameters trainable (``method: full``) the two conventions agree.
- the soft prompt/prefix of PEFT prompt learning (``prompt_encoder``) works on virtual tokens, not on
  each real token, and is left out; so are the virtual positions themselves.

Attention counts the backward part only for the share of the stack's parameters that a gradient
passes through (all of it unless layers are frozen with nothing trainable below them). Encoder-decoder
models: encoder parameters and encoder self-attention per source token, decoder parameters (and the
LM head) and decoder self- plus cross-attention per target token (the cross-attention key/value
projections are counted per target token too; they really run per source token).

The sequence length: FLOPs per token are averaged exactly over the training split, i.e. the sum over
examples of each example's FLOPs (attention grows with its own length) divided by the tokens the
model processes (``tokens_per_example``: input tokens, plus target tokens for seq2seq). That makes
``tokens/s * flops_per_token`` the achieved model FLOP/s over an epoch; for packed sequences the
packed length is used, as if documents attended to each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopParams:
    """Matmul parameters of one stack, by how much of a backward pass they take part in."""

    trainable: int = 0  # forward + input gradient + weight gradient: 6 FLOPs per token each
    frozen: int = 0  # forward + input gradient (something before them trains): 4
    forward_only: int = 0  # nothing before them trains: 2

    @property
    def total(self) -> int:
        return self.trainable + self.frozen + self.forward_only

    @property
    def flops_per_token(self) -> int:
        return 6 * self.trainable + 4 * self.frozen + 2 * self.forward_only

    @property
    def backward_share(self) -> float:
        """Fraction of the stack a gradient passes through (1.0 for an empty stack)."""
        return (self.trainable + self.frozen) / self.total if self.total else 1.0


def stack_shapes(config) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """``((n_layer, hidden), decoder)`` from a transformers config: the encoder (or only) stack, and the
    decoder's shape for encoder-decoder models (``None`` otherwise)."""
    if getattr(config, "is_encoder_decoder", False):
        enc_cfg, dec_cfg = getattr(config, "encoder", None), getattr(config, "decoder", None)
        if hasattr(enc_cfg, "to_dict") and hasattr(dec_cfg, "to_dict"):  # EncoderDecoderConfig (bert2bert)
            return _shape(enc_cfg), _shape(dec_cfg)
        enc = _shape(config)  # T5/BART: num_hidden_layers/hidden_size map to the encoder's
        dec_layers = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None)
        return enc, (dec_layers or enc[0], enc[1])
    return _shape(config), None


def _shape(config) -> tuple[int, int]:
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    if layers is None or hidden is None:
        raise ValueError(f"{type(config).__name__}: cannot read the number of layers and the hidden size "
                         "(num_hidden_layers/n_layer, hidden_size/n_embd)")
    return int(layers), int(hidden)


def _first(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def attention_flops_per_token(n_layer: int, hidden: int, context: float, backward_share: float = 1.0) -> float:
    """QK^T and AV for one query token over ``context`` keys: 4 * n_layer * hidden * context forward,
    twice that again backward where a gradient passes (12 * n_layer * hidden * context in full training)."""
    return 4.0 * n_layer * hidden * context * (1.0 + 2.0 * backward_share)


def example_flops(config, params: FlopParams, decoder_params: FlopParams | None, source_len, target_len=0):
    """Training FLOPs (forward + backward) of one example of ``source_len`` input tokens (and, for
    encoder-decoder models, ``target_len`` target tokens); works elementwise on numpy arrays."""
    (n_layer, hidden), dec = stack_shapes(config)
    s = source_len
    flops = s * (params.flops_per_token + attention_flops_per_token(n_layer, hidden, s, params.backward_share))
    if dec is not None:
        d = decoder_params or FlopParams()
        t = target_len
        dec_layers, dec_hidden = dec
        flops = flops + t * (d.flops_per_token
                             + attention_flops_per_token(dec_layers, dec_hidden, t + s, d.backward_share))
    return flops


def count_flop_params(model) -> tuple[FlopParams, FlopParams | None]:
    """Matmul parameters of ``model`` (plain, PEFT-wrapped or DDP-wrapped), as ``(encoder or whole
    model, decoder of an encoder-decoder or None)``; see the module docstring for what counts."""
    import torch

    base = getattr(model, "module", model)  # DDP
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # PEFT
    config = base.config
    lookups = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    encoder_ids = set()
    if getattr(config, "is_encoder_decoder", False):
        encoder_ids = {id(p) for p in base.get_encoder().parameters()}
    named = list(model.named_parameters())  # unique tensors, in registration order
    prompt_learning = any("prompt_encoder" in n and p.requires_grad for n, p in named)
    counts = {"enc": [0, 0, 0], "dec": [0, 0, 0]}  # trainable, frozen, forward-only
    upstream_trains = prompt_learning

    def add(p, where):
        kind = 0 if p.requires_grad else (1 if upstream_trains else 2)
        counts[where][kind] += p.numel()

    for name, p in named:
        # PEFT keeps the replaced head as ``original_module`` beside the trained copy; only one runs
        if id(p) not in lookups and "prompt_encoder" not in name and "original_module" not in name:
            add(p, "dec" if encoder_ids and id(p) not in encoder_ids else "enc")
        upstream_trains = upstream_trains or p.requires_grad
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if weight is not None and id(weight) in lookups:  # tied to the input embedding: still a matmul
        add(weight, "dec" if encoder_ids else "enc")
    enc = FlopParams(*counts["enc"])
    return enc, (FlopParams(*counts["dec"]) if encoder_ids else None)


def tokens_per_example(encoded) -> list[int]:
    """Real (non-pad) tokens the model processes per example: input tokens, plus the decoder's target
    tokens for seq2seq (``label_kind == "target"``)."""
    if encoded.label_kind == "target":
        return [len(ids) + len(t) for ids, t in zip(encoded.input_ids, encoded.labels)]
    return encoded.lengths


def model_flops_per_token(model, encoded) -> float:
    """Training FLOPs per processed token, averaged exactly over the examples of ``encoded``."""
    import numpy as np

    params, decoder = count_flop_params(model)
    base = getattr(model, "module", model)
    config = (base.get_base_model() if hasattr(base, "get_base_model") else base).config
    source = np.asarray(encoded.lengths, dtype=np.float64)
    target = (np.asarray([len(t) for t in encoded.labels], dtype=np.float64) if encoded.label_kind == "target"
              else np.zeros_like(source))
    tokens = float(source.sum() + (target.sum() if decoder is not None else 0.0))
    if tokens == 0:
        return 0.0
    return float(np.sum(example_flops(config, params, decoder, source, target))) / tokens


@dataclass(frozen=True)
class Efficiency:
    """What the loop needs to turn tokens/s into achieved TFLOP/s and MFU."""

    flops_per_token: float
    peak_flops: float | None  # all processes together; None when no peak is cached

    def rates(self, tokens_per_s: float) -> tuple[float, float | None]:
        """(achieved model TFLOP/s, MFU as a fraction of the peak or None)."""
        flops = tokens_per_s * self.flops_per_token
        return flops / 1e12, (flops / self.peak_flops if self.peak_flops else None)


def efficiency_for_run(model, encoded, device_type: str, precision: str, world_size: int) -> tuple[Efficiency, str]:
    """FLOPs per token of this run and the cached matmul peak for its precision (never measured here);
    the peak of a process is taken at its own thread count, times the number of processes. Returns the
    ``Efficiency`` and a one-time note for the user ("" when MFU can be shown)."""
    from tuneforge.train.peak import get_peak

    peak = get_peak(device_type, precision, measure_if_missing=False)
    note = "" if peak else f"run `tuneforge bench peak --dtype {precision}` to see MFU (model FLOPs utilisation)"
    return Efficiency(model_flops_per_token(model, encoded), peak * world_size if peak else None), note
