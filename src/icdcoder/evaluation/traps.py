"""Trap errors: codes a coder predicted although the note says they must not be coded.

Notes may carry, in ``metadata["traps"]``, records ``{"kind", "code", "start", "end"}``: mentions of a
condition that is not to be coded (the built-in synthetic corpus writes them, :mod:`icdcoder.data.synth`):
``negated`` ("no evidence of pneumonia"), ``ruled_out``, ``uncertain`` ("possible X": not coded under
the outpatient rule) and ``family`` (the relative's disease; its Z80-Z84 code is gold instead).

Definitions (a code is *predicted* exactly as the evaluation protocol decides it:
:meth:`ScoreMatrix.predicted` - score at or above the threshold, the code's own one when per-code
thresholds are given, every code of an unscored note - over the protocol's label space; codes are
compared without dots, case-insensitively):

* per trap kind: ``mentions`` = distinct (note, code) pairs of that kind whose code is *not* a gold
  code of the note (several mentions of one code in one note count once; a record whose code is gold
  for another reason is left out and counted in ``gold_skipped``); ``errors`` = those pairs whose code
  the coder predicted for the note; ``rate = errors / mentions`` (None when there is no mention).
* ``all``: the same over distinct (note, code) pairs of any kind (a code that is both negated and a
  family trap in one note counts once).
* ``sibling``: a *wrong-sibling prediction* is a (note, predicted code ``p``) where ``p`` is not gold,
  shares its 3-character category with at least one gold code of the note (of the same code system
  when both systems are known), and is neither an ancestor nor a descendant of any gold code of the
  note (prefix hierarchy, :func:`analysis.relation`): predicting E11.65 for gold E11.9 counts, E11.6
  or E11 for gold E11.65 does not (an under-specification), nor does J18.9 for gold E11.9 (another
  category), nor D50.9 for gold D64.9. ``count`` = wrong-sibling predictions;
  ``opportunities`` = (note, gold code ``g``) pairs where the reference codes (the dataset's codes, not
  the coder's predictions, so every coder gets the same number) hold another code of ``g``'s category
  that is neither gold in the note nor an ancestor/descendant of ``g``; ``rate = count /
  opportunities``; ``notes_with_error`` = notes with at least one wrong sibling.

:func:`trap_errors` takes notes and predictions; the protocol calls :func:`trap_errors_matrix` with
the score matrix it already built, and adds the result under ``"traps"`` only when the evaluated notes
carry ``metadata["traps"]`` (:func:`has_traps`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from icdcoder.data.note import Note
from icdcoder.errors import DataError
from icdcoder.evaluation.analysis import _squash, per_note_lists, relation
from icdcoder.evaluation.metrics import ScoreMatrix
from icdcoder.prediction import Prediction

TRAP_KINDS = ("negated", "ruled_out", "uncertain", "family")  # as icdcoder.data.synth writes them
ROWS = (*TRAP_KINDS, "all")  # the rows of the report's table, before "sibling"


def has_traps(notes: Sequence[Note]) -> bool:
    """True when some note carries ``metadata["traps"]`` (even an empty list: the corpus records them)."""
    return any("traps" in n.metadata for n in notes)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _trap_records(note: Note) -> list[tuple[str, str]]:
    """``(kind, code)`` of every trap record of a note; malformed records are an error naming it."""
    recs = note.metadata.get("traps") or []
    if not isinstance(recs, list):
        raise DataError(f"note {note.id!r}: metadata.traps must be a list of records")
    out = []
    for k, t in enumerate(recs):
        if not (isinstance(t, Mapping) and isinstance(t.get("kind"), str) and isinstance(t.get("code"), str)):
            raise DataError(f"note {note.id!r}: metadata.traps[{k}] needs a string kind and code")
        out.append((t["kind"], t["code"]))
    return out


def _compatible(a: str, b: str, systems: Mapping[str, str]) -> bool:
    sa, sb = systems.get(a), systems.get(b)
    return not (sa and sb and sa != sb)


def _related(g: str, p: str) -> bool:
    """``p`` is an ancestor or a descendant of ``g``."""
    return relation(g, p) in ("parent", "child")


def trap_counts(notes: Sequence[Note], predicted: Sequence[Iterable[str]], *,
                systems: Mapping[str, str] | None = None,
                reference_codes: Iterable[str] | None = None) -> dict[str, Any]:
    """The trap table from notes and the code set predicted for each (same order); see the module.

    ``systems``: code -> system name, for the sibling rule (gold codes' systems come from the notes).
    ``reference_codes``: the codes sibling opportunities are counted against (default: every gold
    code of ``notes``)."""
    if len(notes) != len(predicted):
        raise ValueError(f"{len(notes)} notes but {len(predicted)} predicted code sets")
    sysmap: dict[str, str] = dict(systems or {})
    for n in notes:
        for c, s in n.code_systems.items():
            sysmap.setdefault(c, s.value)
    reference = set(reference_codes) if reference_codes is not None else {c for n in notes for c in n.codes}
    by_category: dict[str, set[str]] = {}
    for c in reference:
        if len(_squash(c)) >= 3:
            by_category.setdefault(_squash(c)[:3], set()).add(c)

    kinds = list(TRAP_KINDS)
    counts: dict[str, dict[str, int]] = {}

    def row(kind: str) -> dict[str, int]:
        if kind not in counts:
            counts[kind] = {"mentions": 0, "errors": 0, "gold_skipped": 0}
            if kind not in kinds:
                kinds.append(kind)
        return counts[kind]

    for k in TRAP_KINDS:
        row(k)
    total = {"mentions": 0, "errors": 0}
    sib = {"count": 0, "opportunities": 0, "notes_with_error": 0}
    n_with = 0
    for note, pred in zip(notes, predicted):
        pred_list = list(pred)
        gold_sq = {_squash(c) for c in note.codes}
        pred_sq = {_squash(c) for c in pred_list}
        recs = _trap_records(note)
        n_with += bool(recs)
        seen: set[tuple[str, str]] = set()
        seen_any: set[str] = set()
        for kind, code in recs:
            c = _squash(code)
            if (kind, c) in seen:
                continue
            seen.add((kind, c))
            r = row(kind)
            if c in gold_sq:
                r["gold_skipped"] += 1
                continue
            r["mentions"] += 1
            r["errors"] += c in pred_sq
            if c not in seen_any:
                seen_any.add(c)
                total["mentions"] += 1
                total["errors"] += c in pred_sq
        # wrong siblings: non-gold predictions in a gold code's category, unrelated to every gold code
        wrong = 0
        for p in dict.fromkeys(pred_list):
            sp = _squash(p)
            if sp in gold_sq or len(sp) < 3:
                continue
            same = [g for g in note.codes if _squash(g)[:3] == sp[:3] and _compatible(g, p, sysmap)]
            if same and not any(_related(g, p) for g in note.codes):
                wrong += 1
        sib["count"] += wrong
        sib["notes_with_error"] += wrong > 0
        for g in note.codes:
            sg = _squash(g)
            if len(sg) < 3:
                continue
            if any(_squash(r) not in gold_sq and not _related(g, r) and _compatible(g, r, sysmap)
                   for r in by_category.get(sg[:3], ())):
                sib["opportunities"] += 1

    out: dict[str, Any] = {"notes": len(notes), "notes_with_traps": n_with}
    for k in kinds:
        r = counts[k]
        out[k] = {"mentions": r["mentions"], "errors": r["errors"], "rate": _rate(r["errors"], r["mentions"]),
                  "gold_skipped": r["gold_skipped"]}
    out["all"] = {**total, "rate": _rate(total["errors"], total["mentions"])}
    out["sibling"] = {**sib, "rate": _rate(sib["count"], sib["opportunities"])}
    return out


def trap_errors_matrix(notes: Sequence[Note], m: ScoreMatrix, pred: np.ndarray, *,
                       systems: Mapping[str, str] | None = None,
                       reference_codes: Iterable[str] | None = None) -> dict[str, Any]:
    """:func:`trap_counts` with the predicted sets of a score matrix (``pred`` = ``m.predicted(...)``),
    ``notes`` aligned with its rows."""
    if [n.id for n in notes] != list(m.ids):
        raise ValueError("notes are not aligned with the score matrix")
    lists = per_note_lists(m, pred)
    return trap_counts(notes, [x["predicted"] for x in lists], systems=systems, reference_codes=reference_codes)


def trap_errors(notes: Sequence[Note], predictions: Sequence[Prediction], threshold: float = 0.5,
                per_code: Mapping[str, float] | None = None, *, systems: Mapping[str, str] | None = None,
                reference_codes: Iterable[str] | None = None) -> dict[str, Any]:
    """Trap errors of ``predictions`` on ``notes`` at ``threshold`` (and per-code thresholds): a plain
    JSON-able dict, see the module. Predictions are aligned by note id (extra ones are ignored; a note
    without a prediction is an error); every predicted code counts, none is dropped from the label space."""
    from icdcoder.evaluation.protocol import align, build_matrix, default_label_space

    aligned, _ = align(notes, predictions, allow_extra=True)
    m = build_matrix(notes, aligned, default_label_space(notes, aligned))
    return trap_errors_matrix(notes, m, m.predicted(threshold, per_code), systems=systems,
                              reference_codes=reference_codes)
