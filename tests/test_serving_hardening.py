"""``icdcoder serve`` against hostile or careless clients: broken Unicode, invisible notes, forged log
lines, slow and idle connections, a connection flood and a full descriptor table (issue 16)."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from pydantic import ValidationError

from icdcoder.errors import DataError
from icdcoder.serving.app import create_app
from icdcoder.serving.connections import FD_RESERVE, LogBudget, connection_limits
from icdcoder.serving.guard import log_safe
from icdcoder.serving.schemas import CodeRequest
from icdcoder.serving.server import warm_pipeline
from icdcoder.serving.settings import ServeSettings
from icdcoder.text.validate import check_note_text, is_blank
from tests.serving_helpers import running

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    return warm_pipeline(tiny_model_dir)


@pytest.fixture(scope="module")
def base(pipeline):
    with running(create_app(pipeline)) as url:
        yield url


def _post_raw(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/code", content=body, headers={"content-type": "application/json"})


# ------------------------------------------------------------------------------------------- note text
@pytest.mark.parametrize("body, field", [
    (b'{"text": "essential\\ud800hypertension"}', "text"),
    (b'{"notes": [{"text": "copd"}, {"text": "essential \\udfff hypertension"}]}', "notes[1].text"),
    (b'{"text": "copd", "id": "n\\ud83d"}', "id"),
    (b'{"notes": [{"id": "\\udc80", "text": "copd"}]}', "notes[0].id"),
])
def test_lone_surrogate_is_a_422_naming_the_field(base, body, field):
    r = _post_raw(base, body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "invalid_request" and err["fields"][0]["field"] == field
    assert "lone surrogate" in err["message"] and err["message"].startswith(field)
    assert "hypertension" not in r.text  # the note is never echoed


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\u200b\u200c\u200d\u2060\ufeff", " \u00ad\u200b\n\t",
                                  "\u3164\u115f", "\u202e\u2066"])
def test_invisible_only_note_counts_as_empty(base, text):
    for body, field in (({"text": text}, "text"), ({"notes": [{"text": "copd"}, {"text": text}]}, "notes[1].text")):
        r = httpx.post(f"{base}/v1/code", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0] == {"field": field, "message": "note text is empty"}


def test_visible_text_around_invisible_characters_is_coded(base):
    r = httpx.post(f"{base}/v1/code", json={"text": "\ufeff\u200bEssential hypertension.\u200b"})
    assert r.status_code == 200, r.text


def test_check_note_text_and_is_blank():
    assert check_note_text("Émigré 🙂 ß ﬁ İ", "text") == "Émigré 🙂 ß ﬁ İ"
    with pytest.raises(DataError, match=r"notes\.jsonl:3, field 'text': .*lone surrogate U\+D800 at character 4"):
        check_note_text("abc\ud800def", "text", path="notes.jsonl", line=3)
    assert is_blank("") and is_blank(" \t\r\n") and is_blank("\u200b\ufeff\u2060\u00ad")
    assert not is_blank("\u200bx") and not is_blank("0") and not is_blank("🙂") and not is_blank("e\u0301")


_ANY_TEXT = (st.text(st.characters(exclude_categories=()))  # any code point, surrogates included (rarely)
             | st.text(st.sampled_from(["\ud800", "\udfff", "\u200b", "\ufeff", "\u2060", " ", "\n", "a", "é",
                                        "🙂"])))


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _ANY_TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["text", "id", "notes", "x"]), inner, max_size=3), max_leaves=8))
def test_request_model_accepts_or_names_an_error_for_any_json(value):
    """Any JSON value, any Unicode (surrogates included): a request, or a validation error (a 4xx)."""
    try:
        req = CodeRequest.model_validate(value)
    except ValidationError:
        return
    for nid, text in req.as_pairs():
        nid.encode("utf-8"), text.encode("utf-8")  # what the answer will quote can be written
        assert not is_blank(text)


# --------------------------------------------------------------------------------------------- the log
def test_crlf_in_the_path_cannot_forge_a_log_line(base, caplog):
    caplog.set_level(logging.INFO, logger="icdcoder")
    r = httpx.get(f"{base}/v1/codes/E11%0D%0A2024-01-01%20INFO%20GET%20/admin%20200%1B[2J")
    assert r.status_code == 404
    (line,) = [rec.getMessage() for rec in caplog.records if "admin" in rec.getMessage()]
    assert "\r" not in line and "\n" not in line and "\x1b" not in line
    assert line.startswith("GET /v1/codes/E11%0D%0A2024-01-01%20INFO%20GET%20/admin%20200%1B[2J 404 ")


def test_log_safe_escapes_what_could_break_a_line():
    assert log_safe("/v1/code") == "/v1/code"
    assert log_safe("/a\r\nGET /b 200") == "/a\\r\\nGET\\x20/b\\x20200"
    assert log_safe("\x1b[2J\u2028\u0085\\") == "\\x1b[2J\\u2028\\x85\\\\"
    assert log_safe("é🙂") == "é🙂"


# ------------------------------------------------------------------------------------- slow clients
def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_server(sock: socket.socket, wait_s: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``wait_s`` (EOF or reset), and what it sent first."""
    sock.settimeout(wait_s)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionError:
        pass
    return True, got


