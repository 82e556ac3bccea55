"""What every route of one server shares: config, model, metrics, the model thread and the batcher."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tuneforge.serve.config import ServeConfig
from tuneforge.serve.errors import APIError
from tuneforge.serve.limits import check_api_key, with_timeout
from tuneforge.serve.loader import ServedModel
from tuneforge.serve.metrics import Metrics


@dataclass
class ServerState:
    cfg: ServeConfig
    served: ServedModel
    metrics: Metrics = field(default_factory=Metrics)
    # One thread runs the model: torch parallelises each call over the cores itself, and calls from
    # several threads would only compete for them.
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "tuneforge-model"))
    keys: list[str] = field(default_factory=list)
    #: the FastAPI dependency every /v1 route declares (create_app builds it: it also documents the
    #: key schemes in the OpenAPI spec)
    auth: Callable | None = None

    def authorize(self, headers) -> None:
        if not self.cfg.no_auth:
            check_api_key(headers, self.keys)

    def check_model(self, name: str | None) -> None:
        """404 for a ``model`` field that names another model, as OpenAI answers."""
        if name is not None and name != self.served.id:
            raise APIError(404, f"model {name!r} is not served here; this server serves {self.served.id!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    async def in_time(self, awaitable):
        return await with_timeout(awaitable, self.cfg.request_timeout_s)
