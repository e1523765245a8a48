"""ICD coding edits applied after any coder, each switchable, each recorded on the prediction.

A coder proposes; these rules tidy what it proposes the way a professional coder would, in this order:

1. ``exists``: the code is a real code of its system (the packaged release, or the fiscal-year code
   list given as ``codes_file``); otherwise dropped.
2. ``label_space`` (off by default): codes outside the model's training label space are dropped.
3. ``parent_child``: a code and its own descendant are not both suggested; the ancestor goes.
4. ``billable``: a category header (not a complete code) is replaced by its "unspecified" subcode
   when the hierarchy has one (``I50`` -> ``I50.9``), else flagged (``specify``); or just flagged, or
   dropped. Diagnoses only: procedure prefixes are a dataset convention (CodiEsp) and stay.
5. ``excludes1``: two codes whose Excludes1 notes say "never together" (the note of either code or
   of an ancestor) are not both suggested; the higher-scored one stays and the note is the reason.

Rules 3-5 look only at the *suggested* codes (score at or above the threshold): lower-ranked
candidates are not suggestions, so they neither conflict nor get edited. Dropping removes a code
from the prediction; the :class:`~icdcoder.prediction.RuleEdit` keeps what was dropped and why, so a
reviewer can undo it. :func:`violations` runs the same checks without editing, for GRPO rewards.

Not checked: Excludes1's "unrelated conditions" exception (a coder's judgement), code-first /
use-additional-code sequencing, and code validity in releases other than the one given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from icdcoder.codes import CodeFormatError, CodeSystem, normalize_code, parse_system
from icdcoder.errors import ConfigError, DataError
from icdcoder.ontology import get_ontology
from icdcoder.prediction import Prediction, RuleEdit, ScoredCode

SystemOf = Callable[[str], "CodeSystem | None"]
RULES = ("exists", "label_space", "parent_child", "billable", "excludes1")
_ORDER_LINE = re.compile(r"^\d{5} (\S+)\s+[01] ")  # CMS order file: order number, code, header flag, ...
_UNSPECIFIED = re.compile(r"(?<!with )\bunspecified\b", re.I)  # not "with unspecified complications"


class RuleConfig(BaseModel):
    """Which edits run. ``codes_file``: a CMS code list for one fiscal year (``icd10cm_codes_2025.txt``,
    ``icd10cm_order_2025.txt``, or one code per line) in ``codes_file_system``; with it, ``exists``
    checks that year's list instead of the packaged release."""

    model_config = ConfigDict(extra="forbid")

    exists: bool = True
    codes_file: Path | None = None
    codes_file_system: str = "icd10cm"
    label_space: bool = False
    parent_child: bool = True
    billable: Literal["specify", "flag", "drop", "off"] = "specify"
    excludes1: bool = True

    @classmethod
    def none(cls) -> "RuleConfig":
        """Every rule off: predictions pass through unchanged."""
        return cls(exists=False, label_space=False, parent_child=False, billable="off", excludes1=False)


def read_codes_file(path: str | Path, system: str | CodeSystem = "icd10cm") -> frozenset[str]:
    """Canonical codes of a CMS fiscal-year code list; a line that is not a code names file and line."""
    sys_ = parse_system(system)
    codes = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _ORDER_LINE.match(line)
            raw = m.group(1) if m else line.split()[0]
            try:
                codes.add(normalize_code(raw, sys_))
            except CodeFormatError as e:
                raise DataError(f"not a {sys_.value} code: {e}", path=path, line=lineno, field="code") from None
    if not codes:
        raise DataError("the code list is empty", path=path)
    return frozenset(codes)


@dataclass(frozen=True)
class Violation:
    """One rule a code set breaks: ``codes`` in RuleEdit order (the offending code first)."""

    rule: str
    codes: tuple[str, ...]
    reason: str


