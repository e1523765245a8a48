"""Canonical codes named in ICD-10-CM Excludes notes, for rules such as "never code both".

Notes read ``type 1 diabetes mellitus (E10.-)`` or ``... (O10-O11, O13-O16)``. Each comma-separated
item inside parentheses that is a code, a code with a trailing ``-``/``.-`` (the code and its
subcodes: kept as the code itself) or a range of codes is taken; ranges become the real codes of
the level of their first end. Items with wording (``I69. with final characters -23``) are skipped
rather than guessed.
"""

from __future__ import annotations

import re

from icdcoder.ontology.tree import Tree

_CODE = r"[A-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?"
_ITEM = re.compile(rf"({_CODE})\.?-?(?:\s*-\s*({_CODE})\.?-?)?")
_PARENS = re.compile(r"\(([^()]*)\)")


def codes_in_notes(notes: list[str], tree: Tree) -> list[str]:
    out: dict[str, None] = {}  # ordered set
    for note in notes:
        for inner in _PARENS.findall(note):
            for item in inner.split(","):
                m = _ITEM.fullmatch(item.strip())
                if not m:
                    continue
                lo, hi = m.groups()
                for code in tree.code_range(lo, hi) if hi else [lo]:
                    out[code] = None
    return list(out)
