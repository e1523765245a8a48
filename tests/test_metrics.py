"""Every metric against hand-computed cases (arithmetic in the comments) and scikit-learn."""


import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from icdcoder.data.note import Note
from icdcoder.errors import DataError
from icdcoder.evaluation import ScoreMatrix, all_metrics, evaluate
from icdcoder.evaluation import metrics as M
from icdcoder.prediction import Prediction

# The hand case. Label space A B C D E; threshold 0.5.
#   n1 gold {A, B}   ranked A .9, C .8, B .3   -> predicted {A, C}: TP A, FP C, FN B
#   n2 gold {C}      ranked C .6, A .4         -> predicted {C}:    TP C
#   n3 gold {}       ranked D .7               -> predicted {D}:    FP D
#   E: never gold, never ranked (inactive)
GOLD = {"n1": ["A", "B"], "n2": ["C"], "n3": []}
SCORES = {"n1": {"A": 0.9, "C": 0.8, "B": 0.3}, "n2": {"C": 0.6, "A": 0.4}, "n3": {"D": 0.7}}
CODES = ["A", "B", "C", "D", "E"]


@pytest.fixture
def hand():
    return ScoreMatrix.from_dicts(GOLD, SCORES, codes=CODES)


def test_micro_prf(hand):
    r = all_metrics(hand, 0.5)
    # TP = 2 (n1 A, n2 C), FP = 2 (n1 C, n3 D), FN = 1 (n1 B)
    assert r["micro_precision"] == pytest.approx(2 / 4)
    assert r["micro_recall"] == pytest.approx(2 / 3)
    assert r["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))  # 4/7


def test_macro_prf(hand):
    r = all_metrics(hand, 0.5)
    # per code (TP, FP, FN):  A (1,0,0) F1 1, P 1, R 1
    #                         B (0,0,1) F1 0, P 0 (0/0 -> 0), R 0
    #                         C (1,1,0) F1 2/3, P 1/2, R 1
    #                         D (0,1,0) F1 0, P 0, R 0 (0/0 -> 0)
    #                         E (0,0,0) inactive: left out
    assert r["macro_f1"] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)  # 5/12
    assert r["macro_precision"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)  # 0.375
    assert r["macro_recall"] == pytest.approx((1 + 0 + 1 + 0) / 4)  # 0.5
    assert r["macro_f1_harmonic"] == pytest.approx(2 * 0.375 * 0.5 / (0.375 + 0.5))  # 3/7


def test_inactive_codes_do_not_change_macro(hand):
    bigger = ScoreMatrix.from_dicts(GOLD, SCORES, codes=CODES + [f"Z{i}" for i in range(50)])
    assert all_metrics(bigger, 0.5)["macro_f1"] == pytest.approx(all_metrics(hand, 0.5)["macro_f1"])


def test_auc_hand(hand):
    # 3 notes x 5 codes = 15 cells; positives n1A(.9) n1B(.3) n2C(.6); 12 negatives:
    # ranked negatives n1C .8, n3D .7, n2A .4 and 9 unranked (-inf).
    # n1A beats 12; n1B beats the 9 unranked; n2C beats 9 + .4 = 10  -> (12+9+10)/36
    assert M.micro_auc(hand) == pytest.approx(31 / 36)
    # per code: A pos n1 .9 vs neg n2 .4, n3 -inf -> 1; B pos .3 vs two -inf -> 1;
    # C pos n2 .6 vs n1 .8, n3 -inf -> 1/2; D and E have no positive -> skipped
    assert M.macro_auc(hand) == pytest.approx((1 + 1 + 0.5) / 3)


def test_auprc_hand(hand):
    # ranked cells, high to low: .9 hit, .8, .7, .6 hit, .4, .3 hit (3 positives, all ranked)
    # AP = sum (R_n - R_{n-1}) P_n = 1/3 * 1/1 + 1/3 * 2/4 + 1/3 * 3/6 = 2/3
    assert M.micro_auprc(hand) == pytest.approx(2 / 3)