class RuleEngine:
    """The edits of one :class:`RuleConfig`, with the code list read once."""

    def __init__(self, config: RuleConfig | None = None, label_space: Iterable[str] | None = None) -> None:
        self.config = config or RuleConfig()
        self.label_space = frozenset(label_space) if label_space is not None else None
        if self.config.label_space and self.label_space is None:
            raise ConfigError("the label_space rule needs the model's label space (a model saved before "
                              "coders kept it has none)")
        self.year_codes = (read_codes_file(self.config.codes_file, self.config.codes_file_system)
                           if self.config.codes_file else None)
        self._year_system = parse_system(self.config.codes_file_system)
        self.onto = get_ontology()
        self._excluded: dict[tuple[str, CodeSystem], list[tuple[str, str]]] = {}  # per code: every pair asks

    # --- the checks, shared by apply() and violations() --------------------------------------------
    def _invalid(self, code: str, system: CodeSystem | None) -> str | None:
        """Why ``code`` is not a valid code, or None."""
        if system is None:
            return "cannot tell the code system"
        if self.year_codes is not None and system is self._year_system:
            return None if code in self.year_codes else f"not in the code list {self.config.codes_file.name}"
        known = self.onto.exists(code, system) or (
            system is CodeSystem.ICD10PCS and self.onto.lookup(code, system) is not None)  # PCS prefixes
        return None if known else f"not a code of {system.value} (packaged release)"

    def _ancestor_pairs(self, codes: Sequence[str], system_of: SystemOf) -> list[tuple[str, str]]:
        """(ancestor, descendant) pairs within ``codes``."""
        present = set(codes)
        pairs = []
        for code in codes:
            system = system_of(code)
            if system is None:
                continue
            pairs += [(a, code) for a in self.onto.ancestors(code, system) if a in present and a != code]
        return pairs

    def _not_billable(self, code: str, system: CodeSystem | None) -> bool:
        return (system is not None and not system.is_procedure and self.onto.exists(code, system)
                and not self.onto.is_billable(code, system))

    def _unspecified_subcode(self, code: str, system: CodeSystem) -> str | None:
        """Follow "unspecified" children down to a billable code (``J45`` -> ``J45.90`` -> ``J45.909``).

        Among several "unspecified" children the one ending in 9 (the classification's place for
        unspecified), then 0, is taken; anything else is ambiguous and gives None."""
        current = code
        for _ in range(4):
            kids = [k for k in self.onto.children(current, system) if _UNSPECIFIED.search(
                self.onto.describe(k, system) or "")]
            if len(kids) > 1:
                kids = [k for k in kids if k.endswith("9")] or [k for k in kids if k.endswith("0")]
            if len(kids) != 1:
                return None
            current = kids[0]
            if self.onto.is_billable(current, system):
                return current
        return None

    def _excludes1(self, code: str, system: CodeSystem) -> list[tuple[str, str]]:
        """(excluded code, note text) from the Excludes1 notes of ``code`` and its ancestors; read
        once per code, since every pair of suggested codes asks again."""
        key = (code, system)
        if key in self._excluded:
            return self._excluded[key]
        out = []
        for owner in [code, *self.onto.ancestors(code, system)]:
            info = self.onto.lookup(owner, system)
            if info is None:
                continue
            for excluded in info.excludes1_codes:
                note = next((n for n in info.excludes1 if excluded in n), "")
                out.append((excluded, f"{owner} Excludes1: {note}" if note else f"{owner} Excludes1 {excluded}"))
        self._excluded[key] = out
        return out

    def _conflict(self, a: str, b: str, system_of: SystemOf) -> str | None:
        """The Excludes1 note that forbids ``a`` with ``b`` (either direction), or None."""
        for x, y in ((a, b), (b, a)):
            sx, sy = system_of(x), system_of(y)
            if sx is None or sy is None or sx is not sy or sx is not CodeSystem.ICD10CM:
                continue
            family = {y, *self.onto.ancestors(y, sy)}
            for excluded, note in self._excludes1(x, sx):
                if excluded in family:
                    return note
        return None

    # --- editing a prediction ----------------------------------------------------------------------
    def apply(self, pred: Prediction, system_of: SystemOf, threshold: float = 0.5,
              per_code_thresholds: Mapping[str, float] | None = None) -> Prediction:
        """The prediction after every enabled rule, with an edit recorded for each change."""
        cfg, per_code = self.config, per_code_thresholds or {}
        codes: dict[str, ScoredCode] = {c.code: c for c in pred.codes}
        edits = list(pred.edits)

        def drop(code: str, rule: str, reason: str, kept: str | None = None) -> None:
            del codes[code]
            edits.append(RuleEdit(rule=rule, action="drop", codes=[code, kept] if kept else [code], reason=reason))

        def suggested() -> list[str]:  # highest score first
            return [c for c, sc in sorted(codes.items(), key=lambda kv: -kv[1].score)
                    if sc.score >= per_code.get(c, threshold)]

        if cfg.exists:
            for code in list(codes):
                why = self._invalid(code, system_of(code))
                if why:
                    drop(code, "exists", why)
        if cfg.label_space:
            for code in list(codes):
                if code not in self.label_space:
                    drop(code, "label_space", "not in the model's label space")
        if cfg.parent_child:
            ranked = suggested()
            pairs = set(self._ancestor_pairs(ranked, system_of))
            ancestors = {a for a, _ in pairs}
            for ancestor in [c for c in ranked if c in ancestors]:
                # kept: the best-scored suggested descendant that is itself the most specific
                child = next(c for c in ranked if (ancestor, c) in pairs and c not in ancestors)
                drop(ancestor, "parent_child", f"{ancestor} is an ancestor of {child}: only the more "
                     "specific code is kept", kept=child)
        if cfg.billable != "off":
            for code in suggested():
                system = system_of(code)
                if not self._not_billable(code, system):
                    continue
                target = self._unspecified_subcode(code, system) if cfg.billable == "specify" else None
                if cfg.billable == "drop":
                    drop(code, "billable", f"{code} is a category, not a billable code")
                elif target is not None:
                    old = codes.pop(code)
                    merged = codes.get(target)
                    codes[target] = old.model_copy(update={"code": target}) if merged is None else merged.model_copy(
                        update={"score": max(merged.score, old.score),
                                "evidence": list(dict.fromkeys([*old.evidence, *merged.evidence]))})
                    edits.append(RuleEdit(rule="billable", action="replace", codes=[code, target],
                                          reason=f"{code} is a category; its unspecified subcode is "
                                                 f"{target} ({self.onto.describe(target, system)})"))
                else:
                    codes[code] = codes[code].model_copy(update={"flags": [*codes[code].flags, "not_billable"]})
                    edits.append(RuleEdit(rule="billable", action="flag", codes=[code],
                                          reason=f"{code} is a category, not a billable code: choose a subcode"))
        if cfg.excludes1:
            kept: list[str] = []
            for code in suggested():
                clash = next(((k, note) for k in kept if (note := self._conflict(code, k, system_of))), None)
                if clash:
                    drop(code, "excludes1", f"{clash[1]} (kept the higher-scored {clash[0]})", kept=clash[0])
                else:
                    kept.append(code)
        return Prediction(id=pred.id, codes=list(codes.values()), scored=pred.scored, edits=edits)

    def violations(self, codes: Sequence[str], system_of: SystemOf) -> list[Violation]:
        """What the enabled rules object to in an (unscored) code set; nothing is changed."""
        cfg, out = self.config, []
        codes = list(dict.fromkeys(codes))
        valid = []
        for code in codes:
            why = self._invalid(code, system_of(code)) if cfg.exists else None
            if why:
                out.append(Violation("exists", (code,), why))
            elif cfg.label_space and code not in self.label_space:
                out.append(Violation("label_space", (code,), "not in the model's label space"))
            else:
                valid.append(code)
        if cfg.parent_child:
            out += [Violation("parent_child", (a, c), f"{a} is an ancestor of {c}")
                    for a, c in self._ancestor_pairs(valid, system_of)]
        if cfg.billable != "off":
            out += [Violation("billable", (c,), f"{c} is a category, not a billable code")
                    for c in valid if self._not_billable(c, system_of(c))]
        if cfg.excludes1:
            for i, a in enumerate(valid):
                out += [Violation("excludes1", (b, a), note) for b in valid[i + 1:]
                        if (note := self._conflict(a, b, system_of))]
        return out


def apply_rules(preds: Iterable[Prediction], system_of: SystemOf, *, threshold: float = 0.5,
                per_code_thresholds: Mapping[str, float] | None = None, config: RuleConfig | None = None,
                label_space: Iterable[str] | None = None) -> list[Prediction]:
    """:meth:`RuleEngine.apply` over many predictions."""
    engine = RuleEngine(config, label_space)
    return [engine.apply(p, system_of, threshold, per_code_thresholds) for p in preds]


def edit_counts(preds: Iterable[Prediction]) -> dict[str, int]:
    """How often each rule fired, e.g. for run.json: ``{"exists": 3, "excludes1": 1}``."""
    counts: dict[str, int] = {}
    for p in preds:
        for e in p.edits:
            counts[e.rule] = counts.get(e.rule, 0) + 1
    return dict(sorted(counts.items()))
