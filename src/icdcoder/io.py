"""Small file helpers shared by every writer: atomic files and folders, JSONL reading with exact errors."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable, Iterator

from filelock import FileLock, Timeout

from icdcoder.errors import DataError
from icdcoder.text.validate import check_note_text

BOM = "\ufeff"
MAX_JSON_DEPTH = 100  # far beyond any record icdcoder reads; json itself fails near 1000, unpredictably
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into a JSON string


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
    empty, so a mistyped ``--out`` never deletes the user's files. One writer at a time: a second one
    waits on a lock file beside the folder, so two writers cannot interleave between the check and the
    swap. SIGTERM removes the staging folder on the way out; the staging folders a ``kill -9`` leaves
    are removed by the next writer of the same folder.
    """
    out = Path(out_dir).absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output's parent folder: {e.strerror or e}", path=out.parent) from None
    with _writer_lock(out), _sigterm_as_exit() as sigterm:
        _check_replaceable(out, marker)
        _remove_stale(out)
        stage = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            stage.mkdir()
            yield stage
            with sigterm.deferred():  # a SIGTERM between the two renames would leave no folder at all
                _swap(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def _check_replaceable(out: Path, marker: str) -> None:
    if out.exists():
        if not out.is_dir():
            raise DataError("output path exists and is not a folder", path=out)
        if any(out.iterdir()) and not (out / marker).exists():
            raise DataError(f"output folder is not empty and has no {marker}; refusing to replace it", path=out)


def _swap(stage: Path, out: Path) -> None:
    """Put ``stage`` in the place of ``out``; if that fails half way, ``out`` is put back."""
    old = None
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(stage, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[None]:
    """Hold ``.NAME.write.lock`` beside ``out``. The file stays afterwards: deleting a lock file races
    the writers waiting on it."""
    lock = FileLock(out.parent / f".{out.name}.write.lock")
    try:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            print(f"waiting for another writer of {out} to finish", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as e:  # a read-only folder, a file system without locks
        raise DataError(f"cannot lock the output folder: {e.strerror or e}", path=out) from None
    try:
        yield
    finally:
        lock.release()


_STAGED = r"(tmp|old)-(\d+)-[0-9a-f]{8}"  # what atomic_dir calls its folders, after ".NAME."


def _remove_stale(out: Path) -> None:
    """Remove the staging (and swapped-out) folders of writers of ``out`` that died (kill -9).

    Called under the writer lock, so no live writer of ``out`` is staging; the pid check also spares
    one that takes no lock (an older icdcoder). A swapped-out ``old`` folder is kept while ``out`` is
    missing: it is then the only complete copy.
    """
    prefix = f".{out.name}."
    for path in out.parent.glob(glob.escape(prefix) + "*-*"):
        m = re.fullmatch(_STAGED, path.name[len(prefix):])
        if m is None or path.is_symlink() or not path.is_dir() or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists():
            continue
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # on Windows os.kill(pid, 0) sends CTRL_C_EVENT: assume alive, keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


class _SigtermAsExit:
    """SIGTERM raises ``SystemExit(143)`` (so ``except``/``finally`` clean up), except inside
    :meth:`deferred`, which raises it at its end instead."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.deferring:
            self.pending = signum
        else:
            raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise SystemExit(128 + self.pending)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[_SigtermAsExit]:
    """Install :class:`_SigtermAsExit` while a folder is staged: SIGTERM's default action kills the
    process without any cleanup. Only in the main thread (the only one that can set handlers) and only
    over the default action: a handler someone else set is theirs."""
    state = _SigtermAsExit()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield state
        return
    signal.signal(signal.SIGTERM, state.handle)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def open_input(path: str | Path) -> BinaryIO:
    """Open an input file for binary reading; a missing file, a folder or no permission is a DataError."""
    path = Path(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a file", path=path) from None
    except OSError as e:
        raise DataError(f"cannot open: {e.strerror or e}", path=path) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; errors name the file and line."""
    path = Path(path)
    with open_input(path) as fh:
        yield from iter_jsonl_lines(fh, path)


def iter_jsonl_lines(lines: Iterable[bytes], path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`iter_jsonl` over any byte lines (e.g. ``sys.stdin.buffer``); ``path`` names them in errors.

    A BOM before the first line is skipped. Objects nested more than :data:`MAX_JSON_DEPTH` levels
    deep, and strings holding a lone surrogate (``"\\ud800"``), are errors: json accepts both, but
    they fail later, far from the line that caused them.
    """
    for lineno, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})",
                            path=path, line=lineno) from None
        if lineno == 1:
            line = line.removeprefix(BOM)
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno) from None
        except RecursionError:
            raise DataError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        if _SURROGATE_ESCAPE.search(line) or line.count("[") + line.count("{") > MAX_JSON_DEPTH:
            _check_json_values(obj, path, lineno)
        yield lineno, obj


def _check_json_values(obj: dict[str, Any], path: str | Path, line: int) -> None:
    """Walk ``obj`` (without recursion) for lone surrogates and nesting beyond :data:`MAX_JSON_DEPTH`;
    an error names the top-level field they are under."""
    for key, value in obj.items():
        field = key.encode("utf-8", "backslashreplace").decode("utf-8")  # printable even when broken
        pending = [(key, 2), (value, 2)]  # the object itself is level 1
        while pending:
            item, depth = pending.pop()
            if depth > MAX_JSON_DEPTH:
                raise DataError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep", path=path, line=line,
                                field=field)
            if isinstance(item, str):
                check_note_text(item, field, path=path, line=line)
            elif isinstance(item, dict):
                pending.extend((k, depth + 1) for k in item)
                pending.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list):
                pending.extend((v, depth + 1) for v in item)


def read_text_utf8(path: str | Path, *, strip_bom: bool = False) -> str:
    """Read a whole text file, with an error that names the file and line when it is not UTF-8.

    ``strip_bom`` drops a leading BOM (off by default: CodiEsp's evidence offsets count every character
    of its text files)."""
    path = Path(path)
    with open_input(path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte offset {e.start})", path=path, line=line) from None
    return text.removeprefix(BOM) if strip_bom else text
