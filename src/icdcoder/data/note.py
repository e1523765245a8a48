"""The one data model: a Note (text, codes, evidence spans) and a Dataset of named splits."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from icdcoder.codes import CodeSystem, normalize_code, parse_system
from icdcoder.errors import DataError
from icdcoder.text.validate import check_note_text, is_blank


class Span(BaseModel):
    """Evidence for one code: characters ``text[start:end]`` of the note it belongs to."""

    model_config = ConfigDict(frozen=True)

    code: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Span":
        if self.end <= self.start:
            raise ValueError(f"span end ({self.end}) must be greater than start ({self.start})")
        return self


SPAN_ID_PREFIX = "span:"  # the id prefix of span -> code examples made into notes (training.mixing)


class Note(BaseModel):
    """One clinical note and its gold codes.

    ``codes`` are canonical strings (see :mod:`icdcoder.codes`), unique, in source order;
    ``code_systems`` names the system of every code in ``codes``; ``spans`` point into ``text``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str
    codes: list[str] = Field(default_factory=list)
    code_systems: dict[str, CodeSystem] = Field(default_factory=dict)
    spans: list[Span] = Field(default_factory=list)
    admission_time: str | None = None  # ISO 8601, used by time-ordered splits
    patient_id: str | None = None      # used by patient-level splits
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("text")
    @classmethod
    def _valid_text(cls, v: str) -> str:
        """Not blank (invisible characters count as blank) and encodable: a lone surrogate would only
        fail when the note or its evidence is written out."""
        if is_blank(v):
            raise ValueError("note text is empty")
        try:
            return check_note_text(v)
        except DataError as e:
            raise ValueError(e.message) from None

    @model_validator(mode="after")
    def _consistent(self) -> "Note":
        if len(set(self.codes)) != len(self.codes):
            dup = [c for c, n in Counter(self.codes).items() if n > 1]
            raise ValueError(f"duplicate codes {dup}")
        missing = [c for c in self.codes if c not in self.code_systems]
        if missing:
            raise ValueError(f"code_systems lacks the system of {missing}")
        extra = [c for c in self.code_systems if c not in set(self.codes)]
        if extra:
            raise ValueError(f"code_systems names codes that are not in codes: {extra}")
        for c, s in self.code_systems.items():
            if normalize_code(c, s) != c:
                raise ValueError(f"code {c!r} is not in canonical {s.value} form ({normalize_code(c, s)!r})")
        n = len(self.text)
        for sp in self.spans:
            if sp.code not in self.code_systems:
                raise ValueError(f"span {sp.start}-{sp.end} is evidence for {sp.code}, which is not among the codes")
            if sp.end > n:
                raise ValueError(f"span {sp.start}-{sp.end} of {sp.code} runs past the end of the text ({n} chars)")
        return self

    @classmethod
    def build(cls, id: str, text: str, codes: Iterable[tuple[str, str | CodeSystem]], **kw: Any) -> "Note":
        """Make a note from raw ``(code, system)`` pairs: normalised, de-duplicated, order kept."""
        out: dict[str, CodeSystem] = {}
        for raw, system in codes:
            sys_ = parse_system(system)
            out.setdefault(normalize_code(raw, sys_), sys_)
        return cls(id=id, text=text, codes=list(out), code_systems=out, **kw)

    def evidence_text(self, span: Span) -> str:
        return self.text[span.start:span.end]

    def to_record(self) -> dict[str, Any]:
        """Plain dict for JSONL: empty optional fields are left out."""
        rec: dict[str, Any] = {"id": self.id, "text": self.text, "codes": list(self.codes),
                               "code_systems": {c: s.value for c, s in self.code_systems.items()}}
        if self.spans:
            rec["spans"] = [s.model_dump() for s in self.spans]
        if self.admission_time is not None:
            rec["admission_time"] = self.admission_time
        if self.patient_id is not None:
            rec["patient_id"] = self.patient_id
        if self.metadata:
            rec["metadata"] = self.metadata
        return rec


def first_error(e: ValidationError) -> tuple[str, str]:
    """``(field path, message)`` of a pydantic error, without pydantic's "Value error, " prefix."""
    err = e.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    return ".".join(str(p) for p in err["loc"]), msg


SPLIT_ALIASES = {"dev": "val", "valid": "val", "validation": "val"}


def split_order(name: str) -> tuple[int, str]:
    """Sort key that puts train, val, test first, in that order, then any other split by name."""
    order = {"train": 0, "val": 1, "test": 2}
    return order.get(name, 3), name


def canonical_split(name: str) -> str:
    """``dev``/``valid``/``validation`` are all called ``val`` inside icdcoder."""
    return SPLIT_ALIASES.get(name.lower(), name.lower())


_SPLIT_NAME = re.compile(r"[a-z0-9_-]{1,64}")


def check_split(name: Any, *, path: str | Path | None = None, line: int | None = None,
                field: str | None = None) -> str:
    """The canonical name of a split that comes from data (or the command line), checked before it
    becomes a file name: lower-case letters, digits, ``_`` and ``-``, at most 64 of them, so no
    value ("../x", "/tmp/x", NUL) can name a path outside the output folder."""
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise DataError(f"split must be a string, got {type(name).__name__}", path=path, line=line, field=field)
    split = canonical_split(str(name))
    if not _SPLIT_NAME.fullmatch(split):
        raise DataError(f"split name {split[:40]!r} is not allowed: use 1-64 of a-z, 0-9, '_' and '-'",
                        path=path, line=line, field=field)
    return split


@dataclass
class Dataset:
    """Named splits of notes (``train``, ``val``, ``test``), loaded in memory."""

    splits: dict[str, list[Note]]
    name: str = "dataset"
    manifest: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> list[Note]:
        key = canonical_split(split)
        if key not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {split!r} (has {sorted(self.splits)})")
        return self.splits[key]

    def __contains__(self, split: str) -> bool:
        return canonical_split(split) in self.splits

    def __iter__(self) -> Iterator[tuple[str, Note]]:
        for split, notes in self.splits.items():
            for note in notes:
                yield split, note

    def code_counts(self, split: str = "train") -> Counter:
        return Counter(c for n in self[split] for c in n.codes)

    def label_space(self) -> list[str]:
        """Every code of every split, sorted: the default label space of evaluation."""
        return sorted({c for notes in self.splits.values() for n in notes for c in n.codes})


def is_span_note(note: Note) -> bool:
    """A span -> code training example (code-centric mixing), not a document."""
    return note.id.startswith(SPAN_ID_PREFIX)
