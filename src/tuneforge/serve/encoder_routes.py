"""``POST /v1/classify`` and ``POST /v1/tokens``: encoder models behind the micro-batcher."""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at run time,
# and the request types are imported inside the functions, where string annotations cannot be resolved.
from tuneforge.serve.errors import APIError
from tuneforge.serve.state import ServerState


def _check_count(state: ServerState, texts: list[str]) -> None:
    if len(texts) > state.cfg.max_texts:
        raise APIError(422, f"texts has {len(texts)} items; this server takes at most {state.cfg.max_texts} per "
                            "request (--max-texts): split them over several requests", param="texts",
                       code="too_many_inputs")


def add_encoder_routes(app, state: ServerState) -> None:
    from fastapi import Depends

    from tuneforge.serve.batcher import MicroBatcher
    from tuneforge.serve.inference import classification_result, encode, entities, run_batch
    from tuneforge.serve.schemas import (ERROR_RESPONSES, ClassifyRequest, ClassifyResponse, TextsRequest,
                                         TokensResponse)

    served, cfg, metrics = state.served, state.cfg, state.metrics
    batcher = MicroBatcher(lambda batch: run_batch(served, batch), executor=state.executor,
                           max_batch_size=cfg.max_batch_size, max_wait_s=cfg.max_wait_ms / 1000,
                           on_batch=metrics.batch_size.observe, on_queue=metrics.queue_depth.set)

    async def predict(req: TextsRequest, endpoint: str):
        state.check_model(req.model)
        _check_count(state, req.texts)
        encoded = encode(served, req.texts, truncate=req.truncate)
        n_tokens = sum(len(e.ids) for e in encoded)
        metrics.inputs.labels(endpoint).inc(len(encoded))
        metrics.prompt_tokens.inc(n_tokens)
        outputs = await state.in_time(batcher.submit([e.ids for e in encoded]))
        return encoded, outputs, {"input_tokens": n_tokens}

    if served.task == "classification":
        @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
                  dependencies=[Depends(state.auth)], responses=ERROR_RESPONSES)
        async def classify(req: ClassifyRequest):
            """Label each text: the label and its probability, every label's probability (or the value)."""
            _, outputs, usage = await predict(req, "/v1/classify")
            return {"model": served.id, "usage": usage,
                    "results": [classification_result(served, o, threshold=req.threshold) for o in outputs]}
    else:
        @app.post("/v1/tokens", response_model=TokensResponse, dependencies=[Depends(state.auth)],
                  responses=ERROR_RESPONSES)
        async def tokens(req: TextsRequest):
            """Entities in each text with their type, character span and score."""
            encoded, outputs, usage = await predict(req, "/v1/tokens")
            return {"model": served.id, "usage": usage,
                    "results": [{"entities": entities(served, t, e, o)}
                                for t, e, o in zip(req.texts, encoded, outputs)]}
