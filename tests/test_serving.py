"""``icdcoder serve`` against a real uvicorn server on loopback, driven over HTTP with httpx."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from pydantic import ValidationError

from icdcoder.serving.app import create_app
from icdcoder.serving.server import warm_pipeline
from icdcoder.serving.settings import ServeSettings
from tests.serving_helpers import running

SECRET = "Zyxwvut-PATIENT-SECRET-4417"  # a string no code path may write to a log or an error body
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    return warm_pipeline(tiny_model_dir)


@pytest.fixture(scope="module")
def base(pipeline):
    with running(create_app(pipeline, ServeSettings(max_notes=3, max_note_chars=5000, max_body_bytes=8192))) as url:
        yield url


@pytest.fixture(scope="module")
def note_text(small_synth):
    """A real synthetic note behind accented and non-BMP characters, so offsets are tested past them."""
    return "Émigré patient 🙂, seen in clínica. " + small_synth["test"][0].text


def _check_coded(result, text):
    assert result["codes"], "the model suggests nothing for a synthetic note"
    assert any(c["suggested"] for c in result["codes"])
    for c in result["codes"]:
        assert c["description"], c["code"]
        assert c["system"] == "icd10cm"
        for ev in c["evidence"]:
            assert text[ev["start"]:ev["end"]] == ev["text"], (c["code"], ev)
    assert sum(len(c["evidence"]) for c in result["codes"]) > 0


def test_code_one_note_and_a_batch(base, note_text, small_synth):
    r = httpx.post(f"{base}/v1/code", json={"text": note_text, "id": "n1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"]
    body = r.json()
    assert body["model"]["coder"] == "tfidf" and 0 < body["model"]["threshold"] < 1
    (single,) = body["results"]
    assert single["id"] == "n1"
    _check_coded(single, note_text)

    texts = [note_text, small_synth["test"][1].text, small_synth["test"][2].text]
    r = httpx.post(f"{base}/v1/code", json={"notes": [{"id": "a", "text": texts[0]}, {"id": "b", "text": texts[1]},
                                                      {"text": texts[2]}]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == ["a", "b", "3"]
    for result, text in zip(results, texts):
        _check_coded(result, text)
    assert results[0]["codes"] == single["codes"]  # same note, same answer, alone or in a batch


def test_code_lookup(base):
    r = httpx.get(f"{base}/v1/codes/E11.9")
    assert r.status_code == 200
    rec = r.json()
    assert rec["description"] == "Type 2 diabetes mellitus without complications"
    assert rec["billable"] is True and rec["parent"] == "E11" and rec["system"] == "icd10cm"
    assert httpx.get(f"{base}/v1/codes/e119").json()["code"] == "E11.9"  # any spelling, canonical out
    r = httpx.get(f"{base}/v1/codes/XQ99.77")
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_code" and "'XQ99.77' is not a code" in r.json()["message"]
    assert httpx.get(f"{base}/v1/codes/E11.9", params={"system": "icd9cm"}).status_code == 404
    r = httpx.get(f"{base}/v1/codes/E11.9", params={"system": "icd11"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "system"


def test_health_docs_and_page(base):
    h = httpx.get(f"{base}/healthz").json()
    assert h["status"] == "ok" and h["auth_required"] is False
    assert h["model"]["labels"] > 50 and h["limits"] == {"max_notes": 3, "max_note_chars": 5000,
                                                          "max_body_bytes": 8192}
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/code", "/v1/codes/{code}", "/healthz"} <= set(spec["paths"])
    assert {"CodeRequest", "CodeResponse", "CodedNote", "ErrorBody"} <= set(spec["components"]["schemas"])
    assert httpx.get(f"{base}/docs").status_code == 200
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "<title>icdcoder" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("review.js", "review.css"):
        assert httpx.get(f"{base}/static/{name}").status_code == 200


@pytest.mark.parametrize("body, status, error, field", [
    (b'{"text": "' + SECRET.encode() + b'"', 400, "invalid_json", None),
    ({"text": "   "}, 422, "invalid_request", "text"),
    ({"notes": [{"id": "a", "text": SECRET}, {"id": "b", "text": ""}]}, 422, "invalid_request", "notes[1].text"),
    ({"notes": [{"text": SECRET}] * 4}, 422, "too_many_notes", "notes"),
    ({"text": SECRET + " x" * 3000}, 422, "note_too_long", "text"),
    ({"notes": [{"id": "a", "text": SECRET}, {"id": "a", "text": "copd"}]}, 422, "invalid_request", "notes[1].id"),
    ({"text": SECRET, "notes": [{"text": "copd"}]}, 422, "invalid_request", "body"),
    ({"text": ["list", SECRET]}, 422, "invalid_request", "text"),
    ({"txt": SECRET}, 422, "invalid_request", "txt"),
    (b"", 422, "invalid_request", "body"),
])
def test_bad_requests_name_the_field_and_never_echo_the_note(base, body, status, error, field):
    raw = isinstance(body, bytes)
    kw = {"content": body, "headers": {"content-type": "application/json"}} if raw else {"json": body}
    r = httpx.post(f"{base}/v1/code", **kw)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] == error and err["request_id"] == r.headers["x-request-id"]
    if field:
        assert field in [f["field"] for f in err["fields"]] and err["message"].startswith(field)
    assert SECRET not in r.text and "input" not in err


def test_oversize_bodies_get_413_declared_or_streamed(base):
    big = b'{"text": "' + b"a" * 9000 + b'"}'
    r = httpx.post(f"{base}/v1/code", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: the limit has to be counted as the body streams in
        yield b'{"text": "'
        for _ in range(9):
            yield b"a" * 1000
        yield b'"}'

    r = httpx.post(f"{base}/v1/code", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_token_guards_the_api_but_not_health_or_page(pipeline, note_text):
    with running(create_app(pipeline, ServeSettings(token=TOKEN))) as url:
        assert httpx.get(f"{url}/healthz").json()["auth_required"] is True
        for path in ("/", "/static/review.js", "/openapi.json"):
            assert httpx.get(url + path).status_code == 200, path
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            r = httpx.post(f"{url}/v1/code", json={"text": note_text}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert r.json()["error"] == "unauthorized"
            assert httpx.get(f"{url}/v1/codes/E11.9", headers=headers).status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{url}/v1/code", json={"text": note_text}, headers=ok).status_code == 200
        assert httpx.get(f"{url}/v1/codes/E11.9", headers=ok).status_code == 200


def test_off_loopback_needs_a_token(tiny_model_dir):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert ServeSettings(host=host).token is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "my-host.example"):
        with pytest.raises(ValidationError, match="needs a bearer token"):
            ServeSettings(host=host)
        assert ServeSettings(host=host, token=TOKEN).auth_required
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ServeSettings(token="short")
    env = {k: v for k, v in os.environ.items() if k != "ICDCODER_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "icdcoder.cli", "serve", "--model", str(tiny_model_dir),
                        "--host", "0.0.0.0"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "needs a bearer token" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


class _Exploding:
    """The real pipeline, except that a note containing EXPLODE raises with the note in the message."""

    def __init__(self, inner):
        self.inner = inner

    def code(self, notes):
        for n in notes:
            if "EXPLODE" in n.text:
                raise RuntimeError(f"cannot code {n.text!r}")
        return self.inner.code(notes)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_logs_never_hold_note_text(pipeline, note_text, caplog):
    caplog.set_level(logging.DEBUG)
    secret_note = f"{SECRET} {note_text}"
    with running(create_app(_Exploding(pipeline), ServeSettings(max_note_chars=len(secret_note) + 10))) as url:
        assert httpx.post(f"{url}/v1/code", json={"text": secret_note}).status_code == 200
        assert httpx.post(f"{url}/v1/code", json={"notes": [{"text": secret_note}, {"text": " "}]}).status_code == 422
        assert httpx.post(f"{url}/v1/code", json={"text": secret_note + " pad" * 20}).status_code == 422
        assert httpx.post(f"{url}/v1/code", content=f'{{"text": "{SECRET}',
                          headers={"content-type": "application/json"}).status_code == 400
        r = httpx.post(f"{url}/v1/code", json={"text": f"EXPLODE {secret_note}"})
        assert r.status_code == 500 and r.json()["error"] == "internal_error"
        assert SECRET not in r.text and "Traceback" not in r.text and r.json()["request_id"] in r.json()["message"]
    text = "\n".join(f"{rec.name} {rec.getMessage()} {rec.exc_text or ''}" for rec in caplog.records)
    assert "POST /v1/code 200" in text and "POST /v1/code 500" in text  # the capture does see the server's log
    assert f"unhandled RuntimeError in POST /v1/code [request {r.json()['request_id']}]" in text
    assert SECRET not in text and "EXPLODE" not in text


class _Blocking:
    """The real pipeline, except that coding waits until the test releases it."""

    def __init__(self, inner):
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    def code(self, notes):
        self.entered.set()
        self.release.wait(20)
        return self.inner.code(notes)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_busy_and_timeout(pipeline, note_text):
    slow = _Blocking(pipeline)
    app = create_app(slow, ServeSettings(max_concurrency=1, max_queue=1, timeout_s=1.0))
    gate = app.state.gate
    with running(app) as url:
        post = lambda: httpx.post(f"{url}/v1/code", json={"text": note_text}, timeout=30)  # noqa: E731
        answers: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: answers.setdefault("first", post()))
        first.start()
        assert slow.entered.wait(10)
        queued = threading.Thread(target=lambda: answers.setdefault("queued", post()))
        queued.start()
        deadline = time.monotonic() + 10
        while gate.in_use < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = post()  # one coding, one waiting: no room at all
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "already coding or waiting" in full.json()["message"]
        first.join(), queued.join()
        assert answers["first"].status_code == 504 and answers["first"].json()["error"] == "timeout"
        queued_answer = answers["queued"]
        assert queued_answer.status_code == 503 and "no coding slot came free" in queued_answer.json()["message"]
        # the timed-out job still runs in its thread and keeps its slot until it really ends
        assert gate.in_use == 1
        slow.release.set()
        deadline = time.monotonic() + 10
        while gate.in_use and time.monotonic() < deadline:
            time.sleep(0.01)
        assert post().status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_end_to_end(tiny_model_dir, note_text, tmp_path):
    """The real command: its own log setup, the token from the environment, and no note text on stderr."""
    port, log_path = _free_port(), tmp_path / "server.log"
    env = {**os.environ, "ICDCODER_TOKEN": TOKEN}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "icdcoder.cli", "serve", "--model", str(tiny_model_dir),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert httpx.post(f"{url}/v1/code", json={"text": SECRET}).status_code == 401
        r = httpx.post(f"{url}/v1/code", json={"text": f"{SECRET} {note_text}"},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    out = log_path.read_text()
    assert "POST /v1/code 200" in out and "POST /v1/code 401" in out and "token required" in out
    assert SECRET not in out and TOKEN not in out
