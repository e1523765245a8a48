"""Paired bootstrap over notes for the difference between two coders on the same test notes.

Each resample draws ``n`` note indices with replacement (the same draw for both coders: paired) and
recomputes micro F1, macro F1 and MAP from per-note contributions, vectorised: a resample is a row
of counts ``w`` (how often each note was drawn), so pooled counts are ``w @ counts``:

* micro F1 from per-note TP/FP/FN: ``2 sum(w tp) / (2 sum(w tp) + sum(w fp) + sum(w fn))``;
* macro F1 from per-code TP/FP/FN = ``w @ (notes x codes)`` sparse products, averaged over the
  codes active in that resample (``TP+FP+FN > 0``), as in :mod:`metrics`;
* MAP as the ``w``-weighted mean of per-note AP over the drawn notes with gold codes.

Reported per metric: ``a``, ``b`` and ``diff = b - a`` on the full test set, ``mean`` (of the
bootstrap differences), the 95% percentile interval ``ci_low``/``ci_high``, and a two-sided
``p_value`` by the shift method (Efron & Tibshirani 1993, ch. 16): under H0 the bootstrap
differences are centred on 0, ``p = (1 + #{b : |d*_b - mean(d*)| >= |diff|}) / (B + 1)``. Identical
coders give every ``d*_b = 0`` and ``p = 1``. Deterministic for a given ``seed``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from icdcoder.evaluation.metrics import ScoreMatrix, average_precision_per_note

METRICS = ("micro_f1", "macro_f1", "map")


class _Contrib:
    """Per-note contributions of one coder at its threshold."""

    def __init__(self, m: ScoreMatrix, threshold: float, per_code: Mapping[str, float] | None):
        pred = m.predicted(threshold, per_code)
        n, k = m.n_notes, m.n_codes
        tp_e, fp_e = pred & m.hit, pred & ~m.hit
        self.tp = sp.csr_matrix((np.ones(tp_e.sum()), (m.rows[tp_e], m.cols[tp_e])), shape=(n, k))
        self.fp = sp.csr_matrix((np.ones(fp_e.sum()), (m.rows[fp_e], m.cols[fp_e])), shape=(n, k))
        self.fn = (m.gold.astype(float) - self.tp).tocsr()
        self.note_tp = np.asarray(self.tp.sum(axis=1)).ravel()
        self.note_fp = np.asarray(self.fp.sum(axis=1)).ravel()
        self.note_fn = np.asarray(self.fn.sum(axis=1)).ravel()
        ap = average_precision_per_note(m)
        self.has_gold = ~np.isnan(ap)
        self.ap = np.nan_to_num(ap)

    def stats(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics for each row of weights ``w`` (B x n)."""
        TP, FP, FN = w @ self.note_tp, w @ self.note_fp, w @ self.note_fn
        micro = _safe(2 * TP, 2 * TP + FP + FN)
        ctp = (self.tp.T @ w.T).T
        cfp = (self.fp.T @ w.T).T
        cfn = (self.fn.T @ w.T).T
        active = (ctp + cfp + cfn) > 0
        f1 = _safe(2 * ctp, 2 * ctp + cfp + cfn)
        n_active = active.sum(axis=1)
        macro = _safe((f1 * active).sum(axis=1), n_active)
        wg = w * self.has_gold
        mean_ap = _safe(wg @ self.ap, wg.sum(axis=1))
        return {"micro_f1": micro, "macro_f1": macro, "map": mean_ap}


def _safe(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_paired(a: ScoreMatrix, b: ScoreMatrix) -> None:
    if a.ids != b.ids or a.codes != b.codes:
        raise ValueError("paired bootstrap needs both coders on the same notes and label space (same order)")


def paired_bootstrap(a: ScoreMatrix, b: ScoreMatrix, *, threshold_a: float = 0.5, threshold_b: float = 0.5,
                     per_code_a: Mapping[str, float] | None = None, per_code_b: Mapping[str, float] | None = None,
                     n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
                     chunk: int = 100) -> dict[str, Any]:
    """Difference ``b - a`` of micro F1, macro F1 and MAP with a 95% CI and a two-sided p-value."""
    _check_paired(a, b)
    n = a.n_notes
    if n == 0:
        raise ValueError("no notes to resample")
    ca = _Contrib(a, threshold_a, per_code_a)
    cb = _Contrib(b, threshold_b, per_code_b)
    ones = np.ones((1, n))
    full_a, full_b = ca.stats(ones), cb.stats(ones)
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(size, n))
        w = np.bincount((idx + (np.arange(size) * n)[:, None]).ravel(), minlength=size * n).reshape(size, n)
        w = w.astype(float)
        sa, sb = ca.stats(w), cb.stats(w)
        for k in METRICS:
            diffs[k].append(sb[k] - sa[k])
        done += size
    out: dict[str, Any] = {"n_resamples": n_resamples, "seed": seed, "n_notes": n,
                           "estimator": "paired bootstrap over notes; percentile CI; shift-method two-sided p"}
    for k in METRICS:
        d = np.concatenate(diffs[k])
        obs = float(full_b[k][0] - full_a[k][0])
        centred = np.abs(d - d.mean())
        p = (1 + int(np.sum(centred >= abs(obs) - 1e-12))) / (len(d) + 1)
        out[k] = {"a": float(full_a[k][0]), "b": float(full_b[k][0]), "diff": obs, "mean": float(d.mean()),
                  "ci_low": float(np.quantile(d, alpha / 2)), "ci_high": float(np.quantile(d, 1 - alpha / 2)),
                  "p_value": float(min(1.0, p))}
    return out
