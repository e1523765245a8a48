"""ICD-9 <-> ICD-10 through the CMS GEMs: train on one version, predict or evaluate in the other.

A GEM row is rarely a clean one-to-one: a source may have several *alternative* targets (rows
without the combination flag; ``715.90`` -> ``M15.9`` or ``M19.90``), a *combination* (rows of one
scenario, one target from each choice list, used together; ``073.0`` -> ``A70`` + ``J17``), or no
target at all (``NoDx``). A :data:`Policy` says which alternatives survive:

* ``all``: every alternative (and every target of each choice list): recall first;
* ``first``: one, an exact row if there is one, else the first in GEM order;
* ``closest``: one, an exact row if there is one, else the target whose description shares most
  words with the source's, then an "unspecified" one (``I10`` -> ``401.9``, where ``first`` gives
  ``401.0``, malignant hypertension);
* ``prior``: the alternative most frequent in ``prior`` (target-version training counts), ties in
  GEM order; ``closest`` when no alternative has a count.

Combinations use the first scenario; standalone rows next to a combination are extra alternatives
that only ``all`` keeps. The GEMs are older than the packaged code releases, so a target the
release lacks is replaced by its nearest existing ancestor, and a source the GEM lacks is mapped
through its nearest ancestor the GEM has; both count as approximate.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping, Sequence

from icdcoder.codes import CodeFormatError, CodeSystem, normalize_code, parse_system
from icdcoder.data.note import Dataset, Note, Span
from icdcoder.errors import DataError, IcdcoderError
from icdcoder.ontology import GemMapping, MappingUnavailableError, get_ontology
from icdcoder.prediction import Prediction, RuleEdit, ScoredCode

Policy = Literal["all", "first", "closest", "prior"]
POLICIES: tuple[str, ...] = ("all", "first", "closest", "prior")
SystemOf = Callable[[str], "CodeSystem | None"]
APPROXIMATE_FLAG = "gem_approximate"
RULE = "gem"


@dataclass(frozen=True)
class CodeMapping:
    """Where one source code goes under a policy. ``targets`` are emitted together (one code, the
    kept alternatives, or a combination); empty means the code is dropped and ``reason`` says why.
    ``n_alternatives``: distinct targets the GEM offers for it, before the policy chose."""

    source: str
    system: CodeSystem
    targets: tuple[tuple[str, CodeSystem], ...]
    approximate: bool
    no_map: bool
    combination: bool
    n_alternatives: int
    reason: str

    @property
    def codes(self) -> list[str]:
        return [c for c, _ in self.targets]


def other_system(system: CodeSystem) -> CodeSystem:
    """The same kind of code (diagnosis or procedure) in the other ICD version."""
    if system.is_procedure:
        return CodeSystem.ICD10PCS if system.version == 9 else CodeSystem.ICD9PCS
    return CodeSystem.ICD10CM if system.version == 9 else CodeSystem.ICD9CM


def _check_version(to_version: int) -> None:
    if to_version not in (9, 10):
        raise IcdcoderError(f"target ICD version must be 9 or 10, not {to_version!r}")


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise IcdcoderError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")


def _truncations(code: str, system: CodeSystem) -> Iterable[str]:
    """Shorter and shorter canonical prefixes of ``code`` (``H40.11X0`` -> ``H40.11X``, ``H40.11`` ...)."""
    squashed = code.replace(".", "")
    for n in range(len(squashed) - 1, 2, -1):
        try:
            yield normalize_code(squashed[:n], system)
        except CodeFormatError:
            continue


def _words(description: str | None) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", (description or "").lower()))


@dataclass(frozen=True)
class _Row:
    target: str
    approximate: bool
    combination: bool
    scenario: int
    choice_list: int


class GemMapper:
    """Maps codes one at a time under one policy and prior, caching each answer (a corpus asks
    about the same few thousand codes again and again)."""

    def __init__(self, policy: Policy = "first", prior: Mapping[str, int] | None = None):
        _check_policy(policy)
        self.policy, self.prior = policy, prior or {}
        self.ont = get_ontology()
        self._cache: dict[tuple[str, CodeSystem], CodeMapping] = {}

    def map(self, code: str, system: str | CodeSystem) -> CodeMapping:
        """Raises MappingUnavailableError when no packaged GEM covers the direction."""
        system = parse_system(system)
        key = (code, system)
        if key not in self._cache:
            self._cache[key] = self._map(code, system)
        return self._cache[key]

    # --- GEM rows ----------------------------------------------------------------------------------
    def _gem_rows(self, code: str, system: CodeSystem) -> tuple[str, list[GemMapping]]:
        """Rows of ``code``, else (for a real code newer than the GEM) of its nearest ancestor in the
        GEM; ``("", [])`` when none."""
        lookup = self.ont.map_9_to_10 if system.version == 9 else self.ont.map_10_to_9
        rows = lookup(code, system)
        if rows or not self.ont.exists(code, system):
            return (code, rows) if rows else ("", [])
        for anc in _truncations(code, system):
            rows = lookup(anc, system)
            if rows:
                return anc, rows
        return "", []

    def _resolve(self, target: str, system: CodeSystem) -> tuple[str, bool] | None:
        """``(code, exact)`` of a GEM target in the packaged release: itself, else its nearest ancestor."""
        if self.ont.exists(target, system):
            return target, True
        for anc in _truncations(target, system):
            if self.ont.exists(anc, system):
                return anc, False
        return None

    # --- policy ------------------------------------------------------------------------------------
    def _choose(self, rows: Sequence[_Row], source_words: frozenset[str], target_sys: CodeSystem) -> list[_Row]:
        if self.policy == "all" or len(rows) <= 1:
            return list(rows)
        if self.policy == "prior":
            counts = [self.prior.get(r.target, 0) for r in rows]
            if max(counts) > 0:
                return [rows[counts.index(max(counts))]]
        candidates = [r for r in rows if not r.approximate] or list(rows)
        if self.policy == "first":
            return [candidates[0]]

        def closeness(i: int) -> tuple[float, bool, int]:
            """Shared description words (Jaccard), then "unspecified" (the neutral choice: I10 ->
            401.9, not 401.0 malignant), then GEM order."""
            words = _words(self.ont.describe(candidates[i].target, target_sys))
            overlap = len(words & source_words) / max(len(words | source_words), 1)
            return overlap, "unspecified" in words, -i

        return [candidates[max(range(len(candidates)), key=closeness)]]

    def _map(self, code: str, system: CodeSystem) -> CodeMapping:
        target_sys = other_system(system)
        try:
            canon = normalize_code(code, system)
        except CodeFormatError:
            return self._none(code, system, f"{code!r} is not a well-formed {system.value} code")
        via, gem = self._gem_rows(canon, system)
        if not gem:
            return self._none(canon, system, f"{system.value} {canon} is not in the GEM")
        rows: list[_Row] = []
        for g in gem:
            hit = self._resolve(g.target, target_sys) if g.target else None
            if hit is not None:
                rows.append(_Row(hit[0], g.approximate or not hit[1], g.combination, g.scenario, g.choice_list))
        if not rows:
            why = "the GEM has no equivalent" if all(g.no_map for g in gem) else "no GEM target is in the release"
            return self._none(canon, system, f"{system.value} {canon}: {why} in {target_sys.value}")
        chosen, combination = self._apply_policy(rows, _words(self.ont.describe(via, system)), target_sys)
        targets = tuple(dict.fromkeys((r.target, target_sys) for r in chosen))
        n_alt = len({r.target for r in rows})
        approximate = via != canon or any(r.approximate for r in chosen)
        notes = [f"via {via}"] if via != canon else []
        if combination:
            notes.append("combination")
        if n_alt > len(targets):
            notes.append(f"{len(targets)} of {n_alt} alternatives, policy {self.policy}")
        if approximate:
            notes.append("approximate")
        reason = f"{system.value} {canon} -> {target_sys.value} {' + '.join(c for c, _ in targets)}"
        reason += f" ({'; '.join(notes)})" if notes else ""
        return CodeMapping(canon, system, targets, approximate, False, combination, n_alt, reason)

    def _apply_policy(self, rows: list[_Row], source_words: frozenset[str],
                      target_sys: CodeSystem) -> tuple[list[_Row], bool]:
        """Chosen rows, and whether they form a combination."""
        comb = [r for r in rows if r.combination]
        if not comb:
            return self._choose(rows, source_words, target_sys), False
        scenario = comb[0].scenario
        lists: dict[int, list[_Row]] = {}
        for r in comb:
            if r.scenario == scenario:
                lists.setdefault(r.choice_list, []).append(r)
        chosen = [r for alts in lists.values() for r in self._choose(alts, source_words, target_sys)]
        if self.policy == "all":
            chosen += [r for r in rows if not r.combination]
        return chosen, True

    @staticmethod
    def _none(code: str, system: CodeSystem, reason: str) -> CodeMapping:
        return CodeMapping(code, system, (), False, True, False, 0, reason)


def map_code(code: str, system: str | CodeSystem, *, policy: Policy = "first",
             prior: Mapping[str, int] | None = None) -> CodeMapping:
    """Map one code to the other ICD version (see the module doc for the policies)."""
    return GemMapper(policy, prior).map(code, system)


# ----------------------------------------------------------------------------------- predictions
def _merge(into: dict[str, ScoredCode], item: ScoredCode) -> None:
    """Several sources may give one target: keep the best score, pool evidence and flags."""
    old = into.get(item.code)
    if old is None:
        into[item.code] = item
        return
    into[item.code] = ScoredCode(
        code=item.code, score=max(old.score, item.score),
        evidence=list(dict.fromkeys([*old.evidence, *item.evidence])),
        flags=list(dict.fromkeys([*old.flags, *item.flags])))


def translate_prediction(pred: Prediction, system_of: SystemOf, to_version: int, *, policy: Policy = "all",
                         prior: Mapping[str, int] | None = None, approximate_weight: float = 1.0,
                         mapper: GemMapper | None = None) -> Prediction:
    """``pred`` with every code of the other version mapped to ``to_version``, each change recorded.

    A target inherits its source's score (times ``approximate_weight`` and flagged
    ``gem_approximate`` when the mapping is approximate) and evidence. Pass one ``mapper`` (or use
    :func:`translate_predictions`) when translating many predictions.
    """
    _check_version(to_version)
    mapper = mapper or GemMapper(policy, prior)
    merged: dict[str, ScoredCode] = {}
    edits = list(pred.edits)
    for sc in pred.codes:
        system = system_of(sc.code)
        if system is None:
            edits.append(RuleEdit(rule=RULE, action="drop", codes=[sc.code], reason="code system unknown"))
            continue
        if system.version == to_version:
            _merge(merged, sc)
            continue
        try:
            m = mapper.map(sc.code, system)
        except MappingUnavailableError as e:
            edits.append(RuleEdit(rule=RULE, action="drop", codes=[sc.code], reason=str(e)))
            continue
        if not m.targets:
            edits.append(RuleEdit(rule=RULE, action="drop", codes=[sc.code], reason=m.reason))
            continue
        score = sc.score * (approximate_weight if m.approximate else 1.0)
        flags = [*sc.flags, APPROXIMATE_FLAG] if m.approximate else list(sc.flags)
        for target in m.codes:
            _merge(merged, ScoredCode(code=target, score=score, evidence=list(sc.evidence), flags=flags))
        if m.codes != [sc.code]:
            edits.append(RuleEdit(rule=RULE, action="replace", codes=[sc.code, *m.codes], reason=m.reason))
    return Prediction(id=pred.id, codes=list(merged.values()), scored=pred.scored, edits=edits)


def translate_predictions(preds: Iterable[Prediction], system_of: SystemOf, to_version: int, *,
                          policy: Policy = "all", prior: Mapping[str, int] | None = None,
                          approximate_weight: float = 1.0) -> list[Prediction]:
    mapper = GemMapper(policy, prior)
    return [translate_prediction(p, system_of, to_version, approximate_weight=approximate_weight, mapper=mapper)
            for p in preds]


def translate_thresholds(per_code: Mapping[str, float], system_of: SystemOf, to_version: int, *,
                         policy: Policy = "all", prior: Mapping[str, int] | None = None) -> dict[str, float]:
    """Per-code thresholds keyed by the translated codes, so they still apply (a target reached from
    several sources takes the lowest: it is predicted whenever one of them would have been)."""
    mapper = GemMapper(policy, prior)
    out: dict[str, float] = {}
    for code, thr in per_code.items():
        system = system_of(code)
        if system is None or system.version == to_version:
            targets = [code] if system is not None else []
        else:
            try:
                targets = mapper.map(code, system).codes
            except MappingUnavailableError:
                targets = []
        for t in targets:
            out[t] = min(out.get(t, thr), thr)
    return out


def edit_summary(preds: Iterable[Prediction]) -> dict[str, int]:
    """Counts of GEM edits over predictions: mapped, dropped, approximate (translated codes)."""
    c: Counter = Counter()
    for p in preds:
        for e in p.edits:
            if e.rule == RULE:
                c["mapped" if e.action == "replace" else "dropped"] += 1
        c["approximate"] += sum(APPROXIMATE_FLAG in sc.flags for sc in p.codes)
        c["codes"] += len(p.codes)
    return {k: c[k] for k in ("mapped", "dropped", "approximate", "codes")}


# ----------------------------------------------------------------------------------------- notes
class RecodeReport:
    """Counts over the labels of a recoded corpus (what the CLI prints and the manifest keeps):
    ``one_to_many`` labels had alternative targets to choose from, ``combination`` ones map to a set."""

    def __init__(self) -> None:
        self.c: Counter = Counter()
        self.before: set[str] = set()
        self.after: set[str] = set()
        self.dropped: Counter = Counter()

    def add(self, mapping: CodeMapping | None, code: str, dropped: bool) -> None:
        self.c["codes_in"] += 1
        self.before.add(code)
        if mapping is None and not dropped:
            self.c["unchanged"] += 1
        elif dropped:
            self.c["no_map"] += 1
            self.dropped[code] += 1
        else:
            self.c["mapped"] += 1
            self.c["approximate"] += mapping.approximate
            self.c["one_to_many"] += mapping.n_alternatives > 1 and not mapping.combination
            self.c["combination"] += mapping.combination

    def as_dict(self) -> dict:
        keys = ("notes", "notes_without_codes", "codes_in", "codes_out", "unchanged", "mapped", "no_map",
                "approximate", "one_to_many", "combination")
        d = {k: self.c[k] for k in keys}
        d.update(distinct_before=len(self.before), distinct_after=len(self.after),
                 no_map_codes=dict(self.dropped.most_common(20)))
        return d


def recode_note(note: Note, to_version: int, *, policy: Policy = "closest", prior: Mapping[str, int] | None = None,
                mapper: GemMapper | None = None, report: RecodeReport | None = None) -> tuple[Note, list[RuleEdit]]:
    """``note`` with its gold codes in ``to_version``: spans follow their code to every target,
    codes reached twice are merged, codes without a target are dropped (and recorded)."""
    _check_version(to_version)
    mapper = mapper or GemMapper(policy, prior)
    systems: dict[str, CodeSystem] = {}
    targets_of: dict[str, list[str]] = {}
    edits: list[RuleEdit] = []
    for code in note.codes:
        system = note.code_systems[code]
        mapping = None
        if system.version == to_version:
            targets_of[code] = [code]
            systems.setdefault(code, system)
        else:
            try:
                mapping = mapper.map(code, system)
                reason = mapping.reason
            except MappingUnavailableError as e:
                reason = str(e)
            targets_of[code] = mapping.codes if mapping else []
            for t, s in (mapping.targets if mapping else ()):
                systems.setdefault(t, s)
            if not targets_of[code]:
                edits.append(RuleEdit(rule=RULE, action="drop", codes=[code], reason=reason))
            elif targets_of[code] != [code]:
                edits.append(RuleEdit(rule=RULE, action="replace", codes=[code, *targets_of[code]], reason=reason))
        if report is not None:
            report.add(mapping, code, dropped=not targets_of[code])
    spans = dict.fromkeys(Span(code=t, start=s.start, end=s.end) for s in note.spans for t in targets_of[s.code])
    rec = note.model_dump()
    rec.update(codes=list(systems), code_systems=systems, spans=list(spans))
    out = Note.model_validate(rec)
    if report is not None:
        report.c["notes"] += 1
        report.c["codes_out"] += len(out.codes)
        report.c["notes_without_codes"] += not out.codes
        report.after.update(out.codes)
    return out, edits


def iter_recoded(items: Iterable[tuple[str, Note]], to_version: int, report: RecodeReport, *,
                 policy: Policy = "closest", prior: Mapping[str, int] | None = None) -> Iterator[tuple[str, Note]]:
    """Stream ``(split, note)`` pairs recoded, counting into ``report`` (a large corpus never sits in memory)."""
    mapper = GemMapper(policy, prior)
    for split, note in items:
        yield split, recode_note(note, to_version, mapper=mapper, report=report)[0]


def recode_dataset(ds_or_items: Dataset | Iterable[tuple[str, Note]], to_version: int, *,
                   policy: Policy = "closest", prior: Mapping[str, int] | None = None
                   ) -> tuple[list[tuple[str, Note]], dict]:
    """Every ``(split, note)`` recoded to ``to_version``, and a report of what the mapping did."""
    report = RecodeReport()
    items = list(iter_recoded(ds_or_items, to_version, report, policy=policy, prior=prior))
    return items, report.as_dict()


def prior_from_dataset(data_dir: str | Path, split: str = "train") -> dict[str, int]:
    """Code frequencies of one split of a prepared dataset (from its manifest): the ``prior`` counts."""
    from icdcoder.data.store import read_manifest

    freqs = read_manifest(data_dir).get("code_frequencies", {})
    if split not in freqs:
        raise IcdcoderError(f"{data_dir} has no code frequencies for split {split!r} (has {sorted(freqs)})")
    return {c: int(n) for c, n in freqs[split].items()}


def model_system_of(model_dir: str | Path) -> SystemOf:
    """A saved coder's ``system_of`` read from its ``coder.json`` alone: loading the weights of a
    large model only to learn its label space would take minutes."""
    from icdcoder.coders.base import CODER_FILE, Coder, label_system

    path = Path(model_dir) / CODER_FILE
    if not path.exists():
        raise DataError(f"no saved coder here ({CODER_FILE} missing)", path=model_dir)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path=path, line=e.lineno) from None
    if "label_systems" not in meta:  # saved before coders kept their label space
        return Coder.load(model_dir).system_of
    return partial(label_system, label_systems=dict(meta["label_systems"]))


def infer_system_of(to_version: int, from_system: str | CodeSystem | None = None) -> SystemOf:
    """Without a model: every code read as ``from_system`` when given, else inferred from its form as
    a code of the other version; codes that read neither way are tried as ``to_version`` codes."""
    from icdcoder.codes import infer_system

    fixed = parse_system(from_system) if from_system is not None else None

    def system_of(code: str) -> CodeSystem | None:
        if fixed is not None:
            try:
                normalize_code(code, fixed)
                return fixed
            except CodeFormatError:
                pass
        other = 9 if to_version == 10 else 10
        for version in ([] if fixed else [other]) + [to_version]:
            try:
                return infer_system(code, version=version)
            except CodeFormatError:
                continue
        return None

    return system_of
