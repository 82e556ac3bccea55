"""What stands between a request and the model: API keys, the body-size limit and the timeout."""

from __future__ import annotations

import asyncio
import hmac
import json

from tuneforge.serve.errors import APIError, error_body


def check_api_key(headers, keys: list[str]) -> None:
    """Raise 401 unless the request carries one of ``keys`` (``Authorization: Bearer`` or ``X-API-Key``).

    ``hmac.compare_digest`` against every key: the comparison takes the same time whatever prefix
    of a key the caller guessed right.
    """
    given = headers.get("x-api-key")
    auth = headers.get("authorization")
    if given is None and auth:
        scheme, _, value = auth.partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    challenge = {"WWW-Authenticate": "Bearer"}
    if not given:
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')",
                       code="missing_api_key", headers=challenge)
    if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise APIError(401, "invalid API key", code="invalid_api_key", headers=challenge)


async def with_timeout(awaitable, seconds: float):
    """Await ``awaitable``; past ``seconds`` cancel it and answer 504 (a queued input is then skipped)."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise APIError(504, f"the request did not finish within {seconds:g} s (the server's --request-timeout); "
                            "retry, or send fewer or shorter inputs", code="timeout") from None


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before any handler reads it.

    A Content-Length over the limit is refused at once; a chunked body is counted as it arrives,
    so a client cannot get round the limit by leaving the length out.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, int(length))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks = None  # disconnect: let the app see it
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send, None)
            if not message.get("more_body"):
                break
        if chunks is None:
            return await self.app(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, length: int | None):
        size = f"{length} bytes" if length is not None else f"over {self.limit} bytes"
        payload = json.dumps(error_body(413, f"the request body is {size}; the limit is {self.limit} bytes "
                                             "(the server's --max-body-bytes): send fewer or shorter inputs",
                                        code="body_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
