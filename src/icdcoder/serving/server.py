"""``icdcoder serve``: load the model once, then run uvicorn.

The request log is the guard's own line (method, path, status, duration, sizes, request id), so
uvicorn's access log is off: it would repeat the line with less in it. Bodies are never logged.
"""

from __future__ import annotations

import copy
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


def load_app(model_dir: str | Path, settings: ServeSettings, rules: Any = None, to_version: int | None = None):
    """The app over the model in ``model_dir``; fails here, before any port is opened, on a bad folder."""
    from icdcoder.serving.app import create_app

    return create_app(warm_pipeline(model_dir, rules=rules, to_version=to_version, top_k=settings.top_k), settings)


def run(app: Any, settings: ServeSettings) -> None:
    """Serve ``app`` until interrupted (Ctrl+C finishes running requests first)."""
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_config=log_config(), access_log=False,
                server_header=False, timeout_graceful_shutdown=max(5, int(settings.timeout_s)))


def serve(model_dir: str | Path, settings: ServeSettings, rules: Any = None, to_version: int | None = None) -> None:
    """Load the model in ``model_dir`` and serve it until interrupted."""
    run(load_app(model_dir, settings, rules=rules, to_version=to_version), settings)
