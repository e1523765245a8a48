"""Every metric of the evaluation protocol, defined once, over one sparse representation.

Representation (:class:`ScoreMatrix`)
-------------------------------------
``n_notes x n_codes`` over a fixed label space. Gold labels are a boolean CSR matrix. Scores exist
only for the codes a coder ranked: they are kept as parallel arrays of *entries* (``rows``, ``cols``,
``scores``, ``hit`` = the entry is a gold code), ordered by note and, inside a note, by the coder's
ranking (score descending; ties keep the coder's order). Every other cell is "not ranked", which the
metrics treat as a score of ``-inf`` (below every real score, tied with each other). Nothing is ever
densified, so 20k notes x 8k codes costs memory in proportion to the ranked codes only.

Definitions (``P``/``R``/``F1`` from TP, FP, FN; a code is predicted when ``score >= threshold``;
notes marked unscored predict their code set as given, whatever the threshold)
----------------------------------------------------------------------------------------------------
* micro P/R/F1: pooled over every (note, code) cell: ``P = TP/(TP+FP)``, ``R = TP/(TP+FN)``,
  ``F1 = 2TP/(2TP+FP+FN)``; 0 when the denominator is 0.
* macro F1 (Edin et al. 2023, "corrected"): the mean of per-code ``F1_c = 2TP/(2TP+FP+FN)`` over the
  *active* codes of the label space, those with ``TP+FP+FN > 0`` on the evaluated notes (at least one
  gold or predicted positive). A code that is neither gold nor predicted anywhere has an undefined
  F1 (0/0) and is left out, so the size of the label space does not move the score. (Edin et al.'s
  code filters the label space to the codes present in the evaluated split, where the same 0/0 never
  arises; the one difference is that here a code predicted but absent from the gold counts as F1 = 0:
  a spurious code is an error.) macro P / macro R: the mean of per-code P / R over the same active
  codes, 0/0 counted as 0 (scikit-learn's ``zero_division=0`` restricted to ``labels=active``).
* ``macro_f1_harmonic``: the older definition, ``2 * macroP * macroR / (macroP + macroR)``.
* micro ROC AUC: Mann-Whitney AUC over all flattened cells (ties count 1/2; unranked cells tied at
  ``-inf``), equal to ``sklearn.metrics.roc_auc_score(Y.ravel(), S.ravel())``.
* macro ROC AUC: mean per-code AUC over codes with at least one positive *and* one negative note;
  the others are skipped (AUC is undefined for them).
* micro AUPRC: average precision over all flattened cells, scikit-learn's step-wise definition
  ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (the unranked cells form a last threshold).
* Ranking metrics use each note's ranked list (not the threshold); notes with no gold code in the
  label space are left out of all of them (recall, R-precision and AP are undefined there, and the
  precision of such a note carries no ranking information; Edin et al. drop such notes too):
  ``P@k = hits in top k / k`` (k even when fewer than k codes were ranked),
  ``R@k = hits in top k / |gold|``, R-precision ``= hits in top R / R`` with ``R = |gold|``,
  AP ``= sum over gold codes found at rank k of P@k, / |gold|``; ``map`` = mean AP over the whole
  ranked list (every candidate the coder returned, threshold ignored).
* ``codiesp_map``: the CodiEsp shared task's MAP as its official script computes it (trectools
  ``get_map(trec_eval=False)``): AP over the *submitted* codes only (score at or above the threshold),
  averaged over the notes with at least one submitted code (a note with nothing submitted is left out
  rather than scoring 0; one without gold codes scores 0); ``codiesp_map_notes`` counts them. The script
  gives every submitted line the same score, and trectools from 0.0.45 on (what ``pip install
  trectools`` gives) breaks that tie by code, so a note's codes count in code order, not in the order
  submitted. ``codiesp_map_ranked`` is the same with the coder's rank order, which is what the
  script's pinned trectools 0.0.42 computed in 2020.
* exact match: fraction of notes whose predicted set (at the threshold) equals the gold set, over
  all notes (a note with no gold codes matches when nothing is predicted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from icdcoder.errors import DataError

KS = (5, 8, 15)


def _div(num, den):
    """Elementwise ``num/den`` with 0 where ``den == 0`` (arrays or scalars)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out if out.ndim else float(out)


