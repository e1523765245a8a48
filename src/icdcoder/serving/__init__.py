"""``icdcoder serve``: the coding pipeline behind an HTTP API and a review page for professional coders.

``settings`` has no web dependency (the CLI checks options before importing anything heavy);
``app.create_app`` and ``server.serve`` need the ``serve`` extra (fastapi, uvicorn).
"""

from icdcoder.serving.settings import ServeSettings

__all__ = ["ServeSettings"]
