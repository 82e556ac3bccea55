"""Batched inference over tokenised examples, shared by training-time evaluation, `tuneforge evaluate`
and export verification, so all three compute predictions the same way.

The batch size may be ``"auto"`` (``train.eval_batch_size``'s default): sized from the free memory and
the model's dimensions at the longest example (``auto_eval_batch_size``), so that a large validation
set does not drive the machine into the OOM killer, which ends a process without a word. Whatever the
size, a batch that raises an out-of-memory error is retried in halves; when even one example does not
fit, the error says which settings to lower.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.batching import Encoded, collate, shard, sorted_batches
from tuneforge.errors import TuneforgeError

#: The largest batch ``auto`` picks (the old fixed default): bigger evaluation batches are barely faster.
MAX_AUTO_EVAL_BATCH = 64
#: Share of the free memory an ``auto`` batch plans to fill: the estimate is rough, and other
#: processes (and on a GPU the allocator's fragmentation) need the rest.
AUTO_MEMORY_SHARE = 0.5


@dataclass
class Predictions:
    #: per example, input order, fp32: logits [C] per example, or [tokens, C] trimmed to its length; for
    #: vocabulary-wide kinds (causal, target, mlm) [tokens, 2] = (top logit, its token id)
    outputs: list
    loss: float  # summed loss / summed example weights (mean per example, or per trained token)

    @property
    def logits(self):
        """``[n, C]`` for example-level tasks (one logits vector per example)."""
        import torch

        return torch.stack(self.outputs) if self.outputs else torch.empty(0)

    @property
    def labels(self) -> list[int]:
        return self.logits.argmax(dim=-1).tolist()


def predict(model, encoded: Encoded, *, batch_size: int | str, pad_id: int, device=None, precision: str = "fp32",
            rank: int = 0, world_size: int = 1, gather=None) -> Predictions:
    """Outputs for every example, in input order.

    Batches are sorted by length (less padding); under several processes each takes a strided share
    of every batch and ``gather`` (e.g. ``accelerator.gather_object``) collects them. ``batch_size``:
    examples per (global) batch, or ``"auto"``.
    """
    import torch

    device = device or next(model.parameters()).device
    weights = encoded.weights
    # The global batches must be the same on every process (each takes its share of each): with
    # "auto" they have a fixed size, and each process runs its share in pieces its own memory allows.
    if batch_size == "auto":
        global_size = MAX_AUTO_EVAL_BATCH * world_size
        piece = auto_eval_batch_size(model, encoded, device)
    else:
        global_size = piece = int(batch_size)
    was_training = model.training
    model.eval()
    rows: list[tuple[int, torch.Tensor]] = []
    loss_sum = 0.0
    with torch.no_grad():
        for batch_idx in sorted_batches(encoded.lengths, global_size):
            mine = shard(batch_idx, rank, world_size)
            start = 0
            while start < len(mine):
                part = mine[start:start + piece]
                done = _predict_batch(model, encoded, part, pad_id, device, precision)
                if done is None:  # out of memory: smaller pieces from here on (batches only get shorter)
                    piece = _halved(piece, encoded, part)
                    continue
                loss_sum += done[0]
                rows.extend(zip(part, done[1]))
                start += len(part)
    if was_training:
        model.train()
    if gather is not None and world_size > 1:
        rows, loss_sum = _gather(rows, loss_sum, gather)
    rows.sort(key=lambda r: r[0])
    return Predictions(outputs=[r[1] for r in rows], loss=loss_sum / max(sum(weights), 1))


def _predict_batch(model, encoded: Encoded, indices: list[int], pad_id: int, device, precision: str):
    """``(summed loss, per-example outputs)`` of one batch, or None when it ran out of memory."""
    from tuneforge.tasks.losses import forward_loss_sum
    from tuneforge.models.precision import autocast

    try:
        batch = {k: v.to(device) for k, v in collate(encoded, indices, pad_id).items()}
        with autocast(precision, device.type):
            loss, out = forward_loss_sum(model, batch, encoded.label_kind, keep_top=True,
                                         objective=encoded.objective)
        return float(loss), per_example(out, encoded, indices)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
    # Outside the except block: the traceback (and the tensors its frames hold) is gone by now.
    _release_memory(device)
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, Python's ``MemoryError``, or the CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate ...")."""
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in message
                                              or ("allocat" in message and "memory" in message))


def _release_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _halved(piece: int, encoded: Encoded, part: list[int]) -> int:
    longest = max(len(encoded.input_ids[i]) for i in part)
    size = min(piece, len(part))
    if size <= 1:
        raise TuneforgeError(
            f"evaluation ran out of memory even at train.eval_batch_size 1 (the longest example has {longest} "
            "tokens): lower model.max_length, or evaluate on a machine with more memory")
    smaller = size // 2
    print(f"evaluation: a batch of {size} examples (up to {longest} tokens) ran out of memory; continuing with "
          f"{smaller} per batch (a smaller train.eval_batch_size skips this retry)", file=sys.stderr, flush=True)
    return smaller


# --------------------------------------------------------------------------- sizing "auto" batches


def resolve_eval_batch_size(setting: int | str, model, encoded: Encoded, device=None) -> int:
    """``train.eval_batch_size`` as a number, for code that needs one (e.g. the ONNX parity batches)."""
    return auto_eval_batch_size(model, encoded, device) if setting == "auto" else int(setting)