def test_ranking_hand(hand):
    r = all_metrics(hand, 0.5)
    # n3 has no gold: left out of every ranking metric. n1: A hit, C, B hit; n2: C hit, A
    assert r["p@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)      # 0.3
    assert r["p@8"] == pytest.approx((2 / 8 + 1 / 8) / 2)      # 3/16
    assert r["p@15"] == pytest.approx((2 / 15 + 1 / 15) / 2)   # 0.1
    assert r["r@5"] == pytest.approx((2 / 2 + 1 / 1) / 2)      # 1
    assert r["r@15"] == pytest.approx(1.0)
    # R-precision: n1 R=2, top 2 = A, C -> 1/2; n2 R=1, top 1 = C -> 1
    assert r["r_precision"] == pytest.approx((0.5 + 1) / 2)
    # AP n1 = (P@1 + P@3) / 2 = (1 + 2/3) / 2 = 5/6; AP n2 = P@1 / 1 = 1  -> MAP 11/12
    assert r["map"] == pytest.approx((5 / 6 + 1) / 2)
    # R@1: n1 1/2, n2 1/1 -> 3/4
    assert M.ranking_metrics(hand, ks=(1,))["r@1"] == pytest.approx(0.75)


def test_exact_match_hand(hand):
    # n1 {A,C} != {A,B}; n2 {C} == {C}; n3 {D} != {} -> 1/3
    assert all_metrics(hand, 0.5)["exact_match"] == pytest.approx(1 / 3)
    # at threshold 0.95 nothing is predicted: only n3 (no gold) matches -> 1/3
    assert all_metrics(hand, 0.95)["exact_match"] == pytest.approx(1 / 3)


def test_counts_and_keys(hand):
    r = all_metrics(hand, 0.5)
    assert r["n_notes"] == 3 and r["n_codes"] == 5
    tp, fp, fn = M.per_code_counts(hand, hand.predicted(0.5))
    assert tp.tolist() == [1, 0, 1, 0, 0] and fp.tolist() == [0, 0, 1, 1, 0] and fn.tolist() == [0, 1, 0, 0, 0]


def test_threshold_is_inclusive():
    m = ScoreMatrix.from_dicts({"n": ["A"]}, {"n": {"A": 0.5}})
    assert all_metrics(m, 0.5)["micro_f1"] == 1.0          # 0.5 >= 0.5
    assert all_metrics(m, 0.5000001)["micro_f1"] == 0.0


def test_ties_in_scores():
    # one code, positives .5 and .9, negatives .5 and -inf: pairs (.9 beats both) 2,
    # (.5 vs .5 tie) 1/2, (.5 beats -inf) 1 -> 3.5 / 4
    m = ScoreMatrix.from_dicts({"a": ["X"], "b": ["X"], "c": [], "d": []},
                               {"a": {"X": 0.5}, "b": {"X": 0.9}, "c": {"X": 0.5}, "d": {}})
    assert M.micro_auc(m) == pytest.approx(3.5 / 4)
    assert M.macro_auc(m) == pytest.approx(3.5 / 4)
    # AUPRC: thresholds .9 (P 1, R 1/2), .5 (P 2/3, R 1) -> 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert M.micro_auprc(m) == pytest.approx(5 / 6)
    # ranking ties keep the coder's order: A then B (both .5), gold B at rank 2 -> AP 1/2
    t = ScoreMatrix.from_dicts({"n": ["B"]}, {"n": {"A": 0.5, "B": 0.5}})
    assert all_metrics(t, 0.5)["map"] == pytest.approx(0.5)


def test_code_without_positives_or_negatives_skipped_in_macro_auc():
    # X: positive in both notes (no negative) -> skipped; Y: no positive -> skipped; Z: 1 pos 1 neg
    m = ScoreMatrix.from_dicts({"a": ["X", "Z"], "b": ["X"]},
                               {"a": {"X": 0.2, "Y": 0.9, "Z": 0.8}, "b": {"X": 0.1, "Z": 0.3}})
    assert M.macro_auc(m) == pytest.approx(1.0)        # only Z: .8 > .3
    only_x = ScoreMatrix.from_dicts({"a": ["X"]}, {"a": {"X": 0.2}})
    assert M.macro_auc(only_x) is None                 # no code qualifies


def test_empty_predictions():
    m = ScoreMatrix.from_dicts({"a": ["X"], "b": ["Y", "X"], "c": []}, {"a": {}, "b": {}, "c": {}})
    r = all_metrics(m, 0.5)
    assert r["micro_f1"] == 0 and r["micro_precision"] == 0 and r["micro_recall"] == 0
    assert r["macro_f1"] == 0 and r["p@5"] == 0 and r["r@5"] == 0 and r["map"] == 0
    assert r["micro_auc"] == pytest.approx(0.5) and r["macro_auc"] == pytest.approx(0.5)  # all tied at -inf
    assert r["exact_match"] == pytest.approx(1 / 3)    # only the note without gold


def test_no_gold_anywhere():
    m = ScoreMatrix.from_dicts({"a": []}, {"a": {"X": 0.9}})
    r = all_metrics(m, 0.5)
    assert r["micro_f1"] == 0 and r["micro_auc"] is None and r["micro_auprc"] is None
    assert r["p@5"] is None and r["map"] is None and r["exact_match"] == 0


def test_unscored_predictions_are_sets_as_given():
    m = ScoreMatrix.from_dicts({"a": ["X"], "b": ["Y"]}, {"a": {"X": 1.0, "Z": 1.0}, "b": {"Y": 1.0}},
                               unscored=["a", "b"])
    for t in (0.5, 1.0, 7.0):  # any threshold: the sets as given
        r = all_metrics(m, t)
        assert r["micro_precision"] == pytest.approx(2 / 3) and r["micro_recall"] == 1.0


def _random_case(seed, n=80, k=30, p_gold=0.12, p_ranked=0.5):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, k)) < p_gold).astype(int)
    S = np.where(rng.random((n, k)) < p_ranked, np.round(rng.random((n, k)), 1), -np.inf)  # many ties
    gold = {f"n{i}": [f"c{j}" for j in range(k) if Y[i, j]] for i in range(n)}
    sc = {f"n{i}": {f"c{j}": float(S[i, j]) for j in range(k) if S[i, j] > -np.inf} for i in range(n)}
    m = ScoreMatrix.from_dicts(gold, sc, codes=[f"c{j}" for j in range(k)])
    return m, Y, np.where(np.isinf(S), -1e9, S)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed):
    m, Y, S = _random_case(seed)
    r = all_metrics(m, 0.5)
    P = (S >= 0.5).astype(int)
    assert r["micro_f1"] == pytest.approx(f1_score(Y, P, average="micro", zero_division=0))
    active = np.flatnonzero((Y | P).sum(axis=0) > 0)
    assert r["macro_f1"] == pytest.approx(f1_score(Y, P, average="macro", labels=active, zero_division=0))
    assert r["macro_precision"] == pytest.approx(precision_score(Y, P, average="macro", labels=active, zero_division=0))
    assert r["macro_recall"] == pytest.approx(recall_score(Y, P, average="macro", labels=active, zero_division=0))
    assert r["micro_auc"] == pytest.approx(roc_auc_score(Y.ravel(), S.ravel()))
    ok = [j for j in range(Y.shape[1]) if 0 < Y[:, j].sum() < Y.shape[0]]
    assert r["macro_auc"] == pytest.approx(np.mean([roc_auc_score(Y[:, j], S[:, j]) for j in ok]))
    assert r["micro_auprc"] == pytest.approx(average_precision_score(Y.ravel(), S.ravel()))
    # exact match against the dense definition
    assert r["exact_match"] == pytest.approx(np.mean((Y == P).all(axis=1)))


