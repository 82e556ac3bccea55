"""``POST /v1/completions`` and ``POST /v1/chat/completions``: OpenAI's API over the generation engine.

The request and response bodies (``openai_schemas``) follow OpenAI's, so the official ``openai``
client (and anything built on it) works with ``base_url=http://host:port/v1``.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at run time,
# and the request types are imported inside the functions, where string annotations cannot be resolved.
import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from tuneforge.serve.errors import APIError, error_body
from tuneforge.serve.generation import CANCELLED, Failed, Finished, GenerationEngine, Sampling, Started, Text, Ticket
from tuneforge.serve.openai_schemas import (ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest,
                                            GenerationRequest)
from tuneforge.serve.prompts import FALLBACK_STOP, chat_template, encode_prompt, render_chat, token_budget
from tuneforge.serve.state import ServerState

log = logging.getLogger("tuneforge.serve")

# ---------------------------------------------------------------------------------------------- glue


class _Result:
    """What one request's rows produced so far: text pieces, finish reasons, token counts."""

    def __init__(self, n: int):
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.reasons: list[str | None] = [None] * n
        self.prompt_tokens = [0] * n
        self.completion_tokens = [0] * n

    def add(self, event: Any) -> None:
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Started):
            self.prompt_tokens[event.index] = event.prompt_tokens
        elif isinstance(event, Text):
            self.texts[event.index].append(event.text)
        elif isinstance(event, Finished):
            self.reasons[event.index] = event.reason
            self.completion_tokens[event.index] = event.completion_tokens

    @property
    def done(self) -> bool:
        return all(self.reasons)

    def usage(self) -> dict:
        prompt, completion = sum(self.prompt_tokens), sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Format:
    """OpenAI's objects for one endpoint: the whole response, and the chunks of a stream."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def response(self, result: _Result) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": "".join(t)}, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(result.texts, result.reasons))]
        else:
            choices = [{"index": i, "text": "".join(t), "finish_reason": r}
                       for i, (t, r) in enumerate(zip(result.texts, result.reasons))]
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": result.usage()}

    def chunk(self, event: Any, usage: dict | None = None, *, with_usage: bool = False) -> str | None:
        """The SSE line for ``event`` (``None``: nothing to send); ``event=None`` is the usage chunk."""
        if event is None:
            choices = []
        elif self.chat:
            delta = ({"role": "assistant", "content": ""} if isinstance(event, Started) else
                     {"content": event.text} if isinstance(event, Text) else {})
            choices = [{"index": event.index, "delta": delta, "logprobs": None,
                        "finish_reason": event.reason if isinstance(event, Finished) else None}]
        elif isinstance(event, Started):
            return None
        else:
            choices = [{"index": event.index, "text": event.text if isinstance(event, Text) else "",
                        "logprobs": None, "finish_reason": event.reason if isinstance(event, Finished) else None}]
        body = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
        if with_usage:
            body["usage"] = usage
        return _sse(body)


def _sse(body: Any) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _until_started(ticket: Ticket, n: int, result: _Result) -> deque:
    """Wait until every row has been prefilled; the events seen meanwhile, to be sent first."""
    seen: deque = deque()
    started = 0
    while started < n:
        event = await ticket.queue.get()
        result.add(event)  # raises for Failed
        seen.append(event)
        started += isinstance(event, Started)
    return seen


async def _until_done(ticket: Ticket, result: _Result, request) -> _Result | None:
    """All rows' events (non-streaming); ``None`` when the client went away first (its rows are then stopped)."""

    async def collect() -> _Result:
        while not result.done:
            result.add(await ticket.queue.get())
        return result

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, watch):
            task.cancel()
    return work.result() if work.done() and not work.cancelled() else None


def _sampling(req: GenerationRequest, generation_config: Any, max_tokens: int, extra_stop: list[str]) -> Sampling:
    """The decoding settings of ``req``; with no temperature the model's generation_config decides."""
    if req.temperature is None and getattr(generation_config, "do_sample", False):
        temperature = getattr(generation_config, "temperature", None) or 1.0
        top_p = req.top_p if req.top_p is not None else getattr(generation_config, "top_p", None) or 1.0
        top_k = req.top_k if req.top_k is not None else getattr(generation_config, "top_k", None) or 0
    else:
        temperature = req.temperature or 0.0
        top_p = req.top_p if req.top_p is not None else 1.0
        top_k = req.top_k or 0
    seed = None if req.seed is None else req.seed % 2**64  # OpenAI takes any integer, torch's generator 64 bits
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                    stop=tuple(req.stop or ()) + tuple(extra_stop))


def _server_limits_in_spec(app, vocab: int, max_new_tokens: int) -> None:
    """Put this server's limits into its spec: a token id in ``prompt`` is at most ``vocab - 1`` and
    ``max_tokens`` at most ``--max-new-tokens``. The request classes cannot know them; the app's spec,
    generated once on first use, can, so schema-driven clients and fuzzers see what is accepted."""
    original = app.openapi

    def mark(node, key: str, value: int):
        if isinstance(node, dict):
            if node.get("type") == "integer" and node.get("minimum") in (0, 1):
                node[key] = value
            for child in node.values():
                mark(child, key, value)
        elif isinstance(node, list):
            for child in node:
                mark(child, key, value)

    def openapi():
        if app.openapi_schema is None:
            schemas = original()["components"]["schemas"]
            mark(schemas["CompletionRequest"]["properties"]["prompt"], "maximum", vocab - 1)
            for name, field in (("CompletionRequest", "max_tokens"), ("ChatCompletionRequest", "max_tokens"),
                                ("ChatCompletionRequest", "max_completion_tokens")):
                mark(schemas[name]["properties"][field], "maximum", max_new_tokens)
        return app.openapi_schema

    app.openapi = openapi


