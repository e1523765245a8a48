"""A real uvicorn server on a free loopback port in a background thread, for the serving tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

from icdcoder.serving.server import make_server, uvicorn_config
from icdcoder.serving.settings import ServeSettings


@contextlib.contextmanager
def running(app, settings: ServeSettings | None = None) -> Iterator[str]:
    """Serve ``app`` as ``icdcoder serve`` would (its protocol, timeouts and connection cap from ``settings``)
    until the block ends; yields its base URL. The socket is bound first: no port race."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(app, settings or ServeSettings(), log_config=None, lifespan="off")
    server = make_server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
