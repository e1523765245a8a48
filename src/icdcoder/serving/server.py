"""``icdcoder serve``: load the model once, then run uvicorn.

The request log is the guard's own line (method, path, status, duration, sizes, request id), so
uvicorn's access log is off: it would repeat the line with less in it. Bodies are never logged.

Connections go through :mod:`icdcoder.serving.connections` (uvicorn's h11 protocol with a read
deadline and a connection cap), and the event loop logs accept errors once a minute at most.
uvicorn's ``limit_concurrency`` is not used: it counts open connections, so slow clients holding
sockets would make it answer honest requests 503; the coding gate bounds the work instead.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from icdcoder.serving.settings import ServeSettings


def log_config(level: str = "INFO") -> dict[str, Any]:
    """uvicorn's logging setup plus the ``icdcoder`` loggers on the same stderr handler."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["default"]["fmt"] = "%(asctime)s %(levelprefix)s %(message)s"
    cfg["loggers"]["icdcoder"] = {"handlers": ["default"], "level": level, "propagate": False}
    cfg["loggers"]["uvicorn"]["level"] = level
    return cfg


def warm_pipeline(model_dir: str | Path, **kw: Any):
    """The pipeline of ``model_dir`` after coding one dummy note: the ontology loads now rather than
    during the first reviewer's request (about 4 s)."""
    from icdcoder.pipeline import CodingPipeline

    pipeline = CodingPipeline.from_dir(model_dir, **kw)
    pipeline.code_text("warm-up note")
    return pipeline


def load_app(model_dir: str | Path, settings: ServeSettings, rules: Any = None, to_version: int | None = None,
             trust_pickle: bool = False):
    """The app over the model in ``model_dir``; fails here, before any port is opened, on a bad folder
    (``trust_pickle``: see :meth:`icdcoder.coders.Coder.load`)."""
    from icdcoder.serving.app import create_app

    return create_app(warm_pipeline(model_dir, rules=rules, to_version=to_version, top_k=settings.top_k,
                                    trust_pickle=trust_pickle), settings)


def uvicorn_config(app: Any, settings: ServeSettings, **overrides: Any):
    """uvicorn's settings for ``app``: the guarded h11 protocol, the keep-alive timeout, our log setup."""
    import uvicorn

    from icdcoder.serving.connections import connection_limits, guarded_h11

    max_connections, backlog = connection_limits(settings.max_connections, settings.backlog)
    kw: dict[str, Any] = dict(host=settings.host, port=settings.port, log_config=log_config(), access_log=False,
                              server_header=False, timeout_graceful_shutdown=max(5, int(settings.timeout_s)),
                              timeout_keep_alive=settings.keep_alive_s, backlog=backlog,
                              http=guarded_h11(settings.read_timeout_s, max_connections))
    return uvicorn.Config(app, **(kw | overrides))


def make_server(config: Any):
    """A ``uvicorn.Server`` whose event loop logs accept errors (EMFILE...) once, then once a minute."""
    import asyncio

    import uvicorn

    from icdcoder.serving.connections import quiet_accept_errors

    class Server(uvicorn.Server):
        async def serve(self, sockets=None) -> None:
            quiet_accept_errors(asyncio.get_running_loop())
            await super().serve(sockets=sockets)

    return Server(config)


def run(app: Any, settings: ServeSettings) -> None:
    """Serve ``app`` until interrupted (Ctrl+C finishes running requests first); as ``uvicorn.run``, exit
    status 3 when the server could not start (the port is taken: uvicorn has logged why)."""
    server = make_server(uvicorn_config(app, settings))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)


def serve(model_dir: str | Path, settings: ServeSettings, rules: Any = None, to_version: int | None = None) -> None:
    """Load the model in ``model_dir`` and serve it until interrupted."""
    run(load_app(model_dir, settings, rules=rules, to_version=to_version), settings)
