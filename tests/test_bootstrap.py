import numpy as np
import pytest

from icdcoder.evaluation import ScoreMatrix, all_metrics, paired_bootstrap
from icdcoder.evaluation.bootstrap import _Contrib


def _case(seed=0, n=150, k=20, noise=1.0):
    """Gold sets plus two coders: ``good`` scores gold codes high; ``noisy`` mostly random."""
    rng = np.random.default_rng(seed)
    Y = rng.random((n, k)) < 0.15
    ids, codes = [f"n{i}" for i in range(n)], [f"c{j}" for j in range(k)]
    gold = {ids[i]: [codes[j] for j in range(k) if Y[i, j]] for i in range(n)}

    def coder(signal):
        S = signal * Y + noise * rng.random((n, k))
        return ScoreMatrix.from_dicts(gold, {ids[i]: {codes[j]: float(S[i, j]) for j in range(k)} for i in range(n)},
                                      codes=codes)

    return coder(0.1), coder(1.5)


def test_identical_coders():
    a, _ = _case()
    r = paired_bootstrap(a, a, n_resamples=1000, seed=1)
    for k in ("micro_f1", "macro_f1", "map"):
        assert r[k]["diff"] == 0 and r[k]["ci_low"] <= 0 <= r[k]["ci_high"]
        assert r[k]["p_value"] == pytest.approx(1.0)


def test_clearly_better_coder():
    a, b = _case()
    r = paired_bootstrap(a, b, threshold_a=0.6, threshold_b=0.6, n_resamples=1000, seed=0)
    for k in ("micro_f1", "macro_f1", "map"):
        assert r[k]["diff"] > 0 and r[k]["ci_low"] > 0
        assert r[k]["p_value"] < 0.05
    # the full-sample values are the protocol's metrics
    ma, mb = all_metrics(a, 0.6), all_metrics(b, 0.6)
    for k in ("micro_f1", "macro_f1", "map"):
        assert r[k]["a"] == pytest.approx(ma[k]) and r[k]["b"] == pytest.approx(mb[k])


def test_deterministic_by_seed():
    a, b = _case(3, noise=2.0)
    r1 = paired_bootstrap(a, b, n_resamples=300, seed=7)
    r2 = paired_bootstrap(a, b, n_resamples=300, seed=7)
    r3 = paired_bootstrap(a, b, n_resamples=300, seed=8)
    assert r1 == r2
    assert r1["micro_f1"]["ci_low"] != r3["micro_f1"]["ci_low"]


def test_resample_weights_equal_recomputed_metrics():
    # a resample drawing notes [0, 0, 2, 5] must give the metrics of a matrix holding those notes
    a, _ = _case(4, n=8, k=6)
    idx = [0, 0, 2, 5]
    w = np.bincount(idx, minlength=a.n_notes)[None, :].astype(float)
    stats = _Contrib(a, 0.5, None).stats(w)
    gold = {f"r{t}": [a.codes[j] for j in a.gold[i].indices] for t, i in enumerate(idx)}
    scores = {f"r{t}": {a.codes[c]: s for c, s in zip(a.cols[a.rows == i], a.scores[a.rows == i])}
              for t, i in enumerate(idx)}
    dup = ScoreMatrix.from_dicts(gold, scores, codes=a.codes)
    ref = all_metrics(dup, 0.5)
    for k in ("micro_f1", "macro_f1", "map"):
        assert stats[k][0] == pytest.approx(ref[k])


def test_needs_same_notes():
    a, _ = _case()
    b = a.subset_notes(np.arange(a.n_notes) < 10)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b)
