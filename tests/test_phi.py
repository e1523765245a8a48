"""The PHI curriculum's plain functions: missed codes, per-code recall, weights, hint sampling, pools."""

import math
import random
from collections import Counter

import pytest

from icdcoder.training.phi import PhiSettings, build_round, code_recall, code_weights, missed_codes, sample_hint

GOLD = {"n1": ["A", "B", "C"], "n2": ["A", "D"], "n3": ["B"]}
PRED = {"n1": ["A", "X"], "n2": ["A", "D"], "n3": []}


def test_missed_codes_lists_only_notes_that_miss():
    assert missed_codes(GOLD, PRED) == {"n1": ["B", "C"], "n3": ["B"]}


def test_code_recall_per_gold_code():
    assert code_recall(GOLD, PRED) == {"A": 1.0, "B": 0.0, "C": 0.0, "D": 1.0}


def test_weights_follow_formula_with_floor_and_cap():
    freq = {"A": 100, "B": 4, "C": 1, "D": 25}
    recall = {"A": 1.0, "B": 0.5, "C": 0.0, "D": 0.2}
    raw = {"A": 1 / 10 * 1, "B": 1 / 2 * 2, "C": 1 / 1 * 20, "D": 1 / 5 * 5}  # C: recall floored at 0.05
    median = sorted(raw.values())[1:3]
    cap = 3 * (median[0] + median[1]) / 2
    w = code_weights(freq, recall)
    assert w["A"] == pytest.approx(0.1) and w["B"] == pytest.approx(1.0) and w["D"] == pytest.approx(1.0)
    assert w["C"] == pytest.approx(cap) and cap < raw["C"]  # capped at 3x the median
    assert code_weights({}, {}) == {}


def test_hint_has_one_to_five_distinct_missed_codes():
    rng = random.Random(0)
    missed = [f"C{i}" for i in range(9)]
    sizes = Counter()
    for _ in range(500):
        h = sample_hint(missed, {}, rng)
        assert 1 <= len(h) <= 5 and len(set(h)) == len(h) and set(h) <= set(missed) and h == sorted(h)
        sizes[len(h)] += 1
    assert set(sizes) == {1, 2, 3, 4, 5}  # the number of hinted codes is drawn uniformly
    assert sample_hint(["Z"], {"Z": 2.0}, rng) == ["Z"]
    assert sample_hint([], {}, rng) == []


def test_hint_draws_follow_cube_root_of_weight():
    rng = random.Random(1)
    weights = {"heavy": 27.0, "light": 1.0}  # cube roots 3 : 1
    draws = Counter()
    n = 8000
    for _ in range(n):
        draws[sample_hint(["heavy", "light"], weights, rng, max_codes=1)[0]] += 1
    assert draws["heavy"] / n == pytest.approx(0.75, abs=0.02)


def test_round_pool_hint_probability_and_cap():
    rng = random.Random(2)
    missed = {f"n{i}": ["A", "B"] for i in range(400)}
    pool = build_round(missed, {"A": 1.0, "B": 1.0}, rng, PhiSettings(hint_prob=0.5))
    assert sorted(i for i, _ in pool) == sorted(missed)
    share = sum(bool(h) for _, h in pool) / len(pool)
    assert abs(share - 0.5) < 3 * math.sqrt(0.25 / len(pool))
    assert all(set(h) <= {"A", "B"} for _, h in pool)
    capped = build_round({"a": ["X"], "b": ["Y", "Z"], "c": ["X"]}, {"X": 1.0, "Y": 5.0, "Z": 1.0}, rng,
                         PhiSettings(hint_prob=0.0, max_notes_per_round=1))
    assert capped == [("b", [])]  # the note missing the most weight is kept, hint-free at prob 0
