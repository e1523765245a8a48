"""The rule engine on hand-made predictions: each rule alone, the order they run in, and the records."""

from __future__ import annotations

import pytest

from icdcoder.codes import CodeSystem, infer_system
from icdcoder.errors import DataError
from icdcoder.prediction import Evidence, Prediction, read_predictions, write_predictions
from icdcoder.rules import RuleConfig, RuleEngine, apply_rules, edit_counts, read_codes_file


def system_of(code: str) -> CodeSystem | None:
    try:
        return infer_system(code)
    except ValueError:
        return None


def only(rule: str, **kw) -> RuleConfig:
    """A config with just one rule switched on."""
    flags = {"exists": False, "parent_child": False, "billable": "off", "excludes1": False, "label_space": False}
    flags.update({rule: kw.pop("value", True)}, **kw)
    return RuleConfig(**flags)


def run(scores: dict[str, float], config: RuleConfig, threshold: float = 0.5, **kw) -> Prediction:
    engine = RuleEngine(config, label_space=kw.pop("label_space", None))
    return engine.apply(Prediction.from_scores("n1", scores), system_of, threshold, **kw)


def test_exists_drops_made_up_codes_in_either_version():
    pred = run({"E11.9": 0.9, "Z99.99": 0.8, "428.0": 0.7, "999.99": 0.6}, only("exists"))
    assert [c.code for c in pred.codes] == ["E11.9", "428.0"]
    assert [(e.rule, e.action, e.codes) for e in pred.edits] == [
        ("exists", "drop", ["Z99.99"]), ("exists", "drop", ["999.99"])]
    assert "icd10cm" in pred.edits[0].reason


def test_exists_applies_below_the_threshold_too():
    pred = run({"E11.9": 0.9, "Z99.99": 0.1}, only("exists"))
    assert [c.code for c in pred.codes] == ["E11.9"]


def test_exists_against_a_fiscal_year_code_list(tmp_path):
    # the CMS order-file layout: order number, code without dot, header flag, short and long titles
    listing = tmp_path / "icd10cm_order_2019.txt"
    listing.write_text("00001 E119    1 Type 2 diabetes w/o compl      Type 2 diabetes mellitus without complications\n"
                       "00002 I10     1 Essential hypertension         Essential (primary) hypertension\n")
    pred = run({"E11.9": 0.9, "I10": 0.8, "U07.1": 0.7}, only("exists", codes_file=listing))
    assert [c.code for c in pred.codes] == ["E11.9", "I10"]  # U07.1 (COVID-19) came in 2020
    assert pred.edits[0].codes == ["U07.1"] and listing.name in pred.edits[0].reason


def test_codes_file_plain_list_and_bad_line(tmp_path):
    ok = tmp_path / "codes.txt"
    ok.write_text("# fiscal 2024\nE119\nI10  Essential hypertension\n\n")
    assert read_codes_file(ok) == {"E11.9", "I10"}
    bad = tmp_path / "bad.txt"
    bad.write_text("E119\n12345678\n")
    with pytest.raises(DataError, match=r"bad\.txt:2, field 'code'"):
        read_codes_file(bad)


def test_label_space_only_when_asked():
    scores = {"E11.9": 0.9, "I10": 0.8}
    assert len(run(scores, only("exists")).codes) == 2
    pred = run(scores, only("label_space"), label_space={"E11.9"})
    assert [c.code for c in pred.codes] == ["E11.9"] and pred.edits[0].rule == "label_space"
    with pytest.raises(ValueError, match="label space"):
        RuleEngine(only("label_space"))


def test_parent_and_child_keep_the_child():
    pred = run({"K21": 0.9, "K21.9": 0.6, "E11.9": 0.55}, only("parent_child"))
    assert [c.code for c in pred.codes] == ["K21.9", "E11.9"]
    (edit,) = pred.edits
    assert (edit.rule, edit.action, edit.codes) == ("parent_child", "drop", ["K21", "K21.9"])


def test_parent_child_skips_codes_below_the_threshold():
    pred = run({"K21": 0.9, "K21.9": 0.2}, only("parent_child"))  # K21.9 is a candidate, not a suggestion
    assert [c.code for c in pred.codes] == ["K21", "K21.9"] and not pred.edits


def test_grandparent_goes_too_in_favour_of_the_best_descendant():
    pred = run({"J45": 0.9, "J45.90": 0.8, "J45.909": 0.7, "J45.901": 0.75}, only("parent_child"))
    assert [c.code for c in pred.codes] == ["J45.901", "J45.909"]
    assert {tuple(e.codes) for e in pred.edits} == {("J45", "J45.901"), ("J45.90", "J45.901")}


def test_billable_specify_replaces_a_category_by_its_unspecified_code():
    pred = run({"I50": 0.8, "J45": 0.7, "401": 0.6}, only("billable", value="specify"))
    assert [c.code for c in pred.codes] == ["I50.9", "J45.909", "401.9"]
    assert all(e.action == "replace" for e in pred.edits)
    assert pred.edits[0].codes == ["I50", "I50.9"] and "Heart failure, unspecified" in pred.edits[0].reason