@dataclass
class ScoreMatrix:
    """Gold labels and ranked scores of one coder on the same notes, over one label space."""

    ids: list[str]
    codes: list[str]
    gold: sp.csr_matrix                 # bool, n_notes x n_codes
    rows: np.ndarray                    # int64 per entry: note index
    cols: np.ndarray                    # int64 per entry: code index
    scores: np.ndarray                  # float64 per entry
    hit: np.ndarray                     # bool per entry: (row, col) is a gold cell
    scored: np.ndarray                  # bool per note: False = code set without scores
    n_pred_outside: int = 0             # predicted codes dropped: not in the label space
    n_gold_outside: int = 0             # gold codes dropped: not in the label space
    _row_start: np.ndarray | None = field(default=None, repr=False)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, ids: Sequence[str], gold: Sequence[Iterable[str]], ranked: Sequence[Sequence[tuple[str, float]]],
              codes: Sequence[str], scored: Sequence[bool] | None = None) -> "ScoreMatrix":
        """From aligned per-note gold code sets and ranked ``(code, score)`` lists (already ordered)."""
        n, index = len(ids), {c: j for j, c in enumerate(codes)}
        if len(index) != len(codes):
            raise ValueError("label space has duplicate codes")
        g_rows, g_cols, n_gold_out = [], [], 0
        for i, gs in enumerate(gold):
            for c in gs:
                j = index.get(c)
                if j is None:
                    n_gold_out += 1
                else:
                    g_rows.append(i)
                    g_cols.append(j)
        m = len(codes)
        g = sp.csr_matrix((np.ones(len(g_rows), dtype=bool), (np.asarray(g_rows, dtype=np.int64),
                                                              np.asarray(g_cols, dtype=np.int64))), shape=(n, m))
        g.sum_duplicates()
        rows, cols, scores, n_pred_out = [], [], [], 0
        for i, lst in enumerate(ranked):
            for c, s in lst:
                j = index.get(c)
                if j is None:
                    n_pred_out += 1
                    continue
                rows.append(i)
                cols.append(j)
                scores.append(s)
        rows_a = np.asarray(rows, dtype=np.int64)
        cols_a = np.asarray(cols, dtype=np.int64)
        scores_a = np.asarray(scores, dtype=np.float64)
        if np.isnan(scores_a).any():
            raise DataError("a prediction has a NaN score")
        if len(rows_a) and np.any(np.diff(rows_a) < 0):
            raise ValueError("entries must be grouped by note")
        hit = _cells_in(rows_a * m + cols_a, g)
        sc = np.ones(n, dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
        return cls(list(ids), list(codes), g, rows_a, cols_a, scores_a, hit, sc, n_pred_out, n_gold_out)

    @classmethod
    def from_dicts(cls, gold: Mapping[str, Iterable[str]], scores: Mapping[str, Mapping[str, float]],
                   codes: Sequence[str] | None = None, unscored: Iterable[str] = ()) -> "ScoreMatrix":
        """Convenience for tests and notebooks: ``{id: codes}`` and ``{id: {code: score}}`` (ranked by
        score, ties in dict order). The label space defaults to every gold and scored code, sorted."""
        ids = list(gold)
        if codes is None:
            codes = sorted({c for cs in gold.values() for c in cs} | {c for d in scores.values() for c in d})
        ranked = [sorted(scores.get(i, {}).items(), key=lambda kv: -kv[1]) for i in ids]
        un = set(unscored)
        return cls.build(ids, [gold[i] for i in ids], ranked, codes, [i not in un for i in ids])

    # --- shape ------------------------------------------------------------------------------
    @property
    def n_notes(self) -> int:
        return self.gold.shape[0]

    @property
    def n_codes(self) -> int:
        return self.gold.shape[1]

    @property
    def row_start(self) -> np.ndarray:
        if self._row_start is None:
            self._row_start = np.searchsorted(self.rows, np.arange(self.n_notes + 1))
        return self._row_start

    def gold_per_note(self) -> np.ndarray:
        return np.diff(self.gold.indptr).astype(np.int64)

    def gold_per_code(self) -> np.ndarray:
        return np.bincount(self.gold.indices, minlength=self.n_codes).astype(np.int64)

    def positions(self) -> np.ndarray:
        """0-based rank of each entry inside its note's ranked list."""
        return np.arange(len(self.rows)) - self.row_start[self.rows]

    def subset_codes(self, keep: np.ndarray) -> "ScoreMatrix":
        """The same notes over the codes where ``keep`` (bool per code) is True."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        e = keep[self.cols]
        g = self.gold[:, np.flatnonzero(keep)].tocsr()
        return ScoreMatrix(self.ids, [c for c, k in zip(self.codes, keep) if k], g, self.rows[e],
                           new_index[self.cols[e]], self.scores[e], self.hit[e], self.scored)

    def subset_notes(self, keep: np.ndarray) -> "ScoreMatrix":
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        e = keep[self.rows]
        return ScoreMatrix([i for i, k in zip(self.ids, keep) if k], self.codes,
                           self.gold[np.flatnonzero(keep)].tocsr(),
                           new_index[self.rows[e]], self.cols[e], self.scores[e], self.hit[e], self.scored[keep])

    # --- thresholding -----------------------------------------------------------------------
    def predicted(self, threshold: float, per_code: Mapping[str, float] | None = None) -> np.ndarray:
        """Bool per entry: predicted when ``score >= threshold`` (the code's own one if given);
        entries of unscored notes are always predicted."""
        if per_code:
            t = np.full(self.n_codes, float(threshold))
            idx = {c: j for j, c in enumerate(self.codes)}
            for c, v in per_code.items():
                if c in idx:
                    t[idx[c]] = float(v)
            pred = self.scores >= t[self.cols]
        else:
            pred = self.scores >= float(threshold)
        return pred | ~self.scored[self.rows]

    def dense(self, missing: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
        """``(Y, S)`` dense arrays (small cases and cross-checks only)."""
        y = self.gold.toarray().astype(int)
        s = np.full(y.shape, missing, dtype=float)
        s[self.rows, self.cols] = self.scores
        return y, s


def _cells_in(keys: np.ndarray, g: sp.csr_matrix) -> np.ndarray:
    """Bool per flat cell key ``row * m + col``: is it a nonzero of ``g``?"""
    m = g.shape[1]
    coo = g.tocoo()
    gk = np.sort(coo.row.astype(np.int64) * m + coo.col.astype(np.int64))
    if len(gk) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.clip(np.searchsorted(gk, keys), 0, len(gk) - 1)
    return gk[pos] == keys


# --- confusion counts ------------------------------------------------------------------------
def per_code_counts(m: ScoreMatrix, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(TP, FP, FN)`` per code."""
    tp = np.bincount(m.cols[pred & m.hit], minlength=m.n_codes)
    fp = np.bincount(m.cols[pred & ~m.hit], minlength=m.n_codes)
    fn = m.gold_per_code() - tp
    return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)


def per_note_counts(m: ScoreMatrix, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(TP, FP, FN)`` per note."""
    tp = np.bincount(m.rows[pred & m.hit], minlength=m.n_notes)
    fp = np.bincount(m.rows[pred & ~m.hit], minlength=m.n_notes)
    fn = m.gold_per_note() - tp
    return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)


def micro_prf(tp, fp, fn) -> dict[str, float]:
    TP, FP, FN = float(np.sum(tp)), float(np.sum(fp)), float(np.sum(fn))
    return {"micro_precision": _div(TP, TP + FP), "micro_recall": _div(TP, TP + FN),
            "micro_f1": _div(2 * TP, 2 * TP + FP + FN)}


def per_code_f1(tp, fp, fn) -> np.ndarray:
    return _div(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn)


def macro_prf(tp, fp, fn) -> dict[str, float]:
    """Means over active codes (``TP+FP+FN > 0``); see the module docstring."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    active = (tp + fp + fn) > 0
    if not active.any():
        return {"macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0, "macro_f1_harmonic": 0.0}
    p = float(np.mean(_div(tp, tp + fp)[active]))
    r = float(np.mean(_div(tp, tp + fn)[active]))
    f = float(np.mean(per_code_f1(tp, fp, fn)[active]))
    return {"macro_precision": p, "macro_recall": r, "macro_f1": f, "macro_f1_harmonic": _div(2 * p * r, p + r)}


def exact_match(m: ScoreMatrix, pred: np.ndarray) -> float:
    tp, fp, fn = per_note_counts(m, pred)
    return float(np.mean((fp == 0) & (fn == 0))) if m.n_notes else 0.0


# --- threshold-free metrics ------------------------------------------------------------------
def _grouped_auc(groups: np.ndarray, n_groups: int, scores: np.ndarray, hit: np.ndarray,
                 pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per group (a code, or one group for micro) from the ranked entries only.

    ``pos``/``neg`` are each group's total positives and negatives, ranked or not; unranked cells
    all sit at -inf. AUC = (pairs pos > neg + 1/2 pairs tied) / (pos * neg); NaN where undefined.
    """
    order = np.lexsort((scores, groups))  # by group, then score ascending
    g, s, h = groups[order], scores[order], hit[order]
    # blocks of equal (group, score)
    new = np.ones(len(g), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block = np.cumsum(new) - 1
    bpos = np.bincount(block, weights=h, minlength=block[-1] + 1 if len(block) else 0)
    bneg = np.bincount(block, weights=~h, minlength=len(bpos))
    bgroup = g[new]
    # ranked negatives strictly below each block, within its group
    cum_neg = np.cumsum(bneg) - bneg
    first_block = np.searchsorted(bgroup, np.arange(n_groups))
    group_base = np.concatenate([cum_neg, [cum_neg[-1] + bneg[-1] if len(bneg) else 0.0]])[first_block] \
        if len(bneg) else np.zeros(n_groups)
    below = cum_neg - group_base[bgroup] if len(bneg) else cum_neg
    ranked_pos = np.bincount(g, weights=h, minlength=n_groups)
    ranked_neg = np.bincount(g, weights=~h, minlength=n_groups)
    unranked_neg = neg - ranked_neg
    unranked_pos = pos - ranked_pos
    wins = np.bincount(bgroup, weights=bpos * (below + unranked_neg[bgroup] + 0.5 * bneg), minlength=n_groups) \
        if len(bneg) else np.zeros(n_groups)
    wins = wins + 0.5 * unranked_pos * unranked_neg
    den = pos.astype(float) * neg.astype(float)
    out = np.full(n_groups, np.nan)
    ok = den > 0
    out[ok] = wins[ok] / den[ok]
    return out


def micro_auc(m: ScoreMatrix) -> float | None:
    P = int(m.gold.nnz)
    N = m.n_notes * m.n_codes - P
    v = _grouped_auc(np.zeros(len(m.rows), dtype=np.int64), 1, m.scores, m.hit, np.array([P]), np.array([N]))[0]
    return None if np.isnan(v) else float(v)


def per_code_auc(m: ScoreMatrix) -> np.ndarray:
    """ROC AUC per code; NaN for codes without a positive or without a negative note."""
    pos = m.gold_per_code()
    return _grouped_auc(m.cols, m.n_codes, m.scores, m.hit, pos, m.n_notes - pos)


def macro_auc(m: ScoreMatrix) -> float | None:
    a = per_code_auc(m)
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else None


def micro_auprc(m: ScoreMatrix) -> float | None:
    """Average precision over all flattened cells (scikit-learn's definition)."""
    P = int(m.gold.nnz)
    if P == 0:
        return None
    total = m.n_notes * m.n_codes
    prec, rec = _pr_points(m)
    ap = float(np.sum(np.diff(np.concatenate([[0.0], rec])) * prec))
    return ap if total else None


def _pr_points(m: ScoreMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct threshold, high to low, the -inf one (all cells) last
    when some positives are unranked."""
    P = int(m.gold.nnz)
    order = np.argsort(-m.scores, kind="stable")
    s, h = m.scores[order], m.hit[order]
    last = np.ones(len(s), dtype=bool)
    last[:-1] = s[1:] != s[:-1]  # last entry of each tie block
    tp = np.cumsum(h)[last].astype(float)
    k = (np.flatnonzero(last) + 1).astype(float)
    prec, rec = _div(tp, k), _div(tp, P)
    if len(tp) == 0 or tp[-1] < P:
        total = m.n_notes * m.n_codes
        prec = np.append(prec, _div(P, total))
        rec = np.append(rec, 1.0 if P else 0.0)
    return np.atleast_1d(prec), np.atleast_1d(rec)


def pr_curve(m: ScoreMatrix, max_points: int = 400) -> dict[str, list[float]]:
    """Micro precision-recall curve (ranked cells only, thinned to ``max_points``) for plots."""
    prec, rec = _pr_points(m)
    if len(rec) and rec[-1] == 1.0 and len(prec) > 1 and prec[-1] < prec[-2] * 1e-3:
        prec, rec = prec[:-1], rec[:-1]  # the all-cells point squashes the plot; leave it out
    if len(prec) > max_points:
        idx = np.unique(np.linspace(0, len(prec) - 1, max_points).astype(int))
        prec, rec = prec[idx], rec[idx]
    return {"precision": [float(x) for x in prec], "recall": [float(x) for x in rec]}


# --- ranking metrics (per note) --------------------------------------------------------------
def _hits_cum(m: ScoreMatrix) -> np.ndarray:
    """Number of hits at or above each entry inside its note."""
    c = np.cumsum(m.hit)
    before = np.concatenate([[0], c])[m.row_start[m.rows]]
    return c - before


def precision_at_k_per_note(m: ScoreMatrix, k: int) -> np.ndarray:
    pos = m.positions()
    return np.bincount(m.rows[m.hit & (pos < k)], minlength=m.n_notes) / float(k)


def recall_at_k_per_note(m: ScoreMatrix, k: int) -> np.ndarray:
    """NaN for notes without gold codes."""
    pos = m.positions()
    hits = np.bincount(m.rows[m.hit & (pos < k)], minlength=m.n_notes).astype(float)
    r = m.gold_per_note().astype(float)
    return np.where(r > 0, hits / np.maximum(r, 1), np.nan)


def r_precision_per_note(m: ScoreMatrix) -> np.ndarray:
    r = m.gold_per_note()
    pos = m.positions()
    hits = np.bincount(m.rows[m.hit & (pos < r[m.rows])], minlength=m.n_notes).astype(float)
    return np.where(r > 0, hits / np.maximum(r, 1), np.nan)


def average_precision_per_note(m: ScoreMatrix) -> np.ndarray:
    """CodiEsp AP: sum over gold codes found at rank k of P@k, divided by |gold|; NaN without gold."""
    pk = _hits_cum(m) / (m.positions() + 1.0)
    s = np.bincount(m.rows[m.hit], weights=pk[m.hit], minlength=m.n_notes)
    r = m.gold_per_note().astype(float)
    return np.where(r > 0, s / np.maximum(r, 1), np.nan)


def _mean_with_gold(values: np.ndarray, has_gold: np.ndarray) -> float | None:
    v = values[has_gold]
    return float(np.mean(v)) if len(v) else None


def ranking_metrics(m: ScoreMatrix, ks: Sequence[int] = KS) -> dict[str, float | None]:
    has = m.gold_per_note() > 0
    out: dict[str, float | None] = {}
    for k in ks:
        out[f"p@{k}"] = _mean_with_gold(precision_at_k_per_note(m, k), has)
    for k in ks:
        out[f"r@{k}"] = _mean_with_gold(recall_at_k_per_note(m, k), has)
    out["r_precision"] = _mean_with_gold(r_precision_per_note(m), has)
    out["map"] = _mean_with_gold(average_precision_per_note(m), has)
    return out


def codiesp_map(m: ScoreMatrix, pred: np.ndarray, order: str = "code") -> tuple[float | None, int]:
    """CodiEsp's MAP over the submitted entries ``pred`` (bool per entry): AP over each note's submitted
    codes (divided by its number of gold codes), averaged over the notes with at least one submitted
    code; a note without gold codes counts 0, a note with nothing submitted is left out. ``order``:
    ``code`` ranks a note's submitted codes by code (what the official script computes with trectools
    0.0.45 and later, the versions pip installs: the script gives every line the same score and trectools
    breaks ties by code); ``ranked`` keeps the coder's rank order (trectools 0.0.42, which the script's
    requirements pin). Returns ``(MAP, notes averaged)``; MAP is None when nothing was submitted."""
    if order not in ("code", "ranked"):
        raise ValueError(f"order must be 'code' or 'ranked', not {order!r}")
    sub = np.flatnonzero(pred)
    if order == "code" and len(sub):
        names = np.array([c.lower() for c in m.codes], dtype=object)[m.cols[sub]]
        sub = sub[np.lexsort((names.astype(str), m.rows[sub]))]
    sub_rows, sub_hit = m.rows[sub], m.hit[sub]
    if not len(sub_rows):
        return None, 0
    start = np.searchsorted(sub_rows, np.arange(m.n_notes + 1))
    rank = np.arange(len(sub_rows)) - start[sub_rows] + 1  # 1-based rank among submitted codes
    c = np.cumsum(sub_hit)
    hits_so_far = c - np.concatenate([[0], c])[start[sub_rows]]
    contrib = np.where(sub_hit, hits_so_far / rank, 0.0)
    s = np.bincount(sub_rows, weights=contrib, minlength=m.n_notes)
    r = m.gold_per_note()
    notes = np.bincount(sub_rows, minlength=m.n_notes) > 0
    ap = np.where(r > 0, s / np.maximum(r, 1), 0.0)
    return float(np.mean(ap[notes])), int(notes.sum())


# --- everything --------------------------------------------------------------------------------
def set_metrics(m: ScoreMatrix, pred: np.ndarray) -> dict[str, float]:
    tp, fp, fn = per_code_counts(m, pred)
    out = micro_prf(tp, fp, fn)
    out.update(macro_prf(tp, fp, fn))
    return out


def all_metrics(m: ScoreMatrix, threshold: float, per_code: Mapping[str, float] | None = None,
                ks: Sequence[int] = KS) -> dict[str, float | int | None]:
    """Every metric of the protocol, flat, JSON-able (undefined values are None)."""
    pred = m.predicted(threshold, per_code)
    out: dict[str, float | int | None] = {}
    out.update(set_metrics(m, pred))
    out["micro_auc"] = micro_auc(m)
    out["macro_auc"] = macro_auc(m)
    out["micro_auprc"] = micro_auprc(m)
    out.update(ranking_metrics(m, ks))
    out["codiesp_map"], out["codiesp_map_notes"] = codiesp_map(m, pred, "code")
    out["codiesp_map_ranked"] = codiesp_map(m, pred, "ranked")[0]
    out["exact_match"] = exact_match(m, pred)
    out["n_notes"] = m.n_notes
    out["n_codes"] = m.n_codes
    return out