def test_ranking_against_dense_reference():
    m, Y, S = _random_case(5, p_ranked=0.7)
    has = Y.sum(axis=1) > 0
    pk, rk, rp, ap = [], [], [], []
    for i in np.flatnonzero(has):
        order = [j for j in np.argsort(-S[i], kind="stable") if S[i, j] > -1e9]  # ranked codes only
        # ScoreMatrix ranks ties in dict order = column order: argsort stable agrees
        rel = Y[i, order]
        R = Y[i].sum()
        pk.append(rel[:5].sum() / 5)
        rk.append(rel[:5].sum() / R)
        rp.append(rel[:R].sum() / R)
        ap.append(sum(rel[:k + 1].sum() / (k + 1) for k in range(len(rel)) if rel[k]) / R)
    r = all_metrics(m, 0.5)
    assert r["p@5"] == pytest.approx(np.mean(pk)) and r["r@5"] == pytest.approx(np.mean(rk))
    assert r["r_precision"] == pytest.approx(np.mean(rp)) and r["map"] == pytest.approx(np.mean(ap))


def test_scale_sparse_memory():
    # 20k notes x 8k codes, 40 ranked codes per note: nothing dense is ever built
    rng = np.random.default_rng(0)
    n, k, per = 20_000, 8_000, 40
    rows = np.repeat(np.arange(n), per)
    cols = rng.integers(0, k, size=n * per)
    keys = np.unique(rows * k + cols)
    rows, cols = keys // k, keys % k
    scores = rng.random(len(rows))
    order = np.lexsort((-scores, rows))
    rows, cols, scores = rows[order], cols[order], scores[order]
    g_rows = np.repeat(np.arange(n), 10)
    g_cols = rng.integers(0, k, size=n * 10)
    gold = sp.csr_matrix((np.ones(len(g_rows), dtype=bool), (g_rows, g_cols)), shape=(n, k))
    gold.sum_duplicates()
    hit = M._cells_in(rows * k + cols, gold)
    m = ScoreMatrix([str(i) for i in range(n)], [str(j) for j in range(k)], gold, rows, cols, scores, hit,
                    np.ones(n, dtype=bool))
    r = all_metrics(m, 0.5)
    assert r["n_notes"] == n and 0.4 < r["micro_auc"] < 0.6


