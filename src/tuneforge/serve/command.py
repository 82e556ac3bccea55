"""``tuneforge serve MODEL_DIR``: load the model, build the app, run uvicorn."""

from __future__ import annotations

from tuneforge.serve.config import ServeConfig


def banner(cfg: ServeConfig, served, host: str, port: int) -> list[str]:
    url = f"http://{host}:{port}"
    auth = "none (--no-auth)" if cfg.no_auth else \
        f"{len(cfg.effective_keys())} API key(s); send 'Authorization: Bearer <key>'"
    lines = [f"serving {served.id} ({served.task.replace('_', ' ')}, context {served.max_input_tokens} tokens, "
             f"{served.device}, {served.dtype}) on {url}",
             f"endpoints: {', '.join(served.endpoints)}, /v1/models, /health, /metrics; API docs {url}/docs",
             f"auth: {auth}",
             f"batching: up to {cfg.max_batch_size} inputs, waiting at most {cfg.max_wait_ms:g} ms; "
             f"body limit {cfg.max_body_bytes:,} bytes; timeout {cfg.request_timeout_s:g} s"]
    return lines


def run_server(cfg: ServeConfig) -> None:
    import uvicorn

    from tuneforge.serve.app import create_app

    app = create_app(cfg)
    served = app.state.tuneforge.served
    for line in banner(cfg, served, cfg.host, cfg.port):
        print(line, flush=True)
    # One process: the model thread already uses every core through torch; more processes would
    # each hold a copy of the model. Scale out with several servers behind a load balancer.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=10,
                server_header=False)
