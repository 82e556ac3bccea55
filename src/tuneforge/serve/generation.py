"""The generation engine behind ``/v1/completions`` and ``/v1/chat/completions`` (no HTTP here).

Prompts are rendered and tokenized on the event loop (``tuneforge.serve.prompts``: ``render_chat``,
``encode_prompt``) and measured against the model's context (``token_budget``);
``GenerationEngine.submit`` then hands
them to the model thread and returns a ``Ticket`` whose queue receives the text as it is decoded.

Decoding is a manual loop over the model's KV cache, with **continuous batching**: the prompts of
concurrent requests are left-padded into one batch (attention mask, position ids counted from the
mask), every step runs one forward pass for all rows, and each row has its own sampling settings,
token budget, seed and stop strings. A request that arrives while others are decoding is prefilled
on its own and merged into the running batch at the next step (its cache left-padded to the batch's
length, or the batch's to its own); a finished or abandoned row leaves the batch at once. When the
server is idle, the first request waits ``max_wait_s`` for company before its prefill. Models whose
cache cannot be merged that way (sliding-window or linear-attention layers, KV sharing) get static
batches instead: new requests wait until the running batch has finished. peft prompt-learning
models (prefix or prompt tuning, p-tuning) add virtual tokens inside their forward pass, which a
manual cache loop cannot drive; they decode one request at a time through ``model.generate``.

The pitfalls ``tuneforge.models.generation`` lists apply here too: pads on the left, an attention
mask over them, the model in eval mode (the loader's job) under ``torch.inference_mode``, and
sampling that never touches the global RNG: each row samples from its own ``torch.Generator``,
seeded with the request's ``seed``, so a seeded request gives the same text whatever it is batched
with (barring float rounding ties).

Text is decoded incrementally as TGI and vLLM do it (a window of a few tokens is decoded twice and
the difference emitted), so a multi-byte character split over tokens is held back until complete
(no stray U+FFFD), and text that could be the start of a stop string is held back until it is known
not to be one. Streamed pieces and the non-streamed text are the same pieces, so both agree exactly.

Tokenizers without a chat template get a minimal ChatML fallback (``prompts.FALLBACK_CHAT_TEMPLATE``);
the server logs a warning once at startup, since the model may not have been trained on that format.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.models.generation import cache_argument, cut_at_stop, output_cache, pad_ids, sample_token
from tuneforge.serve.loader import ServedModel

log = logging.getLogger("tuneforge.serve")

_DETOKENIZE_CONTEXT = 5  # prompt tokens decoded with the first new token, so it keeps its leading space


@dataclass(frozen=True)
class Sampling:
    """One prompt's decoding settings; ``temperature == 0`` means greedy."""
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()


# ------------------------------------------------------------------------------- events and the ticket


@dataclass(frozen=True)
class Started:
    index: int  # the prompt's position in its request
    prompt_tokens: int


@dataclass(frozen=True)
class Text:
    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # "stop" (EOS or a stop string) or "length"
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: BaseException


CANCELLED = object()  # put on a ticket's queue by ``Ticket.cancel``: the reader stops waiting


class Ticket:
    """The event-loop side of one request: its rows, and the queue the model thread posts events to."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.rows: list[_Row] = []

    def cancel(self) -> None:
        """Stop decoding this request's rows (they leave the batch at the next step). Event loop only."""
        if any(not r.cancelled for r in self.rows):
            for r in self.rows:
                r.cancelled = True
            self.queue.put_nowait(CANCELLED)

    def post(self, event: Any) -> None:
        """Hand ``event`` to the request (model thread). A closed event loop means nobody listens any more."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:
            for r in self.rows:
                r.cancelled = True


# ------------------------------------------------------------------------------------------ decoding


class _Detokenizer:
    """Incremental decoding: each call decodes a short window twice, without and with the newest tokens,
    and returns the difference, or nothing while the tail is an incomplete character (U+FFFD)."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_DETOKENIZE_CONTEXT:])
        self.prefix, self.read = 0, len(self.ids)

    def add(self, token: int | None, *, final: bool = False) -> str:
        if token is not None:
            self.ids.append(token)
        if self.read == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


