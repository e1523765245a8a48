import json

import pytest

from icdcoder.data.note import Note
from icdcoder.data.store import write_dataset
from icdcoder.errors import DataError
from icdcoder.evaluation import compare, evaluate, evaluate_files
from icdcoder.evaluation.traps import trap_counts, trap_errors
from icdcoder.io import write_json
from icdcoder.prediction import Prediction, write_predictions


def _note(nid, codes, traps=None):
    meta = {} if traps is None else {"traps": [{"kind": k, "code": c, "start": 0, "end": 4} for k, c in traps]}
    return Note.build(nid, "text of note " + nid, [(c, "icd10cm") for c in codes], metadata=meta)


def _case():
    notes = [
        _note("n1", ["E11.65", "I10", "Z80.3"],
              [("negated", "J18.9"), ("negated", "J18.9"),  # two mentions of one code: one (note, code) pair
               ("negated", "N39.0"), ("ruled_out", "I21.4"), ("uncertain", "A41.9"), ("family", "C50.919")]),
        _note("n2", ["I50.23", "E11.9"],
              [("uncertain", "E11.9"),  # gold for another reason: left out
               ("negated", "J44.9"), ("family", "J44.9")]),  # one code, two kinds: one pair in "all"
        _note("n3", ["J18.9"], []),
        _note("n4", ["N17.9"], [("negated", "A41.9")]),
    ]
    preds = [
        Prediction.from_scores("n1", {"E11.65": .9, "I10": .8, "Z80.3": .7,
                                      "J18.9": .6,      # negated, predicted
                                      "N39.0": .4,      # negated, below the threshold
                                      "I21.4": .5,      # ruled out, exactly at the threshold: predicted
                                      "A41.9": .2,      # uncertain, not predicted
                                      "C50.919": .55,   # family, predicted
                                      "E11.9": .6,      # wrong sibling of E11.65
                                      "E11.6": .7,      # ancestor of E11.65: not a sibling error
                                      "E11": .6}),      # the category itself: not a sibling error
        Prediction.from_scores("n2", {"I50.23": .9, "E11.9": .9,
                                      "I50.9": .51,     # wrong sibling of I50.23
                                      "E11.65": .7,     # wrong sibling of E11.9
                                      "I50.2": .8,      # ancestor: no
                                      "I50.231": .8,    # descendant: no
                                      "I50.32": .3,     # sibling below the threshold: no
                                      "J44.1": .9}),    # another category than every gold code: no
        Prediction.from_scores("n3", {"J18.9": .9}),
        Prediction.from_code_set("n4", ["N17.9", "A41.9", "N17.0"]),  # unscored: every code is predicted
    ]
    return notes, preds


def _brief(r):
    return {k: (v["mentions"], v["errors"]) for k, v in r.items() if isinstance(v, dict) and "mentions" in v}


def test_counts_at_threshold():
    notes, preds = _case()
    r = trap_errors(notes, preds, 0.5)
    assert _brief(r) == {"negated": (4, 2), "ruled_out": (1, 1), "uncertain": (1, 0), "family": (2, 1),
                         "all": (7, 4)}
    assert r["negated"]["rate"] == 0.5 and r["uncertain"]["rate"] == 0.0 and r["all"]["rate"] == 4 / 7
    assert r["uncertain"]["gold_skipped"] == 1 and r["negated"]["gold_skipped"] == 0
    assert r["notes"] == 4 and r["notes_with_traps"] == 3
    # wrong siblings: E11.9 (n1), I50.9 and E11.65 (n2), N17.0 (n4)
    assert r["sibling"]["count"] == 4 and r["sibling"]["notes_with_error"] == 3
    # opportunities against the gold codes of the notes: E11.65 (n1, E11.9 exists), E11.9 (n2, E11.65)
    assert r["sibling"]["opportunities"] == 2 and r["sibling"]["rate"] == 2.0
    json.dumps(r, allow_nan=False)


def test_threshold_is_respected():
    notes, preds = _case()
    r = trap_errors(notes, preds, 0.65)
    # only n4 (unscored) keeps its negated A41.9; J18.9 .6, I21.4 .5, C50.919 .55 drop out
    assert _brief(r) == {"negated": (4, 1), "ruled_out": (1, 0), "uncertain": (1, 0), "family": (2, 0),
                         "all": (7, 1)}
    assert r["ruled_out"]["rate"] == 0.0
    assert r["sibling"]["count"] == 2  # E11.65 (n2, .7) and N17.0 (n4, unscored)
    low = trap_errors(notes, preds, 0.1)
    assert _brief(low)["negated"] == (4, 3) and _brief(low)["uncertain"] == (1, 1)
    assert low["sibling"]["count"] == 5  # I50.32 (.3) joins
    # per-code thresholds are the protocol's: I21.4 needs .9 now
    assert trap_errors(notes, preds, 0.5, {"I21.4": 0.9})["ruled_out"]["errors"] == 0


