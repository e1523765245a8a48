"""Span-level evidence scores (icdcoder.evaluation.evidence)."""

import pytest

from icdcoder.data.note import Note, Span
from icdcoder.evaluation.evidence import evidence_scores, has_gold_spans
from icdcoder.prediction import Evidence, Prediction, ScoredCode

TEXT = "History of hypertension and type 2 diabetes. Chest pain on exertion."
#       0         1         2         3         4         5         6
#       0123456789012345678901234567890123456789012345678901234567890123456789
HTN = (11, 23)   # "hypertension"
DM = (28, 43)    # "type 2 diabetes"
PAIN = (45, 55)  # "Chest pain"


def note(id="n1", spans=(), codes=("I10", "E11.9", "R07.9")):
    return Note.build(id, TEXT, [(c, "icd10cm") for c in codes],
                      spans=[Span(code=c, start=s, end=e) for c, s, e in spans])


def pred(id="n1", **codes):
    """``pred(I10=(0.9, [(11, 23)]))``: code -> (score, evidence ranges); dots in codes written as _."""
    return Prediction(id=id, codes=[
        ScoredCode(code=c.replace("_", "."), score=s, evidence=[Evidence(start=a, end=b) for a, b in ev])
        for c, (s, ev) in codes.items()])


GOLD = [("I10", *HTN), ("E11.9", *DM)]


def test_perfect_match():
    out = evidence_scores([note(spans=GOLD)], [pred(I10=(0.9, [HTN]), E11_9=(0.8, [DM]))])
    assert out == {
        "evidence_precision": 1.0, "evidence_recall": 1.0, "evidence_f1": 1.0,
        "n_pred_spans": 2, "n_gold_spans": 2, "n_matched": 2, "notes_with_gold_spans": 1,
        "codes_with_evidence": 1.0, "code_correct_evidence_recall": 1.0,
        "codiesp_x_precision": 1.0, "codiesp_x_recall": 1.0, "codiesp_x_f1": 1.0,
    }


def test_one_shared_character_counts():
    # predicted [22, 30) shares only TEXT[22] ("n" of hypertension) with the gold [11, 23)
    out = evidence_scores([note(spans=[("I10", *HTN)])], [pred(I10=(0.9, [(22, 30)]))])
    assert out["n_matched"] == 1
    assert out["evidence_precision"] == 1.0 and out["evidence_recall"] == 1.0


def test_touching_spans_do_not_match():
    # [23, 30) starts where the gold [11, 23) ends; [0, 11) ends where it starts: no shared character
    out = evidence_scores([note(spans=[("I10", *HTN)])], [pred(I10=(0.9, [(23, 30), (0, 11)]))])
    assert out["n_matched"] == 0
    assert out["n_pred_spans"] == 2
    assert out["evidence_precision"] == 0.0 and out["evidence_recall"] == 0.0
    assert out["evidence_f1"] == 0.0


def test_right_span_wrong_code_does_not_count():
    out = evidence_scores([note(spans=[("I10", *HTN)])], [pred(E11_9=(0.9, [HTN]))])
    assert out["n_matched"] == 0
    assert out["evidence_precision"] == 0.0 and out["evidence_recall"] == 0.0
    assert out["code_correct_evidence_recall"] is None  # I10 was not kept: no gold span of a kept code


def test_two_predicted_spans_over_one_gold_span_match_once():
    out = evidence_scores([note(spans=[("I10", *HTN)])], [pred(I10=(0.9, [(11, 16), (16, 23)]))])
    assert out["n_matched"] == 1
    assert out["n_pred_spans"] == 2
    assert out["evidence_precision"] == 0.5
    assert out["evidence_recall"] == 1.0
    assert out["evidence_f1"] == pytest.approx(2 / 3)


def test_one_predicted_span_over_two_gold_spans_credits_one_by_largest_overlap():
    gold = [("I10", 0, 10), ("I10", 11, 23)]
    out = evidence_scores([note(spans=gold)], [pred(I10=(0.9, [(8, 23)]))])
    assert out["n_matched"] == 1
    assert out["evidence_precision"] == 1.0 and out["evidence_recall"] == 0.5
    # greedy by overlap: the span over [8, 23) takes [11, 23) (12 chars), leaving [0, 10) for [0, 9)
    out = evidence_scores([note(spans=gold)], [pred(I10=(0.9, [(8, 23), (0, 9)]))])
    assert out["n_matched"] == 2


def test_threshold_drops_a_codes_spans():
    p = pred(I10=(0.9, [HTN]), E11_9=(0.4, [DM]))
    out = evidence_scores([note(spans=GOLD)], [p])
    assert (out["n_pred_spans"], out["n_matched"], out["n_gold_spans"]) == (1, 1, 2)
    assert out["evidence_precision"] == 1.0
    assert out["evidence_recall"] == 0.5
    assert out["evidence_f1"] == pytest.approx(2 / 3)
    assert out["code_correct_evidence_recall"] == 1.0  # the one gold span of a kept code is found
    low = evidence_scores([note(spans=GOLD)], [p], thresholds=0.3)
    assert (low["n_pred_spans"], low["n_matched"]) == (2, 2)
    per_code = evidence_scores([note(spans=GOLD)], [p], thresholds=lambda c: 0.95 if c == "I10" else 0.3)
    assert (per_code["n_pred_spans"], per_code["n_matched"]) == (1, 1)
    assert per_code["code_correct_evidence_recall"] == 1.0


