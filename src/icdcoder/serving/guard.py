"""The outer layer of every request: request id, bearer token, body size, crash handling, access log.

The access log names the path as sent (percent-encoded) with anything that could break a log line
escaped (:func:`log_safe`): a decoded ``%0D%0A`` would otherwise let a URL write log lines of its own.

It is plain ASGI so that it runs before FastAPI reads or parses anything, and so that no exception
reaches the server's own error log: exception messages can quote note text (a validation error
repeats its input), so only the exception type and the code locations are logged, never a message.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import traceback
import uuid
from contextvars import ContextVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("icdcoder.serving")
request_id: ContextVar[str] = ContextVar("request_id", default="-")

PUBLIC_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/docs-static/")  # page and docs files; API calls carry the token


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions through its body reader."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit:,} bytes")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison of ``Authorization: Bearer <token>``."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def error_json(status: int, kind: str, message: str, headers: dict[str, str] | None = None):
    """A complete ASGI response (start, body) in the API's error shape."""
    body = json.dumps({"error": kind, "message": message, "request_id": request_id.get(), "fields": []},
                      separators=(",", ":")).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": head},
            {"type": "http.response.body", "body": body})


def log_safe(value: str) -> str:
    """``value`` with control, invisible and line-breaking characters, spaces and backslashes escaped
    (``\\r``, ``\\x1b``, ``\\u2028``), so a client cannot end a log line, forge the next one, shift the
    fields of this one or send escape codes to an operator's terminal."""
    if value.isprintable() and " " not in value and "\\" not in value:
        return value
    return "".join(ch if ch.isprintable() and ch not in " \\" else
                   ("\\x20" if ch == " " else ch.encode("unicode_escape").decode("ascii"))
                   for ch in value)


def logged_path(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded: ``%0D%0A`` stays text), escaped for the log."""
    raw = scope.get("raw_path")
    return log_safe(raw.decode("latin-1") if raw else scope.get("path", ""))


def _where(exc: BaseException) -> str:
    """Code locations of a traceback, without the exception's message or any local value."""
    return "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))


class Guard:
    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        request_id.set(rid)
        start = time.perf_counter()
        seen = {"status": 0, "in": 0, "out": 0, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
                if seen["in"] > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"], seen["started"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                for message in refusal:
                    await tagged_send(message)
                return
            await self.app(scope, counted_receive, tagged_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: answer, log safely, never re-raise
            log.error("unhandled %s in %s %s [request %s]\n%s", type(exc).__name__, log_safe(scope["method"]),
                      logged_path(scope), rid, _where(exc))
            if not seen["started"]:
                for message in error_json(500, "internal_error", f"internal server error; quote request id {rid}"):
                    await tagged_send(message)
        finally:
            log.info("%s %s %s %.1f ms in=%dB out=%dB [request %s]", log_safe(scope["method"]), logged_path(scope),
                     seen["status"], (time.perf_counter() - start) * 1000, seen["in"], seen["out"], rid)

    def _refusal(self, scope: Scope):
        """A response to send instead of running the app: missing token, or a declared size over the limit."""
        headers = dict(scope["headers"])
        if self.token is not None and not is_public(scope["path"]):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not token_matches(auth, self.token):
                why = "wrong bearer token" if auth else "this server needs 'Authorization: Bearer <token>'"
                return error_json(401, "unauthorized", why, {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return error_json(413, "body_too_large", f"request body is larger than {self.max_body_bytes:,} bytes")
        return None