def auto_eval_batch_size(model, encoded: Encoded, device=None) -> int:
    """Examples per evaluation batch from the free memory and a per-example estimate, in [1, 64]."""
    device = device or next(model.parameters()).device
    per_example, fixed = eval_memory_estimate(model, encoded)
    budget = AUTO_MEMORY_SHARE * available_memory(device) - fixed
    return max(1, min(MAX_AUTO_EVAL_BATCH, int(budget // max(per_example, 1))))


def available_memory(device) -> int:
    """Free bytes for ``device``: the GPU's free memory, or the RAM this process can still get
    (MemAvailable, and the container's cgroup limit where one is set)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    from tuneforge.sysinfo import memory_bytes

    _, available = memory_bytes()
    free = [available] if available else []
    room = _cgroup_room()
    if room is not None:
        free.append(room)
    return min(free) if free else 4 * 2**30  # nothing readable: assume a small machine


def _cgroup_room() -> int | None:
    """limit - usage of this process's memory cgroup (v2, then v1); None where no limit is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" / a near-2**63 value: no limit
            return max(int(limit) - usage, 0)
    return None


def eval_memory_estimate(model, encoded: Encoded) -> tuple[int, int]:
    """``(bytes per example, bytes per batch)`` of one forward without gradients at the longest example.

    Per token, counted in fp32: layers x hidden (states a model may keep per layer, e.g. a key/value
    cache), a few hidden-wide temporaries, the feed-forward intermediate, and the attention scores of
    one layer (heads x length). Vocabulary-wide kinds add the chunked logits once per batch, or the
    full logits per token where the model needs them (``tuneforge.tasks.losses.static_split``)."""
    from tuneforge.tasks.losses import VOCAB_KINDS, loss_chunk_rows, static_split, unwrap

    dims = model_dims(model)
    length = max(encoded.lengths, default=1)
    if encoded.label_kind == "target":  # encoder and decoder: count both sequences
        length += max((len(t) for t in encoded.labels), default=0)
    per_token = 4 * (dims["layers"] * dims["hidden"] + 8 * dims["hidden"] + 3 * dims["intermediate"]
                     + 2 * dims["heads"] * length)
    fixed = 0
    if encoded.label_kind in VOCAB_KINDS:
        if static_split(unwrap(model)) is None:
            per_token += 3 * 4 * dims["vocab"]  # logits, a row's fp32 copy, the loss chunk's
        else:
            fixed = 3 * 4 * loss_chunk_rows(dims["vocab"]) * dims["vocab"]
    return per_token * length, fixed


#: Config keys of each dimension across model families (BERT/Llama, GPT-2, T5, BART, DistilBERT).
_DIM_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads", "n_heads"),
    "intermediate": ("intermediate_size", "n_inner", "d_ff", "encoder_ffn_dim", "hidden_dim"),
    "vocab": ("vocab_size",),
}
_DIM_DEFAULTS = {"layers": 24, "hidden": 1024, "heads": 16, "vocab": 50_000}


def model_dims(model) -> dict[str, int]:
    """The model's largest layers/hidden/heads/intermediate/vocab over its config and sub-configs
    (encoder, decoder, text); defaults of a 350M-parameter model where a value is missing."""
    config = getattr(model, "config", None)
    configs = [c for c in (config, getattr(config, "encoder", None), getattr(config, "decoder", None),
                           getattr(config, "text_config", None)) if c is not None]
    dims = {}
    for name, keys in _DIM_KEYS.items():
        values = [getattr(c, key) for c in configs for key in keys if isinstance(getattr(c, key, None), int)]
        dims[name] = max(values) if values else _DIM_DEFAULTS.get(name, 0)
    dims["intermediate"] = dims["intermediate"] or 4 * dims["hidden"]  # GPT-2's n_inner: None = 4 x hidden
    return dims


# --------------------------------------------------------------------------- per-example outputs


def per_example(out, encoded: Encoded, indices: list[int]) -> list:
    """Split a batch's outputs into per-example fp32 CPU tensors, padding removed."""
    import torch

    if encoded.objective is not None:  # preference kinds: the objective's numbers per example
        return list(out.per_example.float().cpu())
    if encoded.label_kind == "span":
        both = torch.stack([out.start_logits.float(), out.end_logits.float()], dim=-1).cpu()  # [n, len, 2]
        return [both[k, : len(encoded.input_ids[i])] for k, i in enumerate(indices)]
    if encoded.label_kind in ("causal", "target", "mlm"):
        # A vocabulary-wide row per token for a whole validation set is gigabytes; keep what evaluation
        # and export verification use: the top logit and its token id, as [len, 2].
        both = _top_per_position(out)
        if encoded.label_kind in ("causal", "mlm"):
            width = max(len(encoded.input_ids[i]) for i in indices)
            both = both[:, -width:]
            return [both[k, : len(encoded.input_ids[i])] for k, i in enumerate(indices)]
        return [both[k, : len(encoded.labels[i])] for k, i in enumerate(indices)]
    logits = out.logits.float().cpu()
    if encoded.label_kind == "tokens":
        width = max(len(encoded.input_ids[i]) for i in indices)
        logits = logits[:, -width:]  # prompt/prefix methods prepend virtual positions
        return [logits[k, : len(encoded.input_ids[i])] for k, i in enumerate(indices)]
    return list(logits)


def _top_per_position(out):
    """``[n, len, 2]`` fp32 CPU (top logit, token id): computed per chunk by ``forward_loss_sum``, or
    here from full logits one example at a time (an fp32 copy of one [len, vocab] row, not the batch)."""
    import torch

    top = getattr(out, "top", None)
    if top is not None:
        return top.cpu()
    rows = []
    for logits in out.logits:
        best = logits.float().max(dim=-1)
        rows.append(torch.stack([best.values, best.indices.float()], dim=-1))
    return torch.stack(rows).cpu()


def _gather(rows, loss_sum, gather):
    parts = gather([(rows, loss_sum)])
    all_rows = [r for part_rows, _ in parts for r in part_rows]
    return all_rows, sum(ls for _, ls in parts)