def test_billable_specify_keeps_evidence_and_merges_with_a_candidate():
    ev = [Evidence(start=0, end=13, text="heart failure")]
    pred = Prediction.from_scores("n1", {"I50": 0.8, "I50.9": 0.3}, evidence={"I50": ev})
    out = RuleEngine(only("billable", value="specify")).apply(pred, system_of, 0.5)
    (code,) = out.codes  # the category's score and evidence carry over to the code that replaces it
    assert (code.code, code.score, code.evidence) == ("I50.9", 0.8, ev) and out.edits[0].codes == ["I50", "I50.9"]
    solo = RuleEngine(only("billable", value="specify")).apply(
        Prediction.from_scores("n1", {"I50": 0.8}, evidence={"I50": ev}), system_of, 0.5)
    assert solo.codes[0].evidence == ev and solo.codes[0].score == 0.8


def test_billable_without_an_unspecified_subcode_is_flagged():
    # E11 has "with unspecified complications" (E11.8), which is not the unspecified E11 code
    pred = run({"E11": 0.8, "K21": 0.7}, only("billable", value="specify"))
    assert [c.code for c in pred.codes] == ["E11", "K21"]
    assert all(c.flags == ["not_billable"] for c in pred.codes)
    assert [(e.action, e.codes) for e in pred.edits] == [("flag", ["E11"]), ("flag", ["K21"])]


def test_billable_flag_and_drop_modes_and_procedures_untouched():
    assert run({"I50": 0.8}, only("billable", value="flag")).codes[0].flags == ["not_billable"]
    dropped = run({"I50": 0.8, "I10": 0.7}, only("billable", value="drop"))
    assert [c.code for c in dropped.codes] == ["I10"] and dropped.edits[0].action == "drop"
    engine = RuleEngine(only("billable", value="drop"))
    pcs = engine.apply(Prediction.from_scores("n1", {"0DTJ": 0.9}), lambda c: CodeSystem.ICD10PCS, 0.5)
    assert [c.code for c in pcs.codes] == ["0DTJ"] and not pcs.edits  # CodiEsp-style prefix


def test_excludes1_keeps_the_higher_scored_code_with_the_note():
    # E11 (type 2 diabetes) Excludes1 type 1 diabetes mellitus (E10.-), and the other way round
    pred = run({"E10.9": 0.6, "E11.9": 0.9, "I10": 0.7}, only("excludes1"))
    assert [c.code for c in pred.codes] == ["E11.9", "I10"]
    (edit,) = pred.edits
    assert (edit.rule, edit.action, edit.codes) == ("excludes1", "drop", ["E10.9", "E11.9"])
    assert "Excludes1" in edit.reason and "(E1" in edit.reason and "E11.9" in edit.reason
    flipped = run({"E10.9": 0.9, "E11.9": 0.6}, only("excludes1"))
    assert [c.code for c in flipped.codes] == ["E10.9"] and flipped.edits[0].codes == ["E11.9", "E10.9"]


def test_excludes1_ignores_candidates_and_excludes2():
    assert not run({"E10.9": 0.3, "E11.9": 0.9}, only("excludes1")).edits
    # I10 Excludes2 (not Excludes1) nothing here; hypertension with heart failure are compatible
    assert not run({"I10": 0.9, "I50.9": 0.8}, only("excludes1")).edits


def test_all_rules_together_and_the_file_keeps_the_edits(tmp_path):
    scores = {"E11.9": 0.95, "E10.9": 0.6, "K21": 0.85, "K21.9": 0.55, "I50": 0.8, "Z99.99": 0.9, "J45.909": 0.1}
    (pred,) = apply_rules([Prediction.from_scores("n1", scores)], system_of, threshold=0.5)
    assert [c.code for c in pred.codes] == ["E11.9", "I50.9", "K21.9", "J45.909"]
    assert edit_counts([pred]) == {"billable": 1, "excludes1": 1, "exists": 1, "parent_child": 1}
    path = tmp_path / "pred.jsonl"
    write_predictions([pred, Prediction.from_scores("n2", {"I10": 0.9})], path)
    back = read_predictions(path)
    assert back[0].edits == pred.edits and back[1].edits == []
    assert '"edits"' not in path.read_text().splitlines()[1]  # omitted when nothing fired


def test_none_config_passes_through():
    scores = {"Z99.99": 0.9, "K21": 0.8, "K21.9": 0.7}
    pred = run(scores, RuleConfig.none())
    assert pred.scores() == scores and not pred.edits


def test_violations_match_what_apply_would_edit():
    engine = RuleEngine()
    found = engine.violations(["E11.9", "E10.9", "K21", "K21.9", "Q99.99", "I50"], system_of)
    rules = sorted((v.rule, v.codes) for v in found)
    assert ("exists", ("Q99.99",)) in rules
    assert ("parent_child", ("K21", "K21.9")) in rules
    assert ("billable", ("I50",)) in rules
    assert ("excludes1", ("E10.9", "E11.9")) in rules
    assert engine.violations(["E11.9", "I10", "N18.6"], system_of) == []
