"""The :class:`Ontology`: one front over the four systems, answered from the ontology index.

Every answer comes from the SQLite file of :mod:`~icdcoder.ontology.index` (built from the packages
on first use, then opened read-only): point queries are indexed lookups, cached per code; whole-system
calls (``codes``, ``search``) read the rows they need once. Codes come in any spelling (``e119``,
``4280``) and go out canonical. Unknown or malformed codes give None / False / [] rather than errors,
so loaders can ask about anything they read.
"""

from __future__ import annotations

import json
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, normalize_code, parse_system
from icdcoder.ontology.index import OntologyIndex, direction
from icdcoder.ontology.model import CodeInfo, GemMapping, MappingUnavailableError

_PCS_PREFIX = re.compile(r"^[0-9A-HJ-NP-Z]{2,3}$")  # ICD-10-PCS pseudo-ancestors (body system, root op)
_Notes = tuple[list[str], list[str], list[str], list[str], list[str]]
_NO_NOTES: tuple[tuple[str, ...], ...] = ((), (), (), (), ())
_CACHE = 1 << 16  # codes remembered per kind of answer: a corpus asks about a few thousand, again and again


class _Node(NamedTuple):
    description: str | None
    parent: str | None
    real: bool
    billable: bool
    chapter: tuple[str, str] | None


class CodeRecord(NamedTuple):
    """One real code as whole-system readers need it (:meth:`Ontology.records`)."""

    code: str
    description: str | None
    parent: str | None
    billable: bool
    inclusion_terms: tuple[str, ...]
    chapter: tuple[str, str] | None


