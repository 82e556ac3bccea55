"""``create_app(cfg)``: the FastAPI application of ``tuneforge serve``.

Only the endpoints of the served model's task are registered (a classifier has no /v1/completions);
calling another task's endpoint gets a 404 that says which endpoints this server has.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at run time,
# and the request types are imported inside the functions, where string annotations cannot be resolved.
from tuneforge.errors import TuneforgeError
from tuneforge.serve.config import API_KEY_ENV, ServeConfig
from tuneforge.serve.loader import ENDPOINTS, ServedModel
from tuneforge.serve.state import ServerState


def create_app(cfg: ServeConfig, served: ServedModel | None = None):
    """The app for ``cfg`` (``served`` skips loading, for tests that share one model)."""
    from fastapi import Depends, FastAPI, Request, Response
    from fastapi.security import APIKeyHeader, HTTPBearer

    from tuneforge.serve.errors import install_error_handlers
    from tuneforge.serve.limits import BodyLimit
    from tuneforge.serve.loader import load_served_model
    from tuneforge.serve.metrics import MetricsMiddleware
    from tuneforge.serve.schemas import AUTH_RESPONSES, Health, ModelCard, ModelList

    keys = cfg.effective_keys()
    if not keys and not cfg.no_auth:
        raise TuneforgeError(f"no API key: pass --api-key KEY or set ${API_KEY_ENV} (--no-auth serves without "
                             "keys, to anyone who can reach the port)")
    served = served or load_served_model(cfg.model_dir, allow_pickle=cfg.allow_pickle, device=cfg.device,
                                         threads=cfg.threads, max_input_tokens=cfg.max_input_tokens,
                                         model_id=cfg.served_id(), dtype=cfg.dtype)
    state = ServerState(cfg=cfg, served=served, keys=keys)
    app = FastAPI(title="tuneforge", version="1", summary=f"{served.id}: {served.task}")
    app.state.tuneforge = state
    app.state.not_found_message = lambda path: _other_task_message(path, served)
    install_error_handlers(app)

    # Declared for the OpenAPI spec (clients and fuzzers see the schemes); the check itself is ours.
    bearer, header = HTTPBearer(auto_error=False), APIKeyHeader(name="X-API-Key", auto_error=False)

    def auth(request: Request, _b=Depends(bearer), _h=Depends(header)) -> None:
        state.authorize(request.headers)

    state.auth = auth
    if served.task in ("classification", "token_classification"):
        from tuneforge.serve.encoder_routes import add_encoder_routes

        add_encoder_routes(app, state)
    elif served.task == "reward_model":
        from tuneforge.serve.score_routes import add_score_routes

        add_score_routes(app, state)
    else:
        from tuneforge.serve.openai_routes import add_generation_routes

        add_generation_routes(app, state)

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(auth)], responses=AUTH_RESPONSES)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served.id, created=served.created, task=served.task,
                                         labels=served.labels or None, max_input_tokens=served.max_input_tokens)])

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", model=served.id, task=served.task)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    # outermost first: count every response (413s included), then refuse oversized bodies
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _other_task_message(path: str, served: ServedModel) -> str | None:
    for task, endpoints in ENDPOINTS.items():
        if path in endpoints and task != served.task:
            kind = "reward model" if served.task == "reward_model" else f"{served.task.replace('_', ' ')} model"
            return f"{path} is not served: the model is a {kind} (this server has {', '.join(served.endpoints)})"
    return None