def add_generation_routes(app, state: ServerState) -> None:
    from fastapi import Depends, Request, Response
    from fastapi.responses import StreamingResponse

    from tuneforge.serve.schemas import ERROR_RESPONSES

    served, cfg, metrics = state.served, state.cfg, state.metrics
    _server_limits_in_spec(app, served.model.get_input_embeddings().num_embeddings, cfg.max_new_tokens)
    engine = GenerationEngine(served, executor=state.executor, metrics=metrics, max_batch_size=cfg.max_batch_size,
                              max_wait_s=cfg.max_wait_ms / 1000)
    chat_stop: list[str] = []
    if chat_template(served.tokenizer) is None:
        chat_stop = [FALLBACK_STOP]
        log.warning("%s: the tokenizer has no chat template; /v1/chat/completions renders messages as ChatML "
                    "(<|im_start|>role ... <|im_end|>), which this model may not have been trained on", served.id)
    responses = {**ERROR_RESPONSES, 200: {"description": "The completion, or with stream: true server-sent "
                                                         "events (chunks, then data: [DONE])",
                                          "content": {"text/event-stream": {}}}}

    class EventStream(StreamingResponse):
        """Server-sent events whose rows stop decoding however the response ends (disconnect included)."""

        def __init__(self, content, ticket: Ticket):
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.ticket = ticket

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.ticket.cancel()

    async def events(ticket: Ticket, fmt: _Format, result: _Result, seen: deque, req: GenerationRequest,
                     deadline: float):
        """The SSE lines: the events seen before the headers, then the rest as they come, usage, [DONE]."""
        loop = asyncio.get_running_loop()
        with_usage = bool(req.stream_options and req.stream_options.include_usage)
        try:
            while seen or not result.done:
                if seen:
                    event = seen.popleft()  # already in result
                else:
                    event = await asyncio.wait_for(ticket.queue.get(), max(0.0, deadline - loop.time()))
                    if event is CANCELLED:
                        return
                    if isinstance(event, Failed):
                        yield _sse(error_body(500, "internal server error; the server log has the details"))
                        return
                    result.add(event)
                line = fmt.chunk(event, with_usage=with_usage)
                if line:
                    yield line
            if with_usage:
                yield fmt.chunk(None, result.usage(), with_usage=True)
            yield "data: [DONE]\n\n"
        except TimeoutError:
            yield _sse(error_body(504, f"the request did not finish within {cfg.request_timeout_s:g} s (the "
                                       "server's --request-timeout); ask for fewer tokens or retry", code="timeout"))
        finally:
            ticket.cancel()

    async def generate(request: Request, endpoint: str, req: GenerationRequest, prompts: list[list[int]],
                       sampling: list[Sampling], chat: bool):
        metrics.inputs.labels(endpoint).inc(len(prompts))
        metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        deadline = asyncio.get_running_loop().time() + cfg.request_timeout_s
        fmt, result = _Format(chat, served.id), _Result(len(prompts))
        ticket = engine.submit(prompts, sampling)
        try:
            if req.stream:
                # headers go out once the prompts are prefilled: until then a timeout is still a 504
                seen = await state.in_time(_until_started(ticket, len(prompts), result))
                response = EventStream(events(ticket, fmt, result, seen, req, deadline), ticket)
                ticket = None  # the response stops the rows now, however it ends
                return response
            done = await state.in_time(_until_done(ticket, result, request))
            # 499 (nginx's "client closed request"): nobody reads it, the metrics count it
            return fmt.response(done) if done is not None else Response(status_code=499)
        finally:
            if ticket is not None:
                ticket.cancel()

    @app.post("/v1/chat/completions", response_model=ChatCompletion, dependencies=[Depends(state.auth)],
              responses=responses)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        """The assistant's next message (OpenAI's chat completions)."""
        state.check_model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content or ""}
                    for m in req.messages]
        ids = render_chat(served.tokenizer, messages)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        budget = token_budget(len(ids), getattr(req, param), context=served.max_input_tokens,
                              limit=cfg.max_new_tokens, param=param, prompt_param="messages",
                              what="the conversation")
        sampling = _sampling(req, getattr(served.model, "generation_config", None), budget, chat_stop)
        return await generate(request, "/v1/chat/completions", req, [ids], [sampling], chat=True)

    @app.post("/v1/completions", response_model=Completion, dependencies=[Depends(state.auth)],
              responses=responses)
    async def completions(req: CompletionRequest, request: Request):
        """The continuation of each prompt (OpenAI's legacy completions)."""
        state.check_model(req.model)
        prompts = req.prompts()
        if len(prompts) > cfg.max_texts:
            raise APIError(422, f"prompt has {len(prompts)} items; this server takes at most {cfg.max_texts} per "
                                "request (--max-texts): split them over several requests", param="prompt",
                           code="too_many_inputs")
        ids, sampling = [], []
        for i, prompt in enumerate(prompts):
            field = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            ids.append(encode_prompt(served, prompt, field))
            budget = token_budget(len(ids[-1]), req.max_tokens, context=served.max_input_tokens,
                                  limit=cfg.max_new_tokens, prompt_param=field,
                                  what="the prompt" if len(prompts) == 1 else field)
            sampling.append(_sampling(req, getattr(served.model, "generation_config", None), budget, []))
        return await generate(request, "/v1/completions", req, ids, sampling, chat=False)