def test_sibling_rule_and_opportunities():
    notes = [_note("a", ["I50.23"], []), _note("b", ["E11.9"], [])]
    ref = ["I50.23", "I50.2", "I50.9", "E11.9", "J18.9"]  # I50.2 is an ancestor of I50.23: no opportunity
    r = trap_counts(notes, [["I50.23", "I50.2", "I50.9"], ["E11.9", "J18.9", "E11"]], reference_codes=ref)
    assert r["sibling"] == {"count": 1, "opportunities": 1, "rate": 1.0, "notes_with_error": 1}
    # a code of the same category but of another code system is not a sibling
    notes = [Note.build("x", "t", [("428.0", "icd9cm")], metadata={"traps": []})]
    assert trap_counts(notes, [["428.1"]], systems={"428.1": "icd9cm"})["sibling"]["count"] == 1
    assert trap_counts(notes, [["428.1"]], systems={"428.1": "icd10cm"})["sibling"]["count"] == 0
    # no trap of a kind: zero mentions, rate None
    assert r["family"] == {"mentions": 0, "errors": 0, "rate": None, "gold_skipped": 0}


def test_malformed_records_and_misalignment():
    bad = Note.build("x", "t", [("I10", "icd10cm")], metadata={"traps": [{"kind": "negated"}]})
    with pytest.raises(DataError, match="'x'.*traps\\[0\\]"):
        trap_counts([bad], [[]])
    with pytest.raises(DataError, match="no prediction"):
        trap_errors([_note("x", ["I10"], [])], [Prediction.from_scores("y", {})])


def test_evaluate_adds_traps_only_when_notes_carry_them():
    notes, preds = _case()
    r = evaluate(notes, preds, threshold=0.5)
    assert _brief(r["traps"]) == _brief(trap_errors(notes, preds, 0.5))
    plain = [_note(n.id, n.codes) for n in notes]  # same notes without metadata.traps
    assert "traps" not in evaluate(plain, preds, threshold=0.5)
    # an empty list means the corpus records traps and this split has none: the key is there
    empty = [_note(n.id, n.codes, []) for n in notes]
    assert evaluate(empty, preds, threshold=0.5)["traps"]["all"] == {"mentions": 0, "errors": 0, "rate": None}


def test_evaluate_files_and_report(tmp_path):
    notes, preds = _case()
    items = [("train", _note("t1", ["E11.9", "I50.9", "N17.0"], [])), *[("test", n) for n in notes]]
    write_dataset(items, tmp_path / "data", name="tiny", source="test")
    write_predictions(preds, tmp_path / "run" / "predictions.jsonl")
    r = evaluate_files(tmp_path / "data", "test", tmp_path / "run" / "predictions.jsonl", threshold=0.5)
    assert _brief(r["traps"]) == _brief(trap_errors(notes, preds, 0.5))
    # opportunities against the dataset's codes (train's I50.9 and N17.0 add I50.23 (n2) and N17.9 (n4))
    assert r["traps"]["sibling"] == {"count": 4, "opportunities": 4, "rate": 1.0, "notes_with_error": 3}
    write_json(tmp_path / "run" / "metrics.json", r)

    plain = [("train", _note("t1", ["E11.9"])), *[("test", _note(n.id, n.codes)) for n in notes]]
    write_dataset(plain, tmp_path / "plain", name="plain", source="test")
    r2 = evaluate_files(tmp_path / "plain", "test", tmp_path / "run" / "predictions.jsonl", threshold=0.5)
    assert "traps" not in r2

    compare([("with", r, None), ("without", r2, None)], tmp_path / "cmp")
    md = (tmp_path / "cmp" / "report.md").read_text()
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "## Trap errors" in md and "Trap errors" in html
    assert "| negated | 2/4 (0.500) | - |" in md
    assert "| all | 4/7 (0.571) | - |" in md and "| sibling | 4/4 (1.000) | - |" in md
    compare([("without", r2, None)], tmp_path / "cmp2")
    assert "Trap errors" not in (tmp_path / "cmp2" / "report.md").read_text()
