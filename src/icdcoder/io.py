"""Small file helpers shared by every writer: atomic files and folders, JSONL reading with exact errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from icdcoder.errors import DataError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write ``path`` through a temporary file in the same folder, renamed into place on success.

    An exception (or a kill) leaves the old file, or nothing, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any other file
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, *, marker: str = "manifest.json") -> Iterator[Path]:
    """Build a folder in a hidden sibling staging folder and swap it in as ``out_dir`` on success.

    An existing ``out_dir`` is replaced only if it holds ``marker`` (a folder icdcoder wrote) or is
    empty, so a mistyped ``--out`` never deletes the user's files.
    """
    out = Path(out_dir).absolute()
    if out.exists():
        if not out.is_dir():
            raise DataError("output path exists and is not a folder", path=out)
        if any(out.iterdir()) and not (out / marker).exists():
            raise DataError(f"output folder is not empty and has no {marker}; refusing to replace it", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    with open(path, "rb") as fh:
        yield from iter_jsonl_lines(fh, path)


def iter_jsonl_lines(lines: Iterable[bytes], path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`iter_jsonl` over any byte lines (e.g. ``sys.stdin.buffer``); ``path`` names them in errors."""
    for lineno, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})",
                            path=path, line=lineno) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        yield lineno, obj


def read_text_utf8(path: str | Path) -> str:
    """Read a whole text file, with an error that names the file and line when it is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte offset {e.start})", path=path, line=line) from None
