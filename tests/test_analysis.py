import json

import pytest

from icdcoder.evaluation import ScoreMatrix, error_analysis, relation
from icdcoder.evaluation.analysis import near_misses, per_code_table, per_note_lists, prefix_parent


@pytest.mark.parametrize("gold,pred,rel", [
    ("I50.23", "I50.9", "sibling"),   # same category I50
    ("I50.23", "I50.2", "parent"),    # predicted the parent
    ("I50.23", "I50", "parent"),      # predicted the category (an ancestor)
    ("I50.2", "I50.23", "child"),     # predicted a child
    ("I50.23", "J18.9", None),
    ("428.0", "428.1", "sibling"),    # ICD-9-CM
    ("I50.23", "I50.23", None),
])
def test_relation_prefix_fallback(gold, pred, rel):
    assert relation(gold, pred) == rel


def test_relation_uses_given_hierarchy():
    # a hierarchy where K1 and Q7 share a parent although no prefix does
    tree = {"K1": "ROOT", "Q7": "ROOT"}
    assert relation("K1", "Q7", parent=lambda c, s: tree.get(c)) == "sibling"
    assert relation("K1", "ROOT", parent=lambda c, s: tree.get(c)) == "parent"
    assert prefix_parent("I50.23") == "I502" and prefix_parent("I50") is None


def _case():
    # threshold .5:
    #   n1 gold {I50.23, E11.9}  predicted {I50.9, E11.9}  -> missed I50.23, spurious I50.9 (sibling)
    #   n2 gold {I50.23}         predicted {I50.2}          -> missed I50.23, spurious I50.2 (parent)
    #   n3 gold {J18.9}          predicted {J18.9, N17.9}   -> spurious N17.9 (unrelated)
    gold = {"n1": ["I50.23", "E11.9"], "n2": ["I50.23"], "n3": ["J18.9"]}
    scores = {"n1": {"I50.9": .9, "E11.9": .8, "I50.23": .1}, "n2": {"I50.2": .7}, "n3": {"J18.9": .95, "N17.9": .6}}
    return ScoreMatrix.from_dicts(gold, scores)


def test_per_code_table():
    m = _case()
    rows = {r["code"]: r for r in per_code_table(m, m.predicted(0.5), {"I50.23": 3})}
    # I50.23: support 2, TP 0, FN 2; E11.9: TP 1; I50.9: FP 1
    assert rows["I50.23"] == {"code": "I50.23", "support": 2, "tp": 0, "fp": 0, "fn": 2, "precision": 0.0,
                              "recall": 0.0, "f1": 0.0, "train_count": 3}
    assert rows["E11.9"]["f1"] == 1.0 and rows["I50.9"]["fp"] == 1 and rows["I50.9"]["support"] == 0
    assert rows["J18.9"]["tp"] == 1 and rows["N17.9"]["precision"] == 0.0


def test_per_note_lists():
    m = _case()
    notes = {n["id"]: n for n in per_note_lists(m, m.predicted(0.5))}
    assert notes["n1"] == {"id": "n1", "gold": ["E11.9", "I50.23"], "predicted": ["I50.9", "E11.9"],
                           "missed": ["I50.23"], "spurious": ["I50.9"]}
    assert notes["n3"]["missed"] == [] and notes["n3"]["spurious"] == ["N17.9"]


def test_near_misses_and_summary():
    m = _case()
    r = error_analysis(m, m.predicted(0.5), use_ontology=False)
    pairs = {(x["id"], x["gold"], x["predicted"], x["relation"]) for x in r["near_misses"]["pairs"]}
    assert pairs == {("n1", "I50.23", "I50.9", "sibling"), ("n2", "I50.23", "I50.2", "parent")}
    assert r["near_misses"]["by_relation"] == {"sibling": 1, "parent": 1}
    assert r["most_missed"][0] == {"code": "I50.23", "fn": 2, "support": 2}
    assert {x["code"] for x in r["most_spurious"]} == {"I50.9", "I50.2", "N17.9"}
    json.dumps(r, allow_nan=False)


def test_near_misses_respect_code_systems():
    notes = [{"id": "x", "missed": ["428.0"], "spurious": ["428.1"]}]
    assert near_misses(notes, {"428.0": "icd9cm", "428.1": "icd9cm"})
    assert not near_misses(notes, {"428.0": "icd9cm", "428.1": "icd10cm"})