def _held_back(text: str, stops: Sequence[str], start: int) -> int:
    """How many characters at the end of ``text`` (after ``start``) could begin a stop string."""
    for k in range(min(max((len(s) for s in stops), default=1) - 1, len(text) - start), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0


class _Row:
    """One prompt being decoded (model thread), and the text it has handed to its request."""

    def __init__(self, ticket: Ticket, index: int, prompt: list[int], sampling: Sampling, tokenizer: Any,
                 device: Any):
        import torch

        self.ticket, self.index, self.prompt, self.sampling = ticket, index, prompt, sampling
        self.detokenizer = _Detokenizer(tokenizer, prompt)
        self.generated = 0
        self.text, self.sent = "", 0
        self.cancelled = False  # set from the event loop: the client went away or timed out
        self.done = False
        self.generator = None
        if sampling.temperature > 0:
            self.generator = torch.Generator(device=device)
            if sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(sampling.seed)

    def accept(self, token: int, eos: set[int]) -> None:
        """Take the next token: emit the text it completes, and finish at EOS, a stop string or the budget."""
        self.generated += 1
        if token in eos:
            return self._finish("stop", self.detokenizer.add(None, final=True))
        piece = self.detokenizer.add(token)
        if self.generated >= self.sampling.max_tokens:
            return self._finish("length", piece + self.detokenizer.add(None, final=True))
        if piece and not self._append(piece):
            held = _held_back(self.text, self.sampling.stop, self.sent)
            self._emit(len(self.text) - held)

    def _append(self, piece: str) -> bool:
        """Add ``piece``; True when that completes a stop string (the text then ends before it)."""
        self.text += piece
        if not self.sampling.stop:
            return False
        kept = cut_at_stop(self.text[self.sent:], self.sampling.stop)
        if len(kept) == len(self.text) - self.sent:
            return False
        self.text = self.text[:self.sent + len(kept)]
        self._finish("stop", "")
        return True

    def _finish(self, reason: str, piece: str) -> None:
        if piece and self._append(piece):
            return
        self._emit(len(self.text))
        self.done = True
        self.ticket.post(Finished(self.index, reason, self.generated))

    def _emit(self, end: int) -> None:
        if end > self.sent:
            self.ticket.post(Text(self.index, self.text[self.sent:end]))
            self.sent = end


@dataclass
class _Batch:
    rows: list[_Row]
    cache: Any  # the model's past_key_values, one row per row
    mask: Any  # [rows, cached tokens] attention mask over the cache (0: left padding)
    next_tokens: Any  # [rows] the token each row feeds next
    positions: Any  # [rows] that token's position
    mergeable: bool = field(default=False)


def _mergeable(cache: Any) -> bool:
    """Whether rows can join and leave ``cache`` by slicing and padding its tensors: a plain DynamicCache
    of full-attention layers (not sliding windows, linear attention, offloading or shared KV)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    return (type(cache) is DynamicCache and bool(layers) and not getattr(cache, "offloading", False)
            and all(type(layer) is DynamicLayer and layer.keys is not None and layer.keys.dim() == 4
                    for layer in layers))


def _sample(logits: Any, rows: list[_Row]) -> list[int]:
    """The next token of every row: argmax for greedy rows; sampled rows use their temperature, top-k,
    top-p and their own generator."""
    logits = logits.float()
    tokens = logits.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        s = row.sampling
        if s.temperature > 0:
            tokens[i] = sample_token(logits[i], temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                     generator=row.generator)
    return tokens


class GenerationEngine:
    """Continuous-batching decoder over one causal LM, run in the server's model thread."""

    def __init__(self, served: ServedModel, *, executor: Any, metrics: Any, max_batch_size: int,
                 max_wait_s: float):
        self.served, self.model, self.device = served, served.model, served.device
        self.executor, self.metrics = executor, metrics
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        # The event loop tokenizes prompts while this thread decodes; a fast tokenizer is one Rust object
        # that two threads must not use at once ("Already borrowed"), so decoding has a copy of its own.
        self.tokenizer = copy.deepcopy(served.tokenizer)
        self.eos = _eos_ids(self.model, served.tokenizer)
        self.pad_id = served.tokenizer.pad_token_id
        if self.pad_id is None:  # masked out: any id does; eos as decoder-only models use it
            self.pad_id = min(self.eos) if self.eos else 0
        accepted = inspect.signature(self.model.forward).parameters
        self._positions = "position_ids" in accepted
        self._cache_arg = cache_argument(self.model)
        self._keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in accepted), None)
        # peft's prompt learning (prefix or prompt tuning, p-tuning) adds its virtual tokens inside forward,
        # so the cache loop cannot drive it: such models generate one row at a time with model.generate.
        peft_config = getattr(self.model, "active_peft_config", None)
        self._alone = bool(getattr(peft_config, "is_prompt_learning", False))
        self._lock = threading.Condition()
        self._pending: deque[_Row] = deque()
        self._busy = False

    # ---- event loop side

    def submit(self, prompts: list[list[int]], sampling: list[Sampling]) -> Ticket:
        """Queue ``prompts`` (one row each) and return the ticket their events arrive on."""
        ticket = Ticket(asyncio.get_running_loop())
        ticket.rows = [_Row(ticket, i, ids, s, self.tokenizer, self.device)
                       for i, (ids, s) in enumerate(zip(prompts, sampling))]
        with self._lock:
            self._pending.extend(ticket.rows)
            start, self._busy = not self._busy, True
            self._lock.notify_all()
            self.metrics.queue_depth.set(len(self._pending))
        if start:
            self.executor.submit(self._serve)
        return ticket

    # ---- model thread

    def _serve(self) -> None:
        """Decode until no row is left: take newcomers in between steps, step the batch, repeat."""
        import torch

        batch: _Batch | None = None
        newcomers: list[_Row] | None = []
        try:
            with torch.inference_mode(), self.served.autocast():  # --dtype: bf16/fp16 matmuls, or fp32
                while True:
                    newcomers = self._take(batch)
                    if newcomers is None:
                        return
                    if newcomers and self._alone:
                        self._generate_alone(newcomers[0])
                    elif newcomers:
                        batch = self._join(batch, newcomers)
                    newcomers = []
                    if batch is not None:
                        batch = self._step(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiting request answers for it
            log.exception("generation failed")
            with self._lock:
                rows = (batch.rows if batch else []) + (newcomers or []) + list(self._pending)
                self._pending.clear()
                self._busy = False
            for row in rows:
                row.ticket.post(Failed(exc))

    def _take(self, batch: _Batch | None) -> list[_Row] | None:
        """Rows to prefill now; ``None`` when there is nothing left to do (the engine is then idle)."""
        with self._lock:
            if batch is None:
                if not self._pending:
                    self._busy = False
                    return None
                deadline = time.monotonic() + (0 if self._alone else self.max_wait_s)  # idle: wait for company
                while len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._lock.wait(left)
                room = 1 if self._alone else self.max_batch_size
            else:
                room = self.max_batch_size - len(batch.rows) if batch.mergeable else 0
            taken = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            self.metrics.queue_depth.set(len(self._pending))
        return [row for row in taken if not row.cancelled]

    def _forward(self, input_ids: Any, mask: Any, positions: Any, cache: Any, rows: int) -> tuple[Any, Any]:
        kwargs: dict[str, Any] = {"attention_mask": mask, self._cache_arg: cache, "use_cache": True}
        if self._positions:
            kwargs["position_ids"] = positions
        if self._keep:
            kwargs[self._keep] = 1
        self.metrics.batch_size.observe(rows)
        out = self.model(input_ids=input_ids, **kwargs)
        return out.logits[:, -1, :], output_cache(out)

    def _join(self, batch: _Batch | None, rows: list[_Row]) -> _Batch | None:
        """Prefill ``rows`` together (left-padded) and merge them into ``batch``."""
        ids, mask = pad_ids([r.prompt for r in rows], self.pad_id, left=True, device=self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits, cache = self._forward(ids, mask, positions, None, len(rows))
        for row in rows:
            row.ticket.post(Started(row.index, len(row.prompt)))
        new = _Batch(rows, cache, mask, None, mask.sum(-1), _mergeable(cache))
        new = self._advance(new, logits)
        if batch is None or new is None:
            return new or batch
        return _merge(batch, new)

    def _generate_alone(self, row: _Row) -> None:
        """Decode one row with ``model.generate``, streaming its tokens into the row (prompt-learning models)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from tuneforge.models.generation import seeded

        engine, s = self, row.sampling

        class Feed(BaseStreamer):
            prompt = True  # generate puts the prompt first

            def put(self, value: Any) -> None:
                if self.prompt:
                    self.prompt = False
                    return
                for token in value.reshape(-1).tolist():
                    if not (row.done or row.cancelled):
                        row.accept(token, engine.eos)
                        engine.metrics.generated_tokens.inc()

            def end(self) -> None:
                pass

        class Over(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), row.done or row.cancelled, device=input_ids.device)

        ids = torch.tensor([row.prompt], device=self.device)
        sampling = dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k) \
            if s.temperature > 0 else dict(do_sample=False)
        row.ticket.post(Started(row.index, len(row.prompt)))
        self.metrics.batch_size.observe(1)
        # generate samples from the global RNG: forked, and seeded with the row's seed (random without one)
        with seeded(self.model, row.generator.initial_seed() if row.generator is not None else None):
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_tokens,
                                eos_token_id=sorted(self.eos) or None, pad_token_id=self.pad_id, streamer=Feed(),
                                stopping_criteria=StoppingCriteriaList([Over()]), **sampling)
        if not (row.done or row.cancelled):  # generate ended for a reason of its own (a max_length)
            row._finish("length", row.detokenizer.add(None, final=True))

    def _step(self, batch: _Batch) -> _Batch | None:
        """One forward pass for every row of ``batch``, after dropping abandoned rows."""
        import torch

        live = [i for i, row in enumerate(batch.rows) if not row.cancelled]
        if len(live) < len(batch.rows):
            batch = _select(batch, live)
            if batch is None:
                return None
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        logits, batch.cache = self._forward(batch.next_tokens[:, None], mask, batch.positions[:, None],
                                            batch.cache, len(batch.rows))
        batch.mask, batch.positions = mask, batch.positions + 1
        return self._advance(batch, logits)

    def _advance(self, batch: _Batch, logits: Any) -> _Batch | None:
        """Pick each row's next token, hand it to the row, and drop the rows that are done."""
        tokens = _sample(logits, batch.rows)
        for row, token in zip(batch.rows, tokens):
            if not (row.done or row.cancelled):  # rows a cache could not drop run on unseen
                row.accept(token, self.eos)
                self.metrics.generated_tokens.inc()
        batch.next_tokens = logits.new_tensor(tokens, dtype=batch.mask.dtype)
        live = [i for i, row in enumerate(batch.rows) if not row.done]
        return _select(batch, live) if len(live) < len(batch.rows) else batch


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the model's generation config (chat models list their end-of-turn tokens
    there) and the tokenizer's eos token."""
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [found] if found is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _select(batch: _Batch, keep: list[int]) -> _Batch | None:
    """``batch`` with only the rows ``keep``; ``None`` when none is left. A cache that cannot drop rows
    keeps them (they run on, unseen: their rows are done or cancelled) until the whole batch ends."""
    import torch

    if not keep:
        return None
    index = torch.tensor(keep, device=batch.mask.device)
    try:
        batch.cache.batch_select_indices(index)
    except (AttributeError, NotImplementedError):
        return batch if any(not (r.done or r.cancelled) for r in batch.rows) else None
    batch.rows = [batch.rows[i] for i in keep]
    batch.mask, batch.next_tokens = batch.mask[index], batch.next_tokens[index]
    batch.positions = batch.positions[index]
    if batch.mergeable:  # columns that are padding in every remaining row: cut them off
        first = int(batch.mask.any(dim=0).nonzero()[0])
        if first:
            batch.mask = batch.mask[:, first:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return batch


def _merge(batch: _Batch, new: _Batch) -> _Batch:
    """One batch of both: the shorter cache left-padded (masked out) to the longer one's length."""
    import torch
    import torch.nn.functional as F

    if not (batch.mergeable and new.mergeable):
        raise RuntimeError("a batch whose cache cannot merge got newcomers")  # _take never lets this happen
    width = max(batch.mask.shape[1], new.mask.shape[1])

    def pad(t: Any, dim_from_end: int) -> Any:
        missing = width - t.shape[-dim_from_end]
        return F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0)) if missing else t

    for old_layer, new_layer in zip(batch.cache.layers, new.cache.layers):
        old_layer.keys = torch.cat([pad(old_layer.keys, 2), pad(new_layer.keys, 2)])
        old_layer.values = torch.cat([pad(old_layer.values, 2), pad(new_layer.values, 2)])
    batch.rows = batch.rows + new.rows
    batch.mask = torch.cat([pad(batch.mask, 1), pad(new.mask, 1)])
    batch.next_tokens = torch.cat([batch.next_tokens, new.next_tokens])
    batch.positions = torch.cat([batch.positions, new.positions])
    return batch
