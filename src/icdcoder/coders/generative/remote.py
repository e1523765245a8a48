"""A back-end for any OpenAI-compatible chat-completions endpoint (``vllm serve``, llama.cpp's server,
hosted APIs), written with the standard library only so that it needs no extra package.

Clinical notes leave the machine only towards the endpoint the user names: there is no default URL.
The notes never appear in what this module raises or logs, even when a server echoes the request in
its error message (such echoes are cut out before the message is shown).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

from icdcoder.coders.generative.backends import Backend, Messages, Sampling
from icdcoder.errors import IcdcoderError

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
_MAX_BACKOFF_S = 30.0
_SHOWN_ERROR_CHARS = 500
_READ_ERROR_BYTES = 200_000  # an error body is read this far (servers may echo a whole request)
_REMOVED = "[prompt text removed]"
_ECHO_WINDOW = 16  # a run of this many characters shared with the prompt counts as an echo


class _Retryable(Exception):
    """A failure worth another try (rate limit, server error, lost connection, timeout)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend(Backend):
    """Chat completions over HTTP: one request per prompt, ``concurrency`` requests in flight.

    ``api_key`` (or, when it is None, the environment variable named by ``api_key_env``) is sent as a
    bearer token; without either no ``Authorization`` header is sent (local servers need none).
    Requests that fail with 429, 5xx, a lost connection or a timeout are retried ``max_retries``
    times with exponential backoff (``backoff`` seconds, doubled each time; a ``Retry-After`` header
    wins). ``extra_body`` is merged into every request (e.g. vLLM's ``top_k`` or guided decoding).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 2,
                 concurrency: int = 4, backoff: float = 0.5, extra_body: Mapping[str, Any] | None = None):
        parsed = urllib.parse.urlparse(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise IcdcoderError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not model:
            raise IcdcoderError("model must name the model the endpoint serves")
        if timeout <= 0 or max_retries < 0 or concurrency < 1 or backoff < 0:
            raise IcdcoderError("timeout must be > 0, max_retries >= 0, concurrency >= 1 and backoff >= 0")
        self.endpoint = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env) if api_key_env else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff = backoff
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(endpoint={self.endpoint!r}, model={self.model!r})"

    def generate(self, prompts: Sequence[Messages], sampling: Sampling) -> list[list[str]]:
        prompts = list(prompts)
        if not prompts:
            return []
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._complete(p, sampling) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._complete, p, sampling) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # do not send the remaining notes after a failure
                    f.cancel()
                raise

    # -- one prompt --------------------------------------------------------------------------------

    def _body(self, messages: Messages, sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_body,
            "model": self.model,
            "messages": messages,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": sampling.n,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def _complete(self, messages: Messages, sampling: Sampling) -> list[str]:
        payload = json.dumps(self._body(messages, sampling)).encode("utf-8")
        secrets = [m.get("content") or "" for m in messages]
        for attempt in range(self.max_retries + 1):
            try:
                reply = self._post(payload, secrets)
                break
            except _Retryable as exc:
                if attempt == self.max_retries:
                    raise IcdcoderError(f"{exc} (gave up after {attempt + 1} attempts)") from None
                wait = exc.retry_after if exc.retry_after is not None else self.backoff * 2 ** attempt
                wait = min(max(wait, 0.0), _MAX_BACKOFF_S)
                log.warning("%s; retrying in %.1f s (attempt %d of %d)", exc, wait, attempt + 2, self.max_retries + 1)
                time.sleep(wait)
        return self._texts(reply, sampling.n)

    def _post(self, payload: bytes, secrets: list[str]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read(_READ_ERROR_BYTES + 1)
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                exc.close()
            detail = _server_message(body, secrets)
            message = f"{self.endpoint} answered HTTP {exc.code}" + (f": {detail}" if detail else "")
            if exc.code in _RETRY_STATUS or exc.code >= 500:
                raise _Retryable(message, _retry_after(exc.headers.get("Retry-After"))) from None
            raise IcdcoderError(message) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                raise _Retryable(f"{self.endpoint} did not answer within {self.timeout:g} s") from None
            raise _Retryable(f"cannot reach {self.endpoint}: {type(reason).__name__}: {reason}") from None
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise IcdcoderError(f"{self.endpoint} answered with something that is not JSON") from None
        if not isinstance(reply, dict):
            raise IcdcoderError(f"{self.endpoint} answered with JSON that is not an object")
        return reply

    def _texts(self, reply: dict[str, Any], n: int) -> list[str]:
        choices = reply.get("choices")
        if not isinstance(choices, list):
            raise IcdcoderError(f"{self.endpoint} answered without a 'choices' list")
        if len(choices) < n:
            raise IcdcoderError(f"{self.endpoint} returned {len(choices)} completion(s) for a prompt that asked for "
                                f"n={n}; this server may not support n > 1")
        ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        texts = []
        for choice in ordered[:n]:
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            texts.append(content if isinstance(content, str) else "")  # None: e.g. a refusal or tool call
        return texts


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to the backoff schedule
        return None


def _server_message(raw: bytes, secrets: list[str]) -> str:
    """The server's own words about an error, shortened, with any echo of the prompt cut out."""
    text = raw[:_READ_ERROR_BYTES].decode("utf-8", errors="replace").strip()
    if len(raw) > _READ_ERROR_BYTES:  # the cut may split an echo: drop the stretch a window could miss
        text = text[:-_ECHO_WINDOW] + "..."
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("message", parsed.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        text = error if isinstance(error, str) else json.dumps(error)
    text = _redact(text, secrets)
    return text[:_SHOWN_ERROR_CHARS] + ("..." if len(text) > _SHOWN_ERROR_CHARS else "")


def _redact(text: str, secrets: list[str]) -> str:
    """Replace every stretch of ``text`` that also occurs in a prompt message (raw or JSON-escaped).

    A stretch is caught when it is at least ``_ECHO_WINDOW`` characters long: every such window of
    the text is looked up among the windows of the messages. Shorter messages are replaced whole.
    """
    forms = set()
    for secret in secrets:
        if secret:
            forms.update((secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]))
    for form in sorted((f for f in forms if len(f) < _ECHO_WINDOW), key=len, reverse=True):
        if len(form) >= 8:
            text = text.replace(form, _REMOVED)
    windows = {f[i:i + _ECHO_WINDOW] for f in forms if len(f) >= _ECHO_WINDOW
               for i in range(len(f) - _ECHO_WINDOW + 1)}
    if not windows or len(text) < _ECHO_WINDOW:
        return text
    hidden = [False] * len(text)
    for start in range(len(text) - _ECHO_WINDOW + 1):
        if text[start:start + _ECHO_WINDOW] in windows:
            hidden[start:start + _ECHO_WINDOW] = [True] * _ECHO_WINDOW
    out, i = [], 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append(_REMOVED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
