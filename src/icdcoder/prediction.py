"""The one Prediction type every coder returns, and its JSONL file format.

One note per line::

    {"id": "n1", "codes": [{"code": "I50.9", "score": 0.93, "evidence": [{"start": 10, "end": 23, "text": "heart failure"}]}]}

Codes are ranked by score, highest first. ``edits`` (present only when some fired) record what the
rule engine or a GEM translation changed: which rule, which codes, why. A coder without scores (a generative LM that only writes
a code set) gives each code score 1.0 and sets ``"scored": false`` so ranking metrics know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from icdcoder.data.note import first_error
from icdcoder.errors import DataError
from icdcoder.io import atomic_write, iter_jsonl


class Evidence(BaseModel):
    """Characters ``text[start:end]`` of the note that support a code."""

    model_config = ConfigDict(frozen=True)

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str = ""


class ScoredCode(BaseModel):
    """One predicted code. ``flags`` say what a checker noticed, e.g. ``evidence_not_found`` (the model's
    quote is not in the note), ``evidence_fuzzy`` (found only approximately), ``evidence_missing``."""

    model_config = ConfigDict(frozen=True)

    code: str = Field(min_length=1)
    score: float
    evidence: list[Evidence] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)


class RuleEdit(BaseModel):
    """One change made after the coder: ``codes`` are those it touched, in an order fixed per action.

    ``drop``: [dropped]; ``replace``: [old, new, ...]; ``drop`` in favour of another code (parent and
    child, Excludes1): [dropped, kept]; ``flag``: [flagged].
    """

    model_config = ConfigDict(frozen=True)

    rule: str = Field(min_length=1)
    action: Literal["drop", "replace", "flag"]
    codes: list[str]
    reason: str = ""


class Prediction(BaseModel):
    """A coder's answer for one note: codes ranked by score, each with its evidence."""

    id: str = Field(min_length=1)
    codes: list[ScoredCode] = Field(default_factory=list)
    scored: bool = True
    edits: list[RuleEdit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ranked_unique(self) -> "Prediction":
        seen = set()
        for c in self.codes:
            if c.code in seen:
                raise ValueError(f"code {c.code!r} appears twice")
            seen.add(c.code)
        self.codes.sort(key=lambda c: -c.score)  # stable: ties keep the coder's order
        return self

    @classmethod
    def from_scores(cls, id: str, scores: dict[str, float], evidence: dict[str, list[Evidence]] | None = None,
                    top_k: int | None = None) -> "Prediction":
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:top_k]
        ev = evidence or {}
        return cls(id=id, codes=[ScoredCode(code=c, score=float(s), evidence=ev.get(c, [])) for c, s in ranked])

    @classmethod
    def from_code_set(cls, id: str, codes: Iterable[str]) -> "Prediction":
        """A code set without scores: each code gets 1.0, and the prediction says it is unscored."""
        return cls(id=id, codes=[ScoredCode(code=c, score=1.0) for c in dict.fromkeys(codes)], scored=False)

    def codes_at(self, threshold: float) -> list[str]:
        """Codes predicted at ``threshold``: score at or above it."""
        return [c.code for c in self.codes if c.score >= threshold]

    def scores(self) -> dict[str, float]:
        return {c.code: c.score for c in self.codes}


def write_predictions(preds: Iterable[Prediction], path: str | Path) -> None:
    """Atomic JSONL: a crash leaves the old file or none, never half of one."""
    with atomic_write(path) as fh:
        for p in preds:
            rec = p.model_dump(exclude_defaults=False)
            if rec["scored"]:
                del rec["scored"]
            if not rec["edits"]:
                del rec["edits"]
            for c in rec["codes"]:
                if not c["flags"]:
                    del c["flags"]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def read_predictions(path: str | Path) -> list[Prediction]:
    out, seen = [], {}
    for lineno, obj in iter_jsonl(path):
        try:
            pred = Prediction.model_validate(obj)
        except ValidationError as e:
            loc, msg = first_error(e)
            raise DataError(msg, path=path, line=lineno, field=loc or None) from None
        if pred.id in seen:
            raise DataError(f"note id {pred.id!r} already predicted on line {seen[pred.id]}", path=path,
                            line=lineno, field="id")
        seen[pred.id] = lineno
        out.append(pred)
    return out
