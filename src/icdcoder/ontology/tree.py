"""One code system's hierarchy as plain dicts, as the loaders read it; the index builder stores it."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

Chapter = tuple[str, str]


@dataclass
class Tree:
    """``parents`` holds every node (real codes and, for ICD-10-PCS, pseudo-ancestors).

    ``parents[c]`` is None at the top (the chapter/section/block level is not a node: it is what
    ``chapter_of`` returns). ``real`` is the set of codes of the release; ``notes`` gives
    (inclusion terms, excludes1, excludes2) where the source has them.
    """

    descriptions: dict[str, str | None]
    parents: dict[str, str | None]
    real: frozenset[str]
    billable: frozenset[str]
    chapter_of: Callable[[str], Chapter | None]
    notes: Callable[[str], tuple[list[str], list[str], list[str]]] | None = None
    children: dict[str, list[str]] = field(init=False)
    sorted_codes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        kids: dict[str, list[str]] = {}
        for code, parent in self.parents.items():
            if parent is not None:
                kids.setdefault(parent, []).append(code)
        self.children = {k: sorted(v) for k, v in kids.items()}
        self.sorted_codes = sorted(self.real)

    def ancestors(self, code: str) -> list[str]:
        out = []
        p = self.parents.get(code)
        while p is not None:
            out.append(p)
            p = self.parents.get(p)
        return out

    def code_range(self, lo: str, hi: str) -> list[str]:
        """Real codes between ``lo`` and ``hi`` at the level (length) of ``lo``: ``O10-O11`` style ranges."""
        i, j = bisect_left(self.sorted_codes, lo), bisect_right(self.sorted_codes, hi)
        return [c for c in self.sorted_codes[i:j] if len(c) == len(lo)]


def prefix_parents(codes: set[str], levels: tuple[int, ...]) -> dict[str, str | None]:
    """Parent map for systems whose hierarchy is the code's prefix (ICD-9 procedures, ICD-10-PCS).

    ``levels`` are the lengths of the canonical prefixes that are nodes, shortest first
    (``38.93`` -> ``38.9`` -> ``38`` is levels (2, 4)).
    """
    parents: dict[str, str | None] = {}
    for code in codes:
        chain = [code[:n] for n in levels if n < len(code)] + [code]
        parents.setdefault(chain[0], None)
        for parent, child in zip(chain, chain[1:]):
            parents[child] = parent
    return parents
