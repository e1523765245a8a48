"""A trained coder ready for use: predict, apply the rule engine, optionally translate ICD versions,
and describe every code. ``icdcoder code`` and ``icdcoder serve`` both go through it, so a note gets
the same answer from the command line, the HTTP API and the review page."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, Field

from icdcoder.coders.base import Coder
from icdcoder.codes import CodeSystem
from icdcoder.data.note import Note
from icdcoder.errors import ConfigError
from icdcoder.ontology import get_ontology
from icdcoder.prediction import Evidence, Prediction, RuleEdit
from icdcoder.rules.engine import RuleConfig, RuleEngine


class CodedCode(BaseModel):
    """One code as a reviewer sees it: ``suggested`` when its score reaches the model's threshold."""

    code: str
    system: str | None
    description: str | None
    score: float
    suggested: bool
    evidence: list[Evidence] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)


class CodedNote(BaseModel):
    """A coded note: ranked codes (suggested and below-threshold candidates) and the edits made."""

    id: str
    threshold: float
    codes: list[CodedCode]
    edits: list[RuleEdit] = Field(default_factory=list)

    def suggested(self) -> list[str]:
        return [c.code for c in self.codes if c.suggested]


class CodingPipeline:
    """``coder`` -> (GEM translation) -> rules -> descriptions. ``top_k`` caps the candidates listed."""

    def __init__(self, coder: Coder, rules: RuleConfig | None = None, to_version: int | None = None,
                 top_k: int | None = None, policy: str = "closest") -> None:
        if to_version not in (None, 9, 10):
            raise ConfigError(f"to_version must be 9 or 10, got {to_version!r}")
        self.coder = coder
        self.rules = rules if rules is not None else RuleConfig()
        if to_version is not None and self.rules.label_space:
            raise ConfigError("the label_space rule cannot apply after translation: the label space is in "
                             "the other ICD version")
        self.engine = RuleEngine(self.rules, label_space=coder.label_systems or None)
        self.to_version, self.top_k, self.policy = to_version, top_k, policy
        self.onto = get_ontology()
        self._lock = threading.Lock()  # coders are not promised to be thread-safe; one predict at a time

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, trust_pickle: bool = False, **kw: Any) -> "CodingPipeline":
        return cls(Coder.load(model_dir, trust_pickle=trust_pickle), **kw)

    def predict(self, notes: Sequence[Note]) -> list[Prediction]:
        """Predictions after translation and rules, before descriptions are added."""
        with self._lock:
            preds = self.coder.predict(list(notes))
        if self.to_version is not None:  # translate first, so the rules check the codes people will see
            from icdcoder.rules.versions import translate_prediction

            preds = [translate_prediction(p, self.coder.system_of, self.to_version, policy=self.policy)
                     for p in preds]
        c = self.coder
        return [self.engine.apply(p, self._code_system, c.threshold, c.per_code_thresholds) for p in preds]

    def code(self, notes: Sequence[Note]) -> list[CodedNote]:
        return [self._describe(p) for p in self.predict(notes)]

    def code_text(self, text: str, id: str = "note") -> CodedNote:
        return self.code([Note(id=id, text=text)])[0]

    def _code_system(self, code: str) -> CodeSystem | None:
        """After a translation the coder's label space no longer says; the target version does."""
        if self.to_version is None:
            return self.coder.system_of(code)
        from icdcoder.codes import CodeFormatError, infer_system

        try:
            return infer_system(code, version=self.to_version)
        except CodeFormatError:
            return None

    def _describe(self, pred: Prediction) -> CodedNote:
        c = self.coder
        codes = []
        for sc in pred.codes[: self.top_k]:
            system = self._code_system(sc.code)
            threshold = c.per_code_thresholds.get(sc.code, c.threshold)
            codes.append(CodedCode(
                code=sc.code, system=system.value if system else None,
                description=self.onto.describe(sc.code, system) if system else None, score=sc.score,
                suggested=sc.score >= threshold, evidence=sc.evidence, flags=sc.flags))
        return CodedNote(id=pred.id, threshold=c.threshold, codes=codes, edits=pred.edits)

    def lookup(self, code: str, system: str | None = None) -> dict[str, Any] | None:
        """Ontology record of a code; without ``system``, the model's systems are tried first."""
        systems = [system] if system else [*dict.fromkeys(self.coder.label_systems.values()), None]
        for s in systems:
            info = self.onto.lookup(code, s)
            if info is not None:
                return info.to_dict()
        return None

    def info(self) -> dict[str, Any]:
        c = self.coder
        return {"coder": c.name, "labels": len(c.label_systems),
                "systems": sorted(set(c.label_systems.values())), "threshold": c.threshold,
                "rules": self.rules.model_dump(mode="json"), "to_version": self.to_version}
