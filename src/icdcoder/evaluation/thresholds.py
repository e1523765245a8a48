"""Decision thresholds tuned on validation, then applied unchanged to test.

* :func:`tune_global` - the one threshold that maximises micro F1 on validation. Candidates are the
  distinct scores of the ranked entries (a code is predicted when ``score >= threshold``), scanned in
  one sort + cumulative sum (O(E log E) for E ranked entries). Ties in F1 go to the highest
  threshold (the smallest predicted set).
* :func:`tune_per_code` - per code, the threshold maximising that code's F1 on validation; codes
  without validation positives, or whose best F1 is 0, fall back to the global threshold.
* Unscored predictions (``scored=False``, every score 1.0) predict their set as given whatever the
  threshold; if every validation note is unscored the tuned threshold is 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from icdcoder.evaluation.metrics import ScoreMatrix, _div

UNSCORED_THRESHOLD = 1.0


@dataclass
class Thresholds:
    """A global threshold and optional per-code overrides (JSON: ``threshold``, ``per_code_thresholds``)."""

    threshold: float = 0.5
    per_code: dict[str, float] = field(default_factory=dict)
    val_micro_f1: float | None = None

    def apply(self, m: ScoreMatrix) -> np.ndarray:
        """Bool per entry of ``m``: predicted."""
        return m.predicted(self.threshold, self.per_code or None)

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "per_code_thresholds": dict(self.per_code),
                "val_micro_f1": self.val_micro_f1}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Thresholds":
        return cls(float(obj.get("threshold", 0.5)),
                   {k: float(v) for k, v in (obj.get("per_code_thresholds") or {}).items()},
                   obj.get("val_micro_f1"))


def _best_cut(scores_desc: np.ndarray, hit_desc: np.ndarray, n_gold: float, base_tp: float = 0.0,
              base_fp: float = 0.0) -> tuple[float | None, float]:
    """Scan thresholds = distinct scores (descending). Returns ``(threshold, best F1)``; threshold None
    when predicting nothing (of these entries) is at least as good."""
    tp = base_tp + np.cumsum(hit_desc)
    fp = base_fp + np.cumsum(~hit_desc)
    last = np.ones(len(scores_desc), dtype=bool)
    last[:-1] = scores_desc[1:] != scores_desc[:-1]  # a threshold takes whole tie blocks
    tp, fp = tp[last], fp[last]
    f1 = _div(2 * tp, 2 * tp + fp + (n_gold - tp))
    f0 = _div(2 * base_tp, 2 * base_tp + base_fp + (n_gold - base_tp))
    if len(f1) == 0:
        return None, float(f0)
    best = int(np.argmax(f1))  # first maximum = highest threshold among ties
    if f1[best] <= f0:
        return None, float(f0)
    return float(scores_desc[last][best]), float(f1[best])


def tune_global(m: ScoreMatrix) -> Thresholds:
    """The threshold maximising micro F1 over ``m`` (validation)."""
    scored = m.scored[m.rows]
    if not scored.any():
        return Thresholds(UNSCORED_THRESHOLD, {}, None)
    n_gold = float(m.gold.nnz)
    base_tp = float(np.sum(m.hit & ~scored))
    base_fp = float(np.sum(~m.hit & ~scored))
    s, h = m.scores[scored], m.hit[scored]
    order = np.argsort(-s, kind="stable")
    t, f1 = _best_cut(s[order], h[order], n_gold, base_tp, base_fp)
    if t is None:  # predicting nothing scored is best: a threshold above every score
        t = float(np.nextafter(s.max(), np.inf))
    return Thresholds(t, {}, f1)


def tune_per_code(m: ScoreMatrix, global_threshold: float | None = None) -> Thresholds:
    """Per-code thresholds maximising each code's F1 (fallback: the global one, tuned if not given)."""
    glob = tune_global(m) if global_threshold is None else Thresholds(global_threshold)
    scored = m.scored[m.rows]
    if not scored.any():
        return glob
    cols, s, h = m.cols[scored], m.scores[scored], m.hit[scored]
    pos = m.gold_per_code()
    base_tp = np.bincount(m.cols[m.hit & ~scored], minlength=m.n_codes).astype(float)
    base_fp = np.bincount(m.cols[~m.hit & ~scored], minlength=m.n_codes).astype(float)
    order = np.lexsort((-s, cols))  # by code, score descending
    cols, s, h = cols[order], s[order], h[order]
    # cumulative counts restarted at each code
    start = np.ones(len(cols), dtype=bool)
    start[1:] = cols[1:] != cols[:-1]
    seg = np.cumsum(start) - 1
    ctp = np.cumsum(h)
    cfp = np.cumsum(~h)
    first = np.flatnonzero(start)
    tp = ctp - (ctp[first] - h[first])[seg] + base_tp[cols]
    fp = cfp - (cfp[first] - (~h[first]))[seg] + base_fp[cols]
    last = np.ones(len(cols), dtype=bool)
    last[:-1] = (s[1:] != s[:-1]) | (cols[1:] != cols[:-1])
    n_gold = pos[cols].astype(float)
    f1 = np.where(last, _div(2 * tp, 2 * tp + fp + (n_gold - tp)), -1.0)
    per_code: dict[str, float] = {}
    # best entry per code: sort by (code, -f1, -score) and take the first of each code
    pick = np.lexsort((-s, -f1, cols))
    first_of = np.ones(len(pick), dtype=bool)
    first_of[1:] = cols[pick][1:] != cols[pick][:-1]
    for e in pick[first_of]:
        j = cols[e]
        if pos[j] == 0 or f1[e] <= 0:
            continue
        per_code[m.codes[j]] = float(s[e])
    val = m.predicted(glob.threshold, per_code)
    tp_all = float(np.sum(val & m.hit))
    fp_all = float(np.sum(val & ~m.hit))
    return Thresholds(glob.threshold, per_code, _div(2 * tp_all, tp_all + fp_all + m.gold.nnz))