# --- protocol-level alignment -------------------------------------------------------------------
def _note(i, codes):
    return Note.build(i, "some text", [(c, "icd10cm") for c in codes])


def test_evaluate_top_level_keys_and_alignment():
    gold = [_note("n1", ["I50.9", "E11.9"]), _note("n2", ["J18.9"])]
    preds = [Prediction.from_scores("n2", {"J18.9": 0.9}), Prediction.from_scores("n1", {"I50.9": 0.8, "J18.9": 0.7})]
    r = evaluate(gold, preds, threshold=0.5, label_space=None, train_counts={"I50.9": 50, "J18.9": 500}, codes="all")
    for k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall", "micro_auc", "macro_auc", "micro_auprc",
              "p@5", "p@8", "p@15", "r@5", "r@8", "r@15", "r_precision", "map", "exact_match", "n_notes", "n_codes",
              "macro_precision", "macro_recall", "macro_f1_harmonic", "threshold", "by_bucket", "by_system"):
        assert k in r
    # TP I50.9, J18.9(n2); FP J18.9(n1); FN E11.9 -> P 2/3, R 2/3
    assert r["micro_precision"] == pytest.approx(2 / 3) and r["micro_recall"] == pytest.approx(2 / 3)
    assert r["n_codes"] == 3 and r["by_system"]["icd10cm"]["n_codes"] == 3
    # buckets: E11.9 unseen (FN), I50.9 11-100 (TP), J18.9 >100 (TP + FP)
    assert r["by_bucket"]["unseen"]["micro_recall"] == 0
    assert r["by_bucket"]["11-100"]["micro_f1"] == 1.0
    assert r["by_bucket"][">100"]["micro_precision"] == pytest.approx(0.5)
    assert r["by_bucket"]["1-10"]["n_codes"] == 0
    seen = evaluate(gold, preds, threshold=0.5, label_space=None, train_counts={"I50.9": 50, "J18.9": 500},
                    codes="seen")
    assert seen["n_codes"] == 2 and seen["micro_recall"] == 1.0
    import json
    json.dumps(r, allow_nan=False)


def test_missing_and_extra_ids():
    gold = [_note("n1", ["I50.9"]), _note("n2", ["J18.9"])]
    with pytest.raises(DataError, match="'n2'"):
        evaluate(gold, [Prediction.from_scores("n1", {"I50.9": 0.9})], threshold=0.5)
    preds = [Prediction.from_scores(i, {"I50.9": 0.9}) for i in ("n1", "n2", "zz")]
    with pytest.raises(DataError, match="'zz'"):
        evaluate(gold, preds, threshold=0.5)
    r = evaluate(gold, preds, threshold=0.5, allow_extra=True)
    assert r["n_extra_predictions"] == 1 and r["n_notes"] == 2


def test_explicit_label_space_drops_and_counts():
    gold = [_note("n1", ["I50.9", "E11.9"])]
    preds = [Prediction.from_scores("n1", {"I50.9": 0.9, "Q99.9": 0.8})]
    r = evaluate(gold, preds, threshold=0.5, label_space=["I50.9"])
    assert r["n_codes"] == 1 and r["micro_f1"] == 1.0 and r["n_pred_outside"] == 1 and r["n_gold_outside"] == 1
    # default label space keeps every predicted code: the hallucinated Q99.9 is a false positive
    r = evaluate(gold, preds, threshold=0.5)
    assert r["micro_precision"] == pytest.approx(0.5)
