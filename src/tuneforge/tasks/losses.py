"""Summed losses for every label kind, computed by us from the model's outputs.

Why not use the loss the model returns? Transformers models return a *mean* over their own batch;
exact gradient accumulation (see ``tuneforge.train.steps``) needs the *sum*, divided once by the whole step's
count of examples or trained tokens (``Encoded.weights``). Every loss is computed in fp32: autocast
logits may be bf16, and a softmax over a 50k vocabulary in bf16 loses the small probabilities.

Vocabulary-wide kinds (``causal``, ``mlm``, ``target``) never build the ``[batch, length, vocab]``
logits: a causal LM at 8 x 384 tokens and a 49k vocabulary would need 600 MB for the fp32 copy
alone, plus the logits, their log-softmax and gradients, although the prompt, the padding and (masked
LM) 85% of the positions carry no label. Instead the model runs with its output layer passed through,
so its ``logits`` are the hidden states the output layer would read; the rows that have a label are
gathered and projected to the vocabulary a chunk at a time (``loss_chunk_rows``), each chunk upcast
to fp32, reduced to its summed cross-entropy and checkpointed (its logits are recomputed in the
backward pass instead of kept). Everything before the output layer (BERT's transform, T5's rescaling) runs inside
the model's own forward, so this is exact; ``final_logits_bias`` (BART, Marian) is added per chunk.

Whether a model fits is checked once per model object, on a 1 x 16-token probe: the pass-through
hidden states, projected here, must reproduce the model's own logits. Where they do not (an output
layer applied some other way, a transformation after it such as Gemma 2's soft-capping), or where the
model cannot be split at all (no output layer, PEFT prompt-learning methods that prepend virtual
tokens), the model computes its full logits as before and only the fp32 loss is chunked.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass

from tuneforge.data.batching import IGNORE

#: Logits per chunk (rows x vocabulary): 16M = 64 MB per fp32 copy, of which a chunk holds a few at once
#: (logits, fp32 copy, log-softmax, gradient), whatever the batch size and length: 341 rows at
#: SmolLM2's 49k vocabulary, 524 at 32k. Measured on a CPU, 341 rows were as fast as 1024 with 300 MB
#: less peak memory.
LOSS_CHUNK_LOGITS = 2**24
#: ... but never fewer rows than this: each chunk reads the whole output matrix, and a matmul of a
#: few dozen rows against a 256k vocabulary would be bound by that read on a GPU.
MIN_CHUNK_ROWS = 256
#: Label kinds whose logits span the vocabulary: the ones computed in chunks.
VOCAB_KINDS = ("causal", "mlm", "target")
#: Tokens of the one-off probe that checks a model's output layer can be applied outside its forward.
PROBE_TOKENS = 16
#: Config keys of a logit transformation after the output layer that the probe could miss when the
#: random probe's logits are small (tanh is nearly the identity there): these models always fall back.
SOFTCAP_KEYS = ("final_logit_softcapping", "logits_soft_cap", "logit_softcapping")

# model object -> whether the probe reproduced its logits (weak: a model freed later leaves no entry)
_PROBED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass
class VocabOutput:
    """What ``forward_loss_sum`` returns for vocabulary-wide kinds when the logits were never built.

    ``top``: with ``keep_top``, ``[batch, length, 2]`` fp32 = (top logit, its token id) at every real
    position (``attention_mask``; every decoder position for ``target``), zeros elsewhere."""

    top: object = None


def forward_loss_sum(model, batch: dict, kind: str, *, keep_top: bool = False, chunk_rows: int | None = None,
                     objective=None):
    """Run ``model`` on ``batch`` (as built by ``collate``) and return ``(summed loss, outputs)``.

    ``outputs`` is the model's output, or a ``VocabOutput`` for vocabulary-wide kinds on the chunked
    path; ``keep_top`` (evaluation) asks for the top logit per position there. ``chunk_rows``: rows
    projected at once (None: ``loss_chunk_rows`` of the model's vocabulary size). ``objective``
    (``Encoded.objective``): preference kinds hand the whole step to it (``objective.loss_sum``)."""
    import torch.nn.functional as F

    if objective is not None:
        return objective.loss_sum(model, batch)
    inputs = dict(batch)
    labels = inputs.pop("labels", None)
    if kind == "span":
        start, end = inputs.pop("start_positions"), inputs.pop("end_positions")
        out = model(**inputs)
        loss = (F.cross_entropy(out.start_logits.float(), start, reduction="sum")
                + F.cross_entropy(out.end_logits.float(), end, reduction="sum")) / 2
        return loss, out
    if kind in VOCAB_KINDS:
        return _vocab_loss_sum(model, inputs, labels, kind, keep_top, chunk_rows)
    out = model(**inputs)
    logits = out.logits.float()
    if kind == "class":
        return F.cross_entropy(logits, labels, reduction="sum"), out
    if kind == "value":
        return F.mse_loss(logits.squeeze(-1), labels, reduction="sum"), out
    if kind == "multi":
        # mean over labels per example, summed over examples: one example weighs 1 like in "class"
        per_label = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return per_label.mean(dim=-1).sum(), out
    if kind == "tokens":
        logits = logits[:, -labels.size(1):]  # prompt/prefix methods prepend virtual positions
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum"), out
    raise ValueError(f"unknown label kind {kind!r}")


def token_logps(model, input_ids, attention_mask, labels, *, chunk_rows: int | None = None):
    """``[N, T]`` fp32 log-probability of each label token under a causal LM (0 where the label is -100):
    position t's label is predicted from the tokens before it, like the causal-LM loss.

    Computed like that loss (``chunked_cross_entropy``): the model runs with its output layer passed
    through and only the labelled rows are projected to the vocabulary, a chunk at a time, each chunk
    checkpointed. Preference losses need this per sequence for 2 x batch sequences: full logits of a
    1B model with a 128k vocabulary at 2 x 8 x 1024 tokens would be 8 GB in fp32."""
    import torch

    core = unwrap(model)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **no_cache(core)}
    targets = next_targets(labels, "causal")
    rows = targets != IGNORE
    split = _verified_split(core, inputs)
    if split is None:
        hidden, project = model(**inputs).logits, (lambda x: x)
    else:
        with split.hidden_instead_of_logits():
            hidden = model(**inputs).logits
        project = split.project
    hidden = hidden[:, -targets.size(1):]  # prompt-learning methods prepend virtual positions
    chunk_rows = chunk_rows or loss_chunk_rows(vocab_size(core))
    picked = per_row_logps(project, hidden[rows], targets[rows], chunk_rows=chunk_rows)
    out = torch.zeros(targets.shape, dtype=torch.float32, device=picked.device)
    out[rows] = picked
    return out


def sequence_logps(model, input_ids, attention_mask, labels, *, chunk_rows: int | None = None):
    """``(sum of label-token log-probs [N], label-token count [N])`` per sequence (see ``token_logps``)."""
    logps = token_logps(model, input_ids, attention_mask, labels, chunk_rows=chunk_rows)
    counts = (next_targets(labels, "causal") != IGNORE).sum(dim=-1)
    return logps.sum(dim=-1), counts


def reply_stats(model, reference, input_ids, attention_mask, labels, *, chunk_rows: int | None = None):
    """Evaluation of a policy against its reference in one pass of each, no gradients: per sequence
    ``(policy log-prob sum, reference log-prob sum, label count, mean token-level KL)``, each ``[N]``.

    ``reference()`` is a context in which the model *is* the reference (PEFT's ``disable_adapter``). The KL
    is the full-vocabulary KL(policy(. | prefix) || reference(. | prefix)) at every label position, exact
    (unlike the log-ratio of the data's own tokens); both models' logits exist one chunk of rows at a time."""
    import torch

    core = unwrap(model)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **no_cache(core)}
    targets = next_targets(labels, "causal")
    rows = targets != IGNORE
    split = _verified_split(core, inputs)

    def hidden():
        if split is None:
            return core(**inputs).logits
        with split.hidden_instead_of_logits():
            return core(**inputs).logits

    project = split.project if split is not None else (lambda x: x)
    with torch.no_grad():
        policy = hidden()[:, -targets.size(1):][rows]
        with reference():
            ref = hidden()[:, -targets.size(1):][rows]
        wanted = targets[rows]
        chunk_rows = chunk_rows or loss_chunk_rows(vocab_size(core))
        out = {"policy": [], "ref": [], "kl": []}
        for start in range(0, len(policy), chunk_rows):
            t = wanted[start:start + chunk_rows, None]
            lp = torch.log_softmax(project(policy[start:start + chunk_rows]).float(), dim=-1)
            with reference():  # an adapted output layer is the reference's only inside the context
                lr = torch.log_softmax(project(ref[start:start + chunk_rows]).float(), dim=-1)
            out["policy"].append(lp.gather(-1, t)[:, 0])
            out["ref"].append(lr.gather(-1, t)[:, 0])
            out["kl"].append((lp.exp() * (lp - lr)).sum(dim=-1))
        counts = rows.sum(dim=-1)
        sums = []
        for key in ("policy", "ref", "kl"):
            per_row = torch.cat(out[key]) if out[key] else policy.new_zeros(0, dtype=torch.float32)
            full = torch.zeros(targets.shape, dtype=torch.float32, device=per_row.device)
            full[rows] = per_row
            sums.append(full.sum(dim=-1))
        return sums[0], sums[1], counts, sums[2] / counts.clamp(min=1)


def per_row_logps(project, hidden, targets, *, chunk_rows: int):
    """``[rows]`` fp32 log-probability of each row's target under ``project(hidden)``, a chunk at a time;
    with gradients on each chunk is checkpointed (its logits recomputed in the backward pass)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    parts = []
    for start in range(0, max(len(targets), 1), chunk_rows):
        h, t = hidden[start:start + chunk_rows], targets[start:start + chunk_rows]
        if torch.is_grad_enabled():
            parts.append(checkpoint(functools.partial(_chunk_logps, project), h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logps(project, h, t))
    return torch.cat(parts)


def _chunk_logps(project, h, t):
    import torch.nn.functional as F

    return -F.cross_entropy(project(h).float(), t, reduction="none")


def loss_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: ``LOSS_CHUNK_LOGITS`` logits, at least ``MIN_CHUNK_ROWS`` rows."""
    return max(MIN_CHUNK_ROWS, LOSS_CHUNK_LOGITS // max(vocab_size, 1))


def _vocab_loss_sum(model, inputs: dict, labels, kind: str, keep_top: bool, chunk_rows: int | None):
    core = unwrap(model)
    if kind == "target":
        # Decoder inputs are the labels shifted right (-100 -> pad), by the model's own rule. Passing
        # ``labels`` instead makes the model compute a mean loss we would ignore (and makes
        # EncoderDecoderModel warn on every step); models without the rule still get the labels.
        shift = getattr(core, "prepare_decoder_input_ids_from_labels", None)
        if shift is None:
            out = model(**inputs, labels=labels)
            return _loss_from_logits(out.logits, labels, kind, chunk_rows), out
        inputs = {**inputs, "decoder_input_ids": shift(labels=labels)}
    inputs = {**inputs, **no_cache(core)}
    split = _verified_split(core, inputs)
    if split is None:
        out = model(**inputs)
        return _loss_from_logits(out.logits, labels, kind, chunk_rows), out
    chunk_rows = chunk_rows or loss_chunk_rows(vocab_size(core))
    # Through ``model`` itself, not ``core``: a DDP wrapper must see the forward to sync gradients.
    with split.hidden_instead_of_logits():
        hidden = model(**inputs).logits
    targets = next_targets(labels, kind)
    hidden = hidden[:, -targets.size(1):]
    rows = targets != IGNORE
    if keep_top:
        rows = rows | _real_positions(inputs, kind, targets)
    loss, top = chunked_cross_entropy(split.project, hidden[rows], targets[rows], chunk_rows=chunk_rows,
                                      keep_top=keep_top)
    out = VocabOutput()
    if keep_top:
        out.top = top.new_zeros((*targets.shape, 2))
        out.top[rows] = top
    return loss, out


def next_targets(labels, kind: str):
    """``[batch, length]`` targets aligned with the model's positions: a causal LM's position t predicts
    token t+1 (the last position predicts nothing); masked LM and decoder positions predict their own."""
    import torch

    if kind != "causal":
        return labels
    return torch.cat([labels[:, 1:], labels.new_full((labels.size(0), 1), IGNORE)], dim=1)


def _real_positions(inputs: dict, kind: str, targets):
    """Positions whose top logit evaluation reports: every unpadded input token, every decoder position."""
    import torch

    mask = inputs.get("attention_mask")
    if kind == "target" or mask is None or mask.shape != targets.shape:
        return torch.ones_like(targets, dtype=torch.bool)
    return mask.bool()


def _loss_from_logits(logits, labels, kind: str, chunk_rows: int | None):
    """The fallback: the model built its full logits; the fp32 upcast still happens per chunk."""
    chunk_rows = chunk_rows or loss_chunk_rows(logits.size(-1))
    targets = next_targets(labels, kind)
    logits = logits[:, -targets.size(1):]  # prompt-learning methods prepend virtual positions
    flat = logits.reshape(-1, logits.size(-1))  # a view when contiguous: padding rows cost time, not memory
    loss, _ = chunked_cross_entropy(lambda x: x, flat, targets.reshape(-1), chunk_rows=chunk_rows)
    return loss


def chunked_cross_entropy(project, hidden, targets, *, chunk_rows: int, keep_top: bool = False):
    """Summed fp32 cross-entropy of ``project(hidden)`` against ``targets`` (-100 ignored), ``chunk_rows``
    rows at a time, and with ``keep_top`` the ``[rows, 2]`` (top logit, token id) per row.

    With gradients on, each chunk is checkpointed: its logits are freed after the forward and
    recomputed in the backward, so only one chunk's logits ever exist. At least one (maybe empty) chunk
    always runs, so the output layer is part of the graph even for a batch without labels (DDP expects
    every trained parameter to get a gradient)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    checkpointed = torch.is_grad_enabled() and not keep_top
    total, tops = None, []
    for start in range(0, max(len(targets), 1), chunk_rows):
        h, t = hidden[start:start + chunk_rows], targets[start:start + chunk_rows]
        if checkpointed:
            part = checkpoint(functools.partial(_chunk_loss, project), h, t, use_reentrant=False)
        else:
            logits = project(h).float()
            part = _summed_ce(logits, t)
            if keep_top:
                best = logits.max(dim=-1)
                tops.append(torch.stack([best.values, best.indices.float()], dim=-1))
        total = part if total is None else total + part
    return total, (torch.cat(tops) if keep_top else None)


def _chunk_loss(project, h, t):
    return _summed_ce(project(h).float(), t)


def _summed_ce(logits, targets):
    import torch.nn.functional as F

    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


# ----------------------------------------------------------------- splitting a model at its output layer


def unwrap(model):
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers (PEFT wrappers stay)."""
    while True:
        if _is_parallel_wrapper(model):
            model = model.module
        elif getattr(model, "_orig_mod", None) is not None:
            model = model._orig_mod
        else:
            return model


def _is_parallel_wrapper(model) -> bool:
    import torch

    return isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel))


@dataclass
class _Split:
    """A model cut at its output layer: run it with ``hidden_instead_of_logits``, then ``project``."""

    head: object  # the output layer module (a LoRA/modules_to_save wrapper when PEFT adapts it)
    bias_owner: object  # the module holding ``final_logits_bias``, or None

    @contextlib.contextmanager
    def hidden_instead_of_logits(self):
        """Within the block the output layer returns its input, and ``final_logits_bias`` adds nothing."""
        missing = object()
        own_forward = self.head.__dict__.get("forward", missing)  # accelerate hooks set one
        self.head.forward = _pass_through
        bias = getattr(self.bias_owner, "final_logits_bias", None) if self.bias_owner is not None else None
        if bias is not None:
            # a 0-d zero: broadcasts onto the hidden states without changing their dtype
            self.bias_owner.final_logits_bias = bias.new_zeros(())
        try:
            yield
        finally:
            if own_forward is missing:
                del self.head.forward
            else:
                self.head.forward = own_forward
            if bias is not None:
                self.bias_owner.final_logits_bias = bias

    def project(self, hidden):
        logits = self.head(hidden)
        bias = getattr(self.bias_owner, "final_logits_bias", None) if self.bias_owner is not None else None
        return logits if bias is None else logits + bias.to(logits.device)


def _pass_through(*args, **kwargs):
    return args[0] if args else next(iter(kwargs.values()))


def _verified_split(core, inputs: dict) -> _Split | None:
    """The model's split when it exists and the probe reproduced the model's logits (cached per model)."""
    split = static_split(core)
    if split is None:
        return None
    if core not in _PROBED:
        _PROBED[core] = _probe(core, split, inputs)
    return split if _PROBED[core] else None


def static_split(core) -> _Split | None:
    """The split as far as the model's structure tells, before the probe; None: full logits needed."""
    import torch

    if _prompt_learning(core):
        return None  # virtual tokens are prepended: the positions do not line up with the labels
    if _PROBED.get(core) is False:
        return None
    try:
        head = core.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(head, torch.nn.Module):
        return None
    if _softcapped(getattr(core, "config", None)):
        return None
    base = _transformers_model(core)
    owner = base if isinstance(getattr(base, "final_logits_bias", None), torch.Tensor) else None
    return _Split(head=head, bias_owner=owner)


def _transformers_model(core):
    return core.get_base_model() if hasattr(core, "get_base_model") else core  # PEFT -> transformers model


def _prompt_learning(core) -> bool:
    return bool(getattr(getattr(core, "active_peft_config", None), "is_prompt_learning", False))


def no_cache(core) -> dict:
    """``{"use_cache": False}`` where the model takes it (prompt-learning methods excepted: a prefix is
    handed over as a cache).

    Without it transformers (5.x) builds a key/value cache in every forward, training included,
    because ``config.use_cache`` is true: in evaluation it keeps every layer's keys and values alive,
    and its mere presence switches off the block-causal mask that packed sequences (position ids that
    restart per document, no attention mask) rely on, so packed documents would attend to each other.
    """
    import inspect

    if _prompt_learning(core):
        return {}
    try:
        takes = "use_cache" in inspect.signature(_transformers_model(core).forward).parameters
    except (TypeError, ValueError):
        takes = False
    return {"use_cache": False} if takes else {}


def vocab_size(model) -> int:
    """The model's vocabulary size from its config (the decoder's for encoder-decoders); 50k unknown."""
    config = getattr(model, "config", None)
    for c in (config, getattr(config, "decoder", None), getattr(config, "text_config", None)):
        if isinstance(getattr(c, "vocab_size", None), int):
            return c.vocab_size
    return 50_000


def _softcapped(config) -> bool:
    if config is None:
        return False
    configs = [config, getattr(config, "decoder", None), getattr(config, "text_config", None)]
    return any(getattr(c, key, None) for c in configs if c is not None for key in SOFTCAP_KEYS)


def _probe(core, split: _Split, inputs: dict) -> bool:
    """Whether ``split`` reproduces the model's own logits on the first example's first tokens, in fp32
    and eval mode (no dropout), without gradients. Any error means no."""
    import torch

    probe = _probe_inputs(inputs)
    device = next(core.parameters()).device
    modes = [(m, m.training) for m in core.modules()]
    core.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            full = core(**probe).logits
            with split.hidden_instead_of_logits():
                hidden = core(**probe).logits
            mine = split.project(hidden)
        if mine.shape != full.shape:
            return False
        # Accelerate's mixed precision wraps the forward in autocast (and returns fp32 outputs): the model's
        # own logits then come from a bf16/fp16 matmul while the projection here runs in fp32, so the
        # half-precision tolerance applies even though the dtype says fp32.
        half = full.dtype != torch.float32 or hasattr(core, "_original_forward")
        tolerance = (2e-2 if half else 1e-4) * (1 + float(full.abs().max()))
        return bool((mine.float() - full.float()).abs().max() <= tolerance)
    except Exception:  # noqa: BLE001 - whatever breaks the split, the full-logits path still works
        return False
    finally:
        for module, training in modes:
            module.training = training


def _probe_inputs(inputs: dict) -> dict:
    """The first example's first ``PROBE_TOKENS`` tokens: every dimension as long as a sequence (the
    input's, the decoder's) is cut, so a 4-d attention mask stays consistent with the ids."""
    import torch

    lengths = {inputs[k].size(1) for k in ("input_ids", "decoder_input_ids") if k in inputs}
    out = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            cut = [slice(0, PROBE_TOKENS) if size in lengths else slice(None) for size in value.shape[1:]]
            value = value[(slice(0, 1), *cut)]
        out[name] = value
    return out