def test_unscored_prediction_keeps_its_code_set():
    p = Prediction.from_code_set("n1", ["I10"])
    p.codes[0] = ScoredCode(code="I10", score=1.0, evidence=[Evidence(start=11, end=23)])
    out = evidence_scores([note(spans=GOLD)], [p], thresholds=2.0)
    assert (out["n_pred_spans"], out["n_matched"]) == (1, 1)


def test_notes_without_gold_spans():
    gold = [note("a"), note("b", spans=[("I10", *HTN)]), note("c")]
    preds = [pred("a", I10=(0.9, [HTN])), pred("b", I10=(0.9, [HTN])), pred("c")]
    out = evidence_scores(gold, preds)
    assert out["notes_with_gold_spans"] == 1
    assert (out["n_pred_spans"], out["n_gold_spans"], out["n_matched"]) == (2, 1, 1)
    assert out["evidence_precision"] == 0.5  # spans predicted where nothing is annotated still count
    assert out["evidence_recall"] == 1.0
    assert has_gold_spans(gold) is True
    assert has_gold_spans([note("a"), note("c")]) is False
    assert has_gold_spans([]) is False


def test_nothing_to_score_gives_none():
    out = evidence_scores([note("a")], [pred("a", I10=(0.9, []))])
    assert out["evidence_precision"] is None
    assert out["evidence_recall"] is None
    assert out["evidence_f1"] is None
    assert out["code_correct_evidence_recall"] is None
    assert (out["n_pred_spans"], out["n_gold_spans"], out["n_matched"], out["notes_with_gold_spans"]) == (0, 0, 0, 0)
    assert out["codes_with_evidence"] == 0.0
    empty = evidence_scores([], [])
    assert empty["codes_with_evidence"] is None and empty["evidence_f1"] is None
    # gold spans but no predicted spans: recall 0, precision undefined, F1 undefined
    out = evidence_scores([note(spans=GOLD)], [pred(I10=(0.9, []))])
    assert out["evidence_recall"] == 0.0 and out["evidence_precision"] is None and out["evidence_f1"] is None
    assert out["code_correct_evidence_recall"] == 0.0


def test_codes_with_evidence():
    gold = [note("a", spans=GOLD), note("b")]
    preds = [pred("a", I10=(0.9, [HTN]), E11_9=(0.8, []), R07_9=(0.2, [PAIN])),  # R07.9 not kept
             pred("b", I10=(0.7, [HTN, (0, 7)]), E11_9=(0.6, []))]
    out = evidence_scores(gold, preds)
    assert out["codes_with_evidence"] == 0.5  # kept: a/I10 (yes), a/E11.9 (no), b/I10 (yes), b/E11.9 (no)
    assert out["n_pred_spans"] == 3
    assert out["n_matched"] == 1
    assert out["evidence_precision"] == pytest.approx(1 / 3)
    assert out["evidence_recall"] == 0.5
    assert out["code_correct_evidence_recall"] == 0.5  # both gold spans are of kept codes, one found


def test_pooled_over_notes():
    gold = [note("a", spans=GOLD), note("b", spans=[("R07.9", *PAIN)])]
    preds = [pred("a", I10=(0.9, [HTN]), E11_9=(0.9, [(0, 5)])), pred("b", R07_9=(0.9, [(50, 68)]))]
    out = evidence_scores(gold, preds)
    assert (out["n_pred_spans"], out["n_gold_spans"], out["n_matched"]) == (3, 3, 2)
    assert out["evidence_precision"] == pytest.approx(2 / 3)
    assert out["evidence_recall"] == pytest.approx(2 / 3)
    assert out["evidence_f1"] == pytest.approx(2 / 3)
    assert out["notes_with_gold_spans"] == 2


def test_mismatched_ids_raise():
    with pytest.raises(ValueError, match="aligned"):
        evidence_scores([note("a"), note("b")], [pred("a"), pred("c")])
    with pytest.raises(ValueError, match="gold notes"):
        evidence_scores([note("a")], [pred("a"), pred("b")])


def test_codiesp_x_official_rule_is_reported_beside_the_overlap_score():
    from icdcoder.data.note import Note, Span
    from icdcoder.evaluation.evidence import evidence_scores
    from icdcoder.prediction import Evidence, Prediction, ScoredCode

    text = "x" * 100
    note = Note(id="a", text=text, codes=["I10", "E11.9"], code_systems={"I10": "icd10cm", "E11.9": "icd10cm"},
                spans=[Span(code="I10", start=20, end=30), Span(code="E11.9", start=50, end=60)])
    pred = Prediction(id="a", codes=[
        # contains the gold reference with 5 characters of slack at each end: an official hit
        ScoredCode(code="I10", score=0.9, evidence=[Evidence(start=15, end=35)]),
        # overlaps but sits inside the gold reference: counts for overlap, not for the official rule
        ScoredCode(code="E11.9", score=0.9, evidence=[Evidence(start=52, end=58)]),
    ])
    out = evidence_scores([note], [pred])
    assert out["evidence_f1"] == 1.0
    assert out["codiesp_x_precision"] == 0.5 and out["codiesp_x_recall"] == 0.5
    wide = Prediction(id="a", codes=[ScoredCode(code="I10", score=0.9, evidence=[Evidence(start=5, end=30)])])
    assert evidence_scores([note], [wide])["codiesp_x_precision"] == 0.0  # 15 characters of slack: too many
