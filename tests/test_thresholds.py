import numpy as np
import pytest

from icdcoder.evaluation import ScoreMatrix, Thresholds, all_metrics, tune_global, tune_per_code
from icdcoder.evaluation.metrics import set_metrics


def _crafted():
    # one code A; ranked (score, gold): .9 T, .8 T, .7 F, .6 T, .3 F, .2 F; plus n7 gold A unranked (4 gold)
    # micro F1 = 2TP / (2TP + FP + FN) at each candidate threshold:
    #   .9: TP1 FP0 FN3 -> 2/5 = .400     .8: TP2 FP0 FN2 -> 4/6 = .667
    #   .7: TP2 FP1 FN2 -> 4/7 = .571     .6: TP3 FP1 FN1 -> 6/8 = .750  <- best
    #   .3: TP3 FP2 FN1 -> 6/9 = .667     .2: TP3 FP3 FN1 -> 6/10 = .600
    gold = {"n1": ["A"], "n2": ["A"], "n3": [], "n4": ["A"], "n5": [], "n6": [], "n7": ["A"]}
    scores = {"n1": {"A": .9}, "n2": {"A": .8}, "n3": {"A": .7}, "n4": {"A": .6}, "n5": {"A": .3},
              "n6": {"A": .2}, "n7": {}}
    return ScoreMatrix.from_dicts(gold, scores)


def test_global_finds_crafted_optimum():
    t = tune_global(_crafted())
    assert t.threshold == pytest.approx(0.6)
    assert t.val_micro_f1 == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(4))
def test_global_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = 50, 12
    gold = {f"n{i}": [f"c{j}" for j in range(k) if rng.random() < 0.2] for i in range(n)}
    scores = {f"n{i}": {f"c{j}": float(np.round(rng.random(), 2)) for j in range(k) if rng.random() < 0.6}
              for i in range(n)}
    m = ScoreMatrix.from_dicts(gold, scores, codes=[f"c{j}" for j in range(k)])
    best = max(set_metrics(m, m.predicted(s))["micro_f1"] for s in np.unique(m.scores))
    t = tune_global(m)
    assert t.val_micro_f1 == pytest.approx(best)
    assert set_metrics(m, m.predicted(t.threshold))["micro_f1"] == pytest.approx(best)
    # per-code thresholds are never worse on validation than the global one
    pc = tune_per_code(m)
    assert set_metrics(m, pc.apply(m))["micro_f1"] >= best - 1e-12
    assert pc.val_micro_f1 == pytest.approx(set_metrics(m, pc.apply(m))["micro_f1"])


def test_ties_are_taken_whole():
    # .5 T and .5 F tied: a threshold takes both. Best: .9 alone (TP1 FP0 FN1 -> 2/3)
    # versus .5 (TP2 FP1 FN0 -> 4/5) -> .5 wins with both tied entries predicted
    m = ScoreMatrix.from_dicts({"a": ["X"], "b": ["X"], "c": []}, {"a": {"X": .9}, "b": {"X": .5}, "c": {"X": .5}})
    t = tune_global(m)
    assert t.threshold == 0.5 and t.val_micro_f1 == pytest.approx(0.8)


def test_predict_nothing_when_every_score_is_wrong():
    m = ScoreMatrix.from_dicts({"a": ["X"], "b": []}, {"a": {}, "b": {"X": .4}})
    t = tune_global(m)
    assert t.threshold > 0.4 and all_metrics(m, t.threshold)["micro_precision"] == 0


def test_per_code_with_fallback():
    # A: the crafted case (best .6). B: .95 F, .5 T -> best .5 (F1 2/3). C: no val positive -> global.
    base = _crafted()
    gold = {i: list(base.codes[j] for j in base.gold[r].indices) for r, i in enumerate(base.ids)}
    scores = {"n1": {"A": .9, "B": .95}, "n2": {"A": .8, "B": .5, "C": .99}, "n3": {"A": .7}, "n4": {"A": .6},
              "n5": {"A": .3}, "n6": {"A": .2}, "n7": {}}
    gold["n2"] = gold["n2"] + ["B"]
    m = ScoreMatrix.from_dicts(gold, scores)
    t = tune_per_code(m, global_threshold=0.7)
    assert t.threshold == 0.7
    assert t.per_code == {"A": pytest.approx(0.6), "B": pytest.approx(0.5)}
    pred = t.apply(m)
    # C (.99) uses the global .7 -> predicted, a false positive
    c_entry = (m.cols == m.codes.index("C"))
    assert pred[c_entry].all()


def test_unscored_threshold_is_one():
    m = ScoreMatrix.from_dicts({"a": ["X"]}, {"a": {"X": 1.0}}, unscored=["a"])
    assert tune_global(m).threshold == 1.0


def test_json_roundtrip():
    t = Thresholds(0.3, {"A": 0.6}, 0.7)
    assert Thresholds.from_json(t.to_json()) == t


def test_applied_to_test_split():
    val = _crafted()
    test = ScoreMatrix.from_dicts({"t1": ["A"], "t2": []}, {"t1": {"A": 0.65}, "t2": {"A": 0.59}})
    t = tune_global(val)
    r = all_metrics(test, t.threshold)
    assert r["micro_precision"] == 1.0 and r["micro_recall"] == 1.0  # .65 >= .6 predicted; .59 not
