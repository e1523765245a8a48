"""Span-level evidence scores: does a coder point at the text that the annotators marked for a code?

Items and matching
------------------
* A *gold item* is a :class:`~icdcoder.data.note.Span` of a note (code, start, end).
* A *predicted item* is one evidence span (code, start, end) of a code the prediction keeps: score at
  or above its threshold (``thresholds`` is one float, or a function code -> threshold). A prediction
  marked unscored keeps its code set as given, whatever the threshold (as in :mod:`metrics`).
* A predicted item can match a gold item of the same note when the codes are equal and the character
  ranges ``[start, end)`` share at least one character (``max(starts) < min(ends)``); ranges that only
  touch (one ends where the other starts) do not.
* Matching is one-to-one inside a note: candidate pairs are taken greedily by largest overlap (ties: gold
  order, then predicted order), so a gold span is credited at most once and a predicted span credits at
  most one gold span. Two predicted spans over one gold span give one match and one unmatched
  prediction.

Scores: ``evidence_precision = matched / predicted items``, ``evidence_recall = matched / gold items``
(micro, pooled over notes; None when the denominator is 0), ``evidence_f1`` their harmonic mean.
``code_correct_evidence_recall`` restricts the gold items to the codes the prediction kept, so that
it measures the evidence of the codes a coder got right, apart from its code recall.

How this differs from the official CodiEsp-X score
--------------------------------------------------
The CodiEsp-X evaluation (``codiespX_evaluation.py`` in TeMU-BSC/codiesp-evaluation-script, checked
here) scores *codes*, not spans: precision is over the distinct (clinical case, code) pairs predicted,
recall over the distinct gold pairs, and a pair is a true positive when one of its predicted reference
positions *contains* one of its gold references with at most 10 characters of slack at each end
(``0 <= gold_start - pred_start <= 10`` and ``0 <= pred_end - gold_end <= 10``; a discontinuous gold
reference is taken from its first start to its last end). The rule here is more lenient about position
(any shared character counts, a predicted span inside the gold span counts, no tolerance window) and
counts each span, so a coder is credited for every mention it finds and charged for every span it
invents. The official rule is reported beside it as ``codiesp_x_precision`` / ``_recall`` / ``_f1``
(:func:`_codiesp_x_hit`; our loader keeps a discontinuous reference as separate spans, each of which
may be contained); the official script on the official files remains the reference for the leaderboard.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from icdcoder.data.note import Note
from icdcoder.prediction import Prediction

__all__ = ["evidence_scores", "has_gold_spans"]


def has_gold_spans(gold: Sequence[Note]) -> bool:
    """Whether any note carries evidence spans (only then can evidence be scored)."""
    return any(note.spans for note in gold)


def evidence_scores(gold: Sequence[Note], preds: Sequence[Prediction], *,
                    thresholds: Callable[[str], float] | float = 0.5) -> dict[str, Any]:
    """Span-level precision / recall / F1 of the evidence of the kept codes (see the module docstring).

    ``gold`` and ``preds`` are aligned: same length, same ids in the same order (ValueError otherwise).
    """
    if len(gold) != len(preds):
        raise ValueError(f"{len(gold)} gold notes but {len(preds)} predictions")
    threshold_of = thresholds if callable(thresholds) else (lambda code, t=float(thresholds): t)
    n_pred = n_gold = n_matched = notes_with_spans = 0
    n_kept = n_kept_with_evidence = n_gold_of_kept = 0
    x_pred = x_gold = x_hit = 0
    for i, (note, pred) in enumerate(zip(gold, preds)):
        if note.id != pred.id:
            raise ValueError(f"gold and predictions are not aligned at position {i}: "
                             f"note {note.id!r}, prediction {pred.id!r}")
        kept = [c for c in pred.codes if not pred.scored or c.score >= threshold_of(c.code)]
        kept_codes = {c.code for c in kept}
        n_kept += len(kept)
        n_kept_with_evidence += sum(1 for c in kept if c.evidence)
        predicted = [(c.code, ev.start, ev.end) for c in kept for ev in c.evidence]
        spans = [(sp.code, sp.start, sp.end) for sp in note.spans]
        notes_with_spans += bool(spans)
        n_pred += len(predicted)
        n_gold += len(spans)
        n_gold_of_kept += sum(1 for code, _, _ in spans if code in kept_codes)
        n_matched += _match(spans, predicted)
        gold_codes = {code for code, _, _ in spans}
        pred_codes = {code for code, _, _ in predicted}
        x_gold += len(gold_codes)
        x_pred += len(pred_codes)
        x_hit += sum(1 for code in pred_codes & gold_codes if _codiesp_x_hit(code, spans, predicted))
    precision = n_matched / n_pred if n_pred else None
    recall = n_matched / n_gold if n_gold else None
    if precision is None or recall is None:
        f1 = None
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    xp = x_hit / x_pred if x_pred else None
    xr = x_hit / x_gold if x_gold else None
    return {
        "codiesp_x_precision": xp,
        "codiesp_x_recall": xr,
        "codiesp_x_f1": None if xp is None or xr is None else (2 * xp * xr / (xp + xr) if xp + xr else 0.0),
        "evidence_precision": precision,
        "evidence_recall": recall,
        "evidence_f1": f1,
        "n_pred_spans": n_pred,
        "n_gold_spans": n_gold,
        "n_matched": n_matched,
        "notes_with_gold_spans": notes_with_spans,
        "codes_with_evidence": n_kept_with_evidence / n_kept if n_kept else None,
        "code_correct_evidence_recall": n_matched / n_gold_of_kept if n_gold_of_kept else None,
    }


def _codiesp_x_hit(code: str, gold: list[tuple[str, int, int]], predicted: list[tuple[str, int, int]],
                   slack: int = 10) -> bool:
    """The official CodiEsp-X test for one (case, code) pair: some predicted reference contains some gold
    reference of the code with at most ``slack`` characters more at each end."""
    return any(0 <= gs - ps <= slack and 0 <= pe - ge <= slack
               for gc, gs, ge in gold if gc == code for pc, ps, pe in predicted if pc == code)


def _match(gold: list[tuple[str, int, int]], predicted: list[tuple[str, int, int]]) -> int:
    """Size of the greedy one-to-one matching (largest overlap first) between one note's items."""
    if not gold or not predicted:
        return 0
    pairs = []
    for gi, (g_code, g_start, g_end) in enumerate(gold):
        for pi, (p_code, p_start, p_end) in enumerate(predicted):
            if g_code == p_code:
                overlap = min(g_end, p_end) - max(g_start, p_start)
                if overlap > 0:
                    pairs.append((-overlap, gi, pi))
    pairs.sort()
    used_gold: set[int] = set()
    used_pred: set[int] = set()
    for _, gi, pi in pairs:
        if gi not in used_gold and pi not in used_pred:
            used_gold.add(gi)
            used_pred.add(pi)
    return len(used_gold)
