"""The two records the ontology hands out; plain frozen dataclasses so they cost nothing to build."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from icdcoder.codes import CodeSystem
from icdcoder.errors import IcdcoderError


class MappingUnavailableError(IcdcoderError, NotImplementedError):
    """No packaged GEM covers the asked direction (e.g. ICD-10-PCS -> ICD-9-CM procedures)."""


@dataclass(frozen=True)
class CodeInfo:
    """Everything the packaged release says about one code; codes inside are canonical.

    ``excludes1``/``excludes2`` keep the note text (ICD-10-CM only); ``*_codes`` are the canonical
    codes named in those notes, ranges expanded to the codes of that level (``O10-O11`` -> ``O10``,
    ``O11``); a trailing ``-`` (``E10.-``) means the code and everything under it.
    Notes belong to this code only: notes of its ancestors apply as well.
    """

    code: str
    system: CodeSystem
    description: str | None
    billable: bool
    parent: str | None
    ancestors: list[str]
    children: list[str]
    chapter: tuple[str, str] | None
    inclusion_terms: list[str] = field(default_factory=list)
    excludes1: list[str] = field(default_factory=list)
    excludes2: list[str] = field(default_factory=list)
    excludes1_codes: list[str] = field(default_factory=list)
    excludes2_codes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["system"] = self.system.value
        d["chapter"] = list(self.chapter) if self.chapter else None
        return d


@dataclass(frozen=True)
class GemMapping:
    """One row of a CMS General Equivalence Mapping; a code with several rows maps one-to-many.

    ``combination`` rows must be used together: one target from each ``choice_list`` of the same
    ``scenario``. ``target`` is None exactly when ``no_map`` is set.
    """

    source: str
    target: str | None
    approximate: bool
    no_map: bool
    combination: bool
    scenario: int
    choice_list: int

    def to_dict(self) -> dict:
        return asdict(self)