class Ontology:
    """Use :func:`icdcoder.ontology.get_ontology` rather than building one: caches are per instance.

    ``index_path``: an index file to use (built there when missing or stale) instead of the one in
    the cache folder (:func:`icdcoder.cache.cache_dir`)."""

    def __init__(self, index_path: str | Path | None = None) -> None:
        self.index = OntologyIndex(index_path)
        self._lock = threading.RLock()
        self._codes: dict[tuple[CodeSystem, bool], tuple[str, ...]] = {}
        self._haystacks: dict[CodeSystem, list[tuple[str, str, str]]] = {}
        self._node = lru_cache(maxsize=_CACHE)(self._fetch_node)
        self._children = lru_cache(maxsize=_CACHE)(self._fetch_children)
        self._notes = lru_cache(maxsize=_CACHE)(self._fetch_notes)
        self._gem = lru_cache(maxsize=_CACHE)(self._fetch_gem)

    # --- index queries (cached) ----------------------------------------------------------------
    def _fetch_node(self, code: str, system: CodeSystem) -> _Node | None:
        rows = self.index.query(
            "SELECT n.description, n.parent, n.real, n.billable, c.chapter, c.title FROM nodes n "
            "LEFT JOIN chapters c ON c.id = n.chapter WHERE n.system = ? AND n.code = ?", (system.value, code))
        if not rows:
            return None
        desc, parent, real, billable, chapter, title = rows[0]
        return _Node(desc, parent, bool(real), bool(billable), (chapter, title) if chapter is not None else None)

    def _fetch_children(self, code: str, system: CodeSystem) -> tuple[str, ...]:
        rows = self.index.query("SELECT code FROM nodes WHERE system = ? AND parent = ? ORDER BY code",
                                (system.value, code))
        return tuple(r[0] for r in rows)

    def _fetch_notes(self, code: str, system: CodeSystem) -> tuple[tuple[str, ...], ...]:
        rows = self.index.query("SELECT inclusion, excludes1, excludes2, excludes1_codes, excludes2_codes "
                                "FROM notes WHERE system = ? AND code = ?", (system.value, code))
        return tuple(tuple(json.loads(x)) for x in rows[0]) if rows else _NO_NOTES

    def _fetch_gem(self, code: str, source: CodeSystem, target: CodeSystem) -> tuple[GemMapping, ...]:
        rows = self.index.query(
            "SELECT target, approximate, no_map, combination, scenario, choice_list FROM gem "
            "WHERE direction = ? AND source = ? ORDER BY seq", (direction(source, target), code))
        return tuple(GemMapping(source=code, target=t, approximate=bool(a), no_map=bool(n), combination=bool(c),
                                scenario=s, choice_list=cl) for t, a, n, c, s, cl in rows)

    def _resolve(self, code: str, system: str | CodeSystem | None) -> tuple[str, CodeSystem] | None:
        """Canonical node of the system's hierarchy, or None when malformed or unknown."""
        try:
            sys_ = parse_system(system) if system is not None else infer_system(code)
            canon = normalize_code(code, sys_)
        except CodeFormatError:
            if system is None or parse_system(system) is not CodeSystem.ICD10PCS:
                return None
            sys_, canon = CodeSystem.ICD10PCS, str(code).strip().upper()
            if not _PCS_PREFIX.match(canon):
                return None
        return (canon, sys_) if self._node(canon, sys_) is not None else None

    def _ancestors(self, code: str, system: CodeSystem) -> list[str]:
        out = []
        node = self._node(code, system)
        while node is not None and node.parent is not None:
            out.append(node.parent)
            node = self._node(node.parent, system)
        return out

    # --- single codes --------------------------------------------------------------------------
    def exists(self, code: str, system: str | CodeSystem) -> bool:
        """A real code (category or leaf) of the packaged release; ICD-10-PCS prefixes are not."""
        hit = self._resolve(code, system)
        return hit is not None and self._node(*hit).real

    def is_billable(self, code: str, system: str | CodeSystem) -> bool:
        hit = self._resolve(code, system)
        return hit is not None and self._node(*hit).billable

    def describe(self, code: str, system: str | CodeSystem | None = None) -> str | None:
        hit = self._resolve(code, system)
        return self._node(*hit).description if hit else None

    def parent(self, code: str, system: str | CodeSystem) -> str | None:
        hit = self._resolve(code, system)
        return self._node(*hit).parent if hit else None

    def ancestors(self, code: str, system: str | CodeSystem) -> list[str]:
        """Nearest first; the chapter and section/block levels are left out (see :meth:`chapter`)."""
        hit = self._resolve(code, system)
        return self._ancestors(*hit) if hit else []

    def children(self, code: str, system: str | CodeSystem) -> list[str]:
        hit = self._resolve(code, system)
        return list(self._children(*hit)) if hit else []

    def chapter(self, code: str, system: str | CodeSystem) -> tuple[str, str] | None:
        hit = self._resolve(code, system)
        return self._node(*hit).chapter if hit else None

    def lookup(self, code: str, system: str | CodeSystem | None = None) -> CodeInfo | None:
        hit = self._resolve(code, system)
        if hit is None:
            return None
        canon, sys_ = hit
        node = self._node(canon, sys_)
        inclusion, ex1, ex2, ex1_codes, ex2_codes = self._notes_of(canon, sys_)
        return CodeInfo(
            code=canon, system=sys_, description=node.description, billable=node.billable,
            parent=node.parent, ancestors=self._ancestors(canon, sys_), children=list(self._children(canon, sys_)),
            chapter=node.chapter, inclusion_terms=inclusion, excludes1=ex1, excludes2=ex2,
            excludes1_codes=ex1_codes, excludes2_codes=ex2_codes,
        )

    def _notes_of(self, code: str, system: CodeSystem) -> _Notes:
        """Inclusion terms, Excludes1/2 notes and the codes they name (parsed when the index was built),
        handed out as fresh lists (CodeInfo is frozen, its lists are not, and a caller's edit must not
        reach the cache)."""
        inclusion, ex1, ex2, ex1_codes, ex2_codes = self._notes(code, system)
        return list(inclusion), list(ex1), list(ex2), list(ex1_codes), list(ex2_codes)

    # --- whole systems -------------------------------------------------------------------------
    def codes(self, system: str | CodeSystem, billable_only: bool = False) -> list[str]:
        """Real codes of the system, sorted; only the billable ones when asked."""
        key = (parse_system(system), billable_only)
        if key not in self._codes:
            rows = self.index.query("SELECT code FROM nodes WHERE system = ? AND real = 1"
                                    + (" AND billable = 1" if billable_only else "") + " ORDER BY code",
                                    (key[0].value,))
            self._codes[key] = tuple(r[0] for r in rows)
        return list(self._codes[key])

    def search(self, text: str, system: str | CodeSystem | None = None, limit: int = 20) -> list[CodeInfo]:
        """Codes whose description (or ICD-10-CM inclusion term) contains every word of ``text``.

        Ranked: the whole phrase in the description, then all words in the description, then matches
        through inclusion terms only; ties by system then code.
        """
        words = text.lower().split()
        if not words:
            return []
        phrase = " ".join(words)
        systems = [parse_system(system)] if system is not None else list(CodeSystem)
        hits = []
        for rank_sys, sys_ in enumerate(systems):
            for code, desc, full in self._haystack(sys_):
                if all(w in full for w in words):
                    rank = 0 if phrase in desc else 1 if all(w in desc for w in words) else 2
                    hits.append((rank, rank_sys, code, sys_))
        hits.sort()
        return [self.lookup(code, sys_) for _, _, code, sys_ in hits[:limit]]  # type: ignore[misc]

    def records(self, system: str | CodeSystem) -> list[CodeRecord]:
        """Every real code of a system, sorted, with description, parent, billable flag, inclusion terms
        and chapter, read in one query (for readers of the whole system: search, dictionary builders)."""
        rows = self.index.query(
            "SELECT n.code, n.description, n.parent, n.billable, t.inclusion, c.chapter, c.title FROM nodes n "
            "LEFT JOIN notes t ON t.system = n.system AND t.code = n.code LEFT JOIN chapters c ON c.id = n.chapter "
            "WHERE n.system = ? AND n.real = 1 ORDER BY n.code", (parse_system(system).value,))
        return [CodeRecord(code, desc, parent, bool(billable), tuple(json.loads(inclusion)) if inclusion else (),
                           (chapter, title) if chapter is not None else None)
                for code, desc, parent, billable, inclusion, chapter, title in rows]

    def _haystack(self, system: CodeSystem) -> list[tuple[str, str, str]]:
        if system not in self._haystacks:
            out = []
            for r in self.records(system):
                desc = (r.description or "").lower()
                extra = " | ".join(r.inclusion_terms).lower()
                out.append((r.code, desc, f"{desc} | {extra}" if extra else desc))
            with self._lock:
                self._haystacks.setdefault(system, out)
        return self._haystacks[system]

    # --- GEMs ----------------------------------------------------------------------------------
    def map_9_to_10(self, code: str, system: str | CodeSystem) -> list[GemMapping]:
        """GEM rows of an ICD-9-CM diagnosis or procedure code in the GEM's order; [] when it has none."""
        source = parse_system(system)
        if source.version != 9:
            raise MappingUnavailableError(f"map_9_to_10 takes an ICD-9 system, not {source.value}")
        target = CodeSystem.ICD10PCS if source.is_procedure else CodeSystem.ICD10CM
        return self._map(code, source, target)

    def map_10_to_9(self, code: str, system: str | CodeSystem) -> list[GemMapping]:
        source = parse_system(system)
        if source.version != 10:
            raise MappingUnavailableError(f"map_10_to_9 takes an ICD-10 system, not {source.value}")
        target = CodeSystem.ICD9PCS if source.is_procedure else CodeSystem.ICD9CM
        return self._map(code, source, target)

    def _map(self, code: str, source: CodeSystem, target: CodeSystem) -> list[GemMapping]:
        from icdcoder.ontology.gem import DIRECTIONS, unavailable

        if (source, target) not in DIRECTIONS:
            unavailable(source, target)
        missing = self.index.meta.get(f"gem_unavailable:{direction(source, target)}")
        if missing is not None:  # the package that ships this GEM was not installed when the index was built
            raise MappingUnavailableError(missing)
        try:
            canon = normalize_code(code, source)
        except CodeFormatError:
            return []
        return list(self._gem(canon, source, target))
