"""The :class:`Ontology`: one front over the four systems, each loaded on first use and then indexed.

Codes come in any spelling (``e119``, ``4280``) and go out canonical. Unknown or malformed codes give
None / False / [] rather than errors, so loaders can ask about anything they read.
"""

from __future__ import annotations

import re
import threading

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, normalize_code, parse_system
from icdcoder.ontology.excludes import codes_in_notes
from icdcoder.ontology.gem import Gem, load_gem
from icdcoder.ontology.model import CodeInfo, GemMapping, MappingUnavailableError
from icdcoder.ontology.sources import LOADERS
from icdcoder.ontology.tree import Tree

_PCS_PREFIX = re.compile(r"^[0-9A-HJ-NP-Z]{2,3}$")  # ICD-10-PCS pseudo-ancestors (body system, root op)
_Notes = tuple[list[str], list[str], list[str], list[str], list[str]]


class Ontology:
    """Use :func:`icdcoder.ontology.get_ontology` rather than building one: loaded data is per instance."""

    def __init__(self) -> None:
        self._trees: dict[CodeSystem, Tree] = {}
        self._gems: dict[tuple[CodeSystem, CodeSystem], Gem] = {}
        self._notes: dict[tuple[str, CodeSystem], tuple[tuple[str, ...], ...]] = {}
        self._haystacks: dict[CodeSystem, list[tuple[str, str, str]]] = {}
        self._lock = threading.RLock()

    # --- loading -------------------------------------------------------------------------------
    def _tree(self, system: CodeSystem) -> Tree:
        tree = self._trees.get(system)
        if tree is None:
            with self._lock:
                if system not in self._trees:
                    self._trees[system] = LOADERS[system]()
                tree = self._trees[system]
        return tree

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
        return (canon, sys_) if canon in self._tree(sys_).parents else None

    # --- single codes --------------------------------------------------------------------------
    def exists(self, code: str, system: str | CodeSystem) -> bool:
        """A real code (category or leaf) of the packaged release; ICD-10-PCS prefixes are not."""
        hit = self._resolve(code, system)
        return hit is not None and hit[0] in self._tree(hit[1]).real

    def is_billable(self, code: str, system: str | CodeSystem) -> bool:
        hit = self._resolve(code, system)
        return hit is not None and hit[0] in self._tree(hit[1]).billable

    def describe(self, code: str, system: str | CodeSystem | None = None) -> str | None:
        hit = self._resolve(code, system)
        return self._tree(hit[1]).descriptions.get(hit[0]) if hit else None

    def parent(self, code: str, system: str | CodeSystem) -> str | None:
        hit = self._resolve(code, system)
        return self._tree(hit[1]).parents.get(hit[0]) if hit else None

    def ancestors(self, code: str, system: str | CodeSystem) -> list[str]:
        """Nearest first; the chapter and section/block levels are left out (see :meth:`chapter`)."""
        hit = self._resolve(code, system)
        return self._tree(hit[1]).ancestors(hit[0]) if hit else []

    def children(self, code: str, system: str | CodeSystem) -> list[str]:
        hit = self._resolve(code, system)
        return list(self._tree(hit[1]).children.get(hit[0], [])) if hit else []

    def chapter(self, code: str, system: str | CodeSystem) -> tuple[str, str] | None:
        hit = self._resolve(code, system)
        return self._tree(hit[1]).chapter_of(hit[0]) if hit else None

    def lookup(self, code: str, system: str | CodeSystem | None = None) -> CodeInfo | None:
        hit = self._resolve(code, system)
        if hit is None:
            return None
        canon, sys_ = hit
        tree = self._tree(sys_)
        inclusion, ex1, ex2, ex1_codes, ex2_codes = self._notes_of(canon, sys_)
        return CodeInfo(
            code=canon, system=sys_, description=tree.descriptions.get(canon),
            billable=canon in tree.billable, parent=tree.parents.get(canon),
            ancestors=tree.ancestors(canon), children=list(tree.children.get(canon, [])),
            chapter=tree.chapter_of(canon), inclusion_terms=inclusion, excludes1=ex1, excludes2=ex2,
            excludes1_codes=ex1_codes, excludes2_codes=ex2_codes,
        )

    def _notes_of(self, code: str, system: CodeSystem) -> _Notes:
        """Parsed once per code and cached as tuples; handed out as fresh lists (CodeInfo is frozen,
        its lists are not, and a caller's edit must not reach the cache)."""
        tree = self._tree(system)
        if tree.notes is None:
            return [], [], [], [], []
        key = (code, system)
        if key not in self._notes:
            inclusion, ex1, ex2 = tree.notes(code)
            parsed = (inclusion, ex1, ex2, codes_in_notes(ex1, tree), codes_in_notes(ex2, tree))
            self._notes[key] = tuple(tuple(x) for x in parsed)
        inclusion, ex1, ex2, ex1_codes, ex2_codes = self._notes[key]
        return list(inclusion), list(ex1), list(ex2), list(ex1_codes), list(ex2_codes)

    # --- whole systems -------------------------------------------------------------------------
    def codes(self, system: str | CodeSystem, billable_only: bool = False) -> list[str]:
        tree = self._tree(parse_system(system))
        if billable_only:
            return [c for c in tree.sorted_codes if c in tree.billable]
        return list(tree.sorted_codes)

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

    def _haystack(self, system: CodeSystem) -> list[tuple[str, str, str]]:
        if system not in self._haystacks:
            tree = self._tree(system)
            rows = []
            for code in tree.sorted_codes:
                desc = (tree.descriptions.get(code) or "").lower()
                extra = " | ".join(tree.notes(code)[0]).lower() if tree.notes else ""
                rows.append((code, desc, f"{desc} | {extra}" if extra else desc))
            self._haystacks[system] = rows
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
        key = (source, target)
        if key not in self._gems:
            with self._lock:
                if key not in self._gems:
                    self._gems[key] = load_gem(source, target)
        try:
            canon = normalize_code(code, source)
        except CodeFormatError:
            return []
        return list(self._gems[key].get(canon, []))
