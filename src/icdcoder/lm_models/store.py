"""The cache of prepared models: one folder per name, checked against its manifest before every use.

``<cache>/<name>/`` holds an ordinary transformers folder (``config.json``, ``model.safetensors``,
tokenizer files, ``chat_template.jinja``) and ``manifest.json``, written last, with the size and
sha256 of every other file and where the weights came from. The folder is built in a staging
sibling and swapped in (:func:`icdcoder.io.atomic_dir`), so a kill leaves the old folder or none.

Two checks: the quick one (every use) compares the file list and sizes with the manifest, which
catches a truncated, missing or extra file and a manifest edited by hand or from another source; the
full one (``prepare``, ``verify``) also recomputes every sha256 (about a second per 500 MB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from icdcoder.errors import IcdcoderError
from icdcoder.io import file_sha256, write_json

MANIFEST = "manifest.json"
FORMAT = 1
# what a prepare writes; a folder without a manifest holding only such files is a partial cache entry
_OURS = {".json", ".safetensors", ".jinja", ".txt", ".model", ".html", ".md"}


def models_dir(cache: str | Path | None = None) -> Path:
    """``cache`` if given, else ``cache_dir("models")`` ($ICDCODER_CACHE/models or the XDG cache)."""
    from icdcoder.cache import cache_dir

    return Path(cache).expanduser() if cache is not None else cache_dir("models")


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    return models_dir(cache) / name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def write_manifest(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Record every file of ``folder`` (size and sha256) with ``info``; the manifest is written last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {"format": FORMAT, **info, "files": files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def problems(folder: Path, *, name: str, sources: dict[str, str | None], full: bool = False) -> list[str]:
    """Why ``folder`` is not a usable prepared copy of ``name`` built from ``sources`` (the pinned
    package versions); empty when it is."""
    if not folder.is_dir():
        return ["not prepared"]
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{MANIFEST} is missing or unreadable"]
    if manifest.get("format") != FORMAT or manifest.get("name") != name:
        return [f"{MANIFEST} is of another format or model"]
    built_from = (manifest.get("source") or {}).get("packages", {})
    if any(v is not None and built_from.get(k) != v for k, v in sources.items()):
        return [f"built from {built_from}, the registry now pins {sources}"]
    listed = manifest.get("files")
    if not isinstance(listed, dict) or "config.json" not in listed:
        return [f"{MANIFEST} lists no model files"]
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    issues = [f"{rel}: missing" for rel in sorted(set(listed) - found)]
    issues += [f"{rel}: not in {MANIFEST}" for rel in sorted(found - set(listed))]
    for rel in sorted(set(listed) & found):
        want, path = listed[rel], folder / rel
        if not isinstance(want, dict) or path.stat().st_size != want.get("size"):
            issues.append(f"{rel}: size {path.stat().st_size} differs from the manifest's {want.get('size')}"
                          if isinstance(want, dict) else f"{rel}: bad manifest entry")
        elif full and file_sha256(path) != want.get("sha256"):
            issues.append(f"{rel}: sha256 differs from the manifest")
    return issues


def clear_partial(folder: Path) -> None:
    """Remove a cache entry without a manifest (an interrupted copy, a deleted manifest) so that
    :func:`icdcoder.io.atomic_dir` may replace it; a folder holding anything else is refused."""
    if not folder.is_dir() or (folder / MANIFEST).exists():
        return
    foreign = [p for p in folder.rglob("*") if p.is_file() and p.suffix not in _OURS]
    if foreign:
        raise IcdcoderError(f"{folder} is not a prepared model (it holds {foreign[0].name}); move it away")
    shutil.rmtree(folder)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One preparer of ``folder`` at a time (others wait, then find it ready); no-op without fcntl."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
