"""One error shape for every response, OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.

Clients (the ``openai`` package included) read ``error.message``; nothing else of an exception is
ever sent: an unexpected exception is logged here with its traceback and answered with a plain 500.
"""

from __future__ import annotations

import logging

log = logging.getLogger("tuneforge.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


class APIError(Exception):
    """An error the client caused or must know about; ``message`` says what and how to fix it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else
                                                             "invalid_request_error"),
                      "param": param, "code": code}}


def _where(loc: tuple) -> str:
    """``("body", "texts", 2)`` -> ``texts[2]``: the field as the client wrote it."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def validation_message(errors: list[dict]) -> str:
    """pydantic's error list as one line per problem: ``texts: List should have at least 1 item``."""
    lines = []
    for e in errors[:10]:
        msg = e.get("msg", "invalid value")
        if e.get("type") == "json_invalid":
            lines.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', msg)})")
        elif e.get("type") == "missing" and _where(e.get("loc", ())) == "body":
            lines.append("the request needs a JSON body")
        else:
            lines.append(f"{_where(e.get('loc', ()))}: {msg}")
    if len(errors) > 10:
        lines.append(f"... and {len(errors) - 10} more")
    return "; ".join(lines)


def install_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def api_error(request, exc: APIError):
        return JSONResponse(error_body(exc.status, exc.message, param=exc.param, code=exc.code),
                            status_code=exc.status, headers=exc.headers)

    async def invalid(request, exc: RequestValidationError):
        errors = list(exc.errors())
        param = _where(errors[0].get("loc", ())) if errors and errors[0].get("type") != "json_invalid" else None
        return JSONResponse(error_body(422, validation_message(errors), param=param), status_code=422)

    async def http_error(request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "the body could not be parsed: send JSON (Content-Type: application/json) in UTF-8"
        if exc.status_code == 404:
            message = getattr(request.app.state, "not_found_message", lambda p: None)(request.url.path) or \
                f"no endpoint {request.url.path}; see /docs for the API"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def unexpected(request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal server error; the server log has the details"),
                            status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