def test_slow_and_idle_clients_are_disconnected(pipeline):
    """Headers a byte at a time, a body a byte at a time, and nothing at all: all three are dropped once
    the read deadline passes, while an honest client is served."""
    with running(create_app(pipeline), ServeSettings(read_timeout_s=1.0)) as url:
        idle, slow_head, slow_body = _connect(url), _connect(url), _connect(url)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 400 + b"\r\n\r\n"
        slow_body.sendall(b"POST /v1/code HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 400\r\n\r\n")
        dropped: dict[str, bytes] = {}
        deadline = time.monotonic() + 60  # a safety net: the read timeout is 1 s
        for i in range(len(head)):
            for name, sock, byte in (("head", slow_head, head[i:i + 1]), ("body", slow_body, b"a")):
                if name in dropped:
                    continue
                try:
                    sock.sendall(byte)
                except ConnectionError:
                    dropped[name] = b""
                    continue
                closed, got = _closed_by_server(sock, 0.05)
                if closed:
                    dropped[name] = got
            if len(dropped) == 2 or time.monotonic() > deadline:
                break
        assert set(dropped) == {"head", "body"}, "a client dribbling bytes kept its connection"
        assert dropped["head"].startswith(b"HTTP/1.1 408 ")  # it had started a request: it is told why
        assert _closed_by_server(idle, 30) == (True, b"")
        assert httpx.get(f"{url}/healthz").status_code == 200
    for sock in (idle, slow_head, slow_body):
        sock.close()


def test_a_full_server_drops_its_slowest_connection_to_serve_a_new_client(pipeline):
    with running(create_app(pipeline), ServeSettings(max_connections=3, read_timeout_s=60)) as url:
        slow = []
        for _ in range(3):
            slow.append(_connect(url))
            slow[-1].sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
            time.sleep(0.1)  # accepted one after the other: the first has waited longest
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert _closed_by_server(slow[0], 10)[0], "the oldest unfinished request kept its connection"
        assert not _closed_by_server(slow[1], 0.2)[0] and not _closed_by_server(slow[2], 0.2)[0]
        for sock in slow:
            sock.close()


def test_a_full_server_of_working_clients_refuses_a_new_connection(pipeline):
    with running(create_app(pipeline), ServeSettings(max_connections=2, keep_alive_s=60)) as url:
        with httpx.Client() as a, httpx.Client() as b:
            assert a.get(f"{url}/healthz").status_code == 200 and b.get(f"{url}/healthz").status_code == 200
            extra = _connect(url)  # both open connections are idle between requests: neither is dropped
            assert _closed_by_server(extra, 10) == (True, b"")
            extra.close()
            assert a.get(f"{url}/healthz").status_code == 200 and b.get(f"{url}/healthz").status_code == 200


# ------------------------------------------------------------------------ open-file limit, accept errors
def test_connection_limits_fit_the_open_file_limit(caplog):
    """Open connections plus one backlog of new ones (asyncio accepts a backlog in one go) stay below the
    open-file limit, less a reserve for everything else."""
    assert connection_limits(None, None, 100_000) == (1000, 2048)
    assert connection_limits(50, 10, 100_000) == (50, 10)
    for fd_limit in (100, 128, 256, 1024, 4096):
        cap, backlog = connection_limits(None, None, fd_limit)
        assert cap >= 1 and backlog >= 1 and cap + backlog <= fd_limit - FD_RESERVE, fd_limit
    assert not caplog.records
    cap, backlog = connection_limits(5000, None, 256)
    assert cap + backlog <= 256 - FD_RESERVE
    assert "do not fit the open-file limit (ulimit -n 256)" in caplog.text


def test_log_budget_logs_once_then_counts(caplog):
    now = [0.0]
    budget = LogBudget(logging.getLogger("icdcoder.test"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="icdcoder.test"):
        for _ in range(500):
            budget.event("accept", "cannot accept")
            now[0] += 0.01
        now[0] = 61
        budget.event("accept", "cannot accept")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept", "cannot accept (499 more like it since the last report, 61 s ago)"]


_FLOOD_SERVER = textwrap.dedent("""
    import resource, socket, sys
    from icdcoder.serving.connections import guarded_h11
    from icdcoder.serving.server import make_server, uvicorn_config
    from icdcoder.serving.settings import ServeSettings

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    extra = {} if sys.argv[2] == "default" else {"http": guarded_h11(60, int(sys.argv[2])), "backlog": 2048}
    make_server(uvicorn_config(app, ServeSettings(), lifespan="off", **extra)).run(sockets=[sock])
""")


@contextlib.contextmanager
def _flood_server(tmp_path: Path, nofile: int, max_connections: str):
    """A trivial app behind ``icdcoder serve``'s server, in a process whose open-file limit is ``nofile``."""
    log_path = tmp_path / f"server-{max_connections}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _FLOOD_SERVER, str(nofile), max_connections], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port = int(proc.stdout.readline())
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield url, log_path
    finally:
        proc.terminate()
        proc.wait(20)


def test_accept_errors_are_logged_once_not_a_traceback_per_retry(tmp_path):
    """A cap set above what the open-file limit allows: accept() fails with EMFILE, over and over."""
    with _flood_server(tmp_path, 48, "10000") as (url, log_path):
        flood = [_connect(url) for _ in range(80)]
        time.sleep(2.5)  # asyncio retries accept() every second; each retry used to log a traceback
        for sock in flood:
            sock.close()
    text = log_path.read_text()
    assert text.count("cannot accept new connections: Too many open files (EMFILE)") == 1, text
    assert "Traceback" not in text and "socket.accept() out of system resource" not in text


def test_default_cap_keeps_a_flooded_server_answering(tmp_path):
    """The default cap fits the open-file limit: 150 idle connections never exhaust descriptors, the
    oldest make room, and an honest request is answered."""
    with _flood_server(tmp_path, 128, "default") as (url, log_path):
        flood = [_connect(url) for _ in range(150)]
        assert httpx.get(url, timeout=10).status_code == 200
        for sock in flood:
            sock.close()
    text = log_path.read_text()
    assert "cannot accept" not in text and "Too many open files" not in text, text
    assert text.count("closed the one that had waited longest") == 1, text
