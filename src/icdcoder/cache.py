"""Where icdcoder keeps files it can rebuild (the ontology index, later downloaded models).

``$ICDCODER_CACHE`` if set, else ``$XDG_CACHE_HOME/icdcoder``, else ``~/.cache/icdcoder``. Nothing in
it is precious: deleting the folder only costs a rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "ICDCODER_CACHE"


def cache_dir(sub: str | None = None) -> Path:
    """The cache folder (or its subfolder ``sub``); not created here, callers create what they write."""
    root = os.environ.get(ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "icdcoder"
    return base / sub if sub else base
