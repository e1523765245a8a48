"""The ontology matcher coder (icdcoder.coders.matcher) on hand-made notes over a small label space."""


import numpy as np
import pytest

from icdcoder.coders import Coder
from icdcoder.coders.matcher import MatcherCoder
from icdcoder.data.note import Note, Span

# a small label space: parents and children, conditions and their family / personal history codes
SPACE = ["J18", "J18.9", "C50", "C50.211", "Z80.3", "Z85.3", "E11", "E11.9", "E11.21", "Z83.3", "I10", "I50",
         "I50.9", "I50.2", "I50.20", "N18", "N18.4", "N18.9", "Z87.01", "C18.9", "Z80.0", "I63.9", "Z82.3", "G35"]


def _note(i, text, *codes, spans=()):
    return Note.build(str(i), text, [(c, "icd10cm") for c in codes], spans=list(spans))


TRAIN = [_note("t1", "Hypertension and pneumonia.", "I10", "J18.9"),
         _note("t2", "Known hypertension, stable.", "I10")]


@pytest.fixture(scope="module")
def coder():
    return MatcherCoder(label_space=SPACE, train_codes=False, mine=False, calibrate=False).fit(TRAIN)


def _codes(coder, text):
    pred = coder.predict([Note(id="n", text=text)])[0]
    return {c.code: c for c in pred.codes}


# ------------------------------------------------------------------------------------ assertion
def test_present_mention_is_coded(coder):
    assert set(_codes(coder, "Admitted with pneumonia.")) == {"J18.9"}


def test_negated_mention_codes_nothing(coder):
    assert _codes(coder, "No evidence of pneumonia.") == {}
    assert _codes(coder, "Pneumonia was ruled out.") == {}
    # it is the assertion that suppresses it: without assertion detection the same note codes J18.9
    blind = MatcherCoder(label_space=SPACE, train_codes=False, mine=False, calibrate=False, assertion=False).fit(TRAIN)
    assert set(_codes(blind, "No evidence of pneumonia.")) == {"J18.9"}


def test_possible_mention_codes_nothing(coder):
    assert _codes(coder, "Possible pneumonia, to be evaluated as an outpatient.") == {}


def test_family_mention_codes_the_family_history_code_not_the_disease(coder):
    got = _codes(coder, "Mother had breast cancer.")
    assert set(got) == {"Z80.3"}
    ev = got["Z80.3"].evidence[0]
    assert ev.text == "breast cancer"
    assert set(_codes(coder, "Family history: diabetes mellitus type 2 in his father.")) == {"Z83.3"}
    assert set(_codes(coder, "Colon cancer in his father.")) == {"Z80.0"}
    assert set(_codes(coder, "Her brother had a stroke.")) == {"Z82.3"}


def test_historical_mention_codes_the_personal_history_code_where_one_fits(coder):
    assert set(_codes(coder, "History of breast cancer.")) == {"Z85.3"}
    assert set(_codes(coder, "History of pneumonia.")) == {"Z87.01"}
    # no personal history code fits hypertension: coded itself, with a lower score than when present
    hist = _codes(coder, "History of hypertension.")
    now = _codes(coder, "Hypertension.")
    assert set(hist) == {"I10"} and hist["I10"].score < now["I10"].score


def test_history_code_maps_come_from_the_ontology(coder):
    assert coder.family_of["C50.211"] == "Z80.3" and coder.family_of["E11.9"] == "Z83.3"
    assert coder.personal_of["C50.211"] == "Z85.3"
    assert "I10" not in coder.personal_of and "E11.9" not in coder.personal_of  # chronic: no Z86 residual


# ---------------------------------------------------------------------------------- specificity
def test_specific_match_beats_its_parent(coder):
    assert set(_codes(coder, "Systolic heart failure.")) == {"I50.20"}  # not I50.2, I50 or I50.9
    assert set(_codes(coder, "Chronic kidney disease stage 4.")) == {"N18.4"}  # not the nested N18.9
    assert set(_codes(coder, "Type 2 diabetes mellitus with diabetic nephropathy.")) == {"E11.21"}
    # the term "type 2 diabetes mellitus" names both E11 and E11.9: the child is kept
    assert set(_codes(coder, "Type 2 diabetes mellitus.")) == {"E11.9"}


def test_parent_alone_when_nothing_more_specific_is_supported(coder):
    # C50.9x is not in this label space: "breast cancer" names only the category C50
    assert set(_codes(coder, "Breast cancer, receiving chemotherapy.")) == {"C50"}
    both = _codes(coder, "Breast cancer. Malignant neoplasm of upper-inner quadrant of right female breast.")
    assert set(both) == {"C50.211"}  # the ancestor is dropped once a descendant is found


def test_abbreviations_need_their_capitals(coder):
    assert "I10" in _codes(coder, "Known HTN.")
    assert "G35" in _codes(coder, "Relapsing MS, on treatment.")
    assert "G35" not in _codes(coder, "QRS of 90 ms.")


def test_word_order_and_fuzzy_options():
    plain = MatcherCoder(label_space=SPACE, train_codes=False, mine=False, calibrate=False).fit(TRAIN)
    both = MatcherCoder(label_space=SPACE, train_codes=False, mine=False, calibrate=False, word_order=True,
                        fuzzy=True).fit(TRAIN)
    assert "I50.20" not in _codes(plain, "Heart failure systolic.")
    assert "I50.20" in _codes(both, "Heart failure systolic.")
    assert _codes(plain, "Admitted with pneumonai.") == {}
    assert set(_codes(both, "Admitted with pneumonai.")) == {"J18.9"}


# ------------------------------------------------------------------------------------- evidence
def test_evidence_offsets_slice_the_note_exactly(coder):
    text = "Évolution: neumonía previa. Paciente con PNEUMONÍA y Hypertension;\r\ntype II diabetes mellitus."
    pred = coder.predict([Note(id="x", text=text)])[0]
    got = {c.code: c for c in pred.codes}
    assert {"J18.9", "I10", "E11.9"} <= set(got)
    for c in pred.codes:
        assert c.evidence
        for ev in c.evidence:
            assert text[ev.start:ev.end] == ev.text
    assert [e.text for e in got["J18.9"].evidence] == ["PNEUMONÍA"]
    assert [e.text for e in got["E11.9"].evidence] == ["type II diabetes mellitus"]


def test_scores_are_ranked_probabilities(coder):
    pred = coder.predict([Note(id="x", text="Pneumonia. Hypertension. Heart failure. Chronic kidney disease.")])[0]
    scores = [c.score for c in pred.codes]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


# -------------------------------------------------------------------------------- save and load
def test_save_load_round_trip_gives_identical_predictions_and_no_pickle(tmp_path):
    train = [_note(f"t{i}", f"Patient with zorblax syndrome and hypertension, visit {i}.", "I10", "E11.9")
             for i in range(4)]
    coder = MatcherCoder(label_space=SPACE, train_codes=False, min_count=2, word_order=True).fit(train)
    coder.threshold = 0.3
    folder = coder.save(tmp_path / "m")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["coder.json", "matcher.json", "postings.npz"]
    for p in folder.iterdir():
        assert not p.read_bytes().startswith(b"\x80")  # no pickle stream anywhere
    with np.load(folder / "postings.npz", allow_pickle=False) as z:
        assert set(z.files) == {"term_ptr", "code", "kind", "weight", "case"}
    again = Coder.load(folder)
    assert isinstance(again, MatcherCoder) and again.threshold == 0.3
    notes = [Note(id="a", text="No pneumonia. Zorblax syndrome with HTN. Mother had breast cancer."),
             Note(id="b", text="Type 2 diabetes mellitus, heart failure systolic.")]
    assert [p.model_dump() for p in coder.predict(notes)] == [p.model_dump() for p in again.predict(notes)]


# ---------------------------------------------------------------------------------- mined terms
def test_mined_terms_come_from_training_notes_only():
    filler = ["seen in clinic", "follow up arranged", "labs reviewed", "stable overnight"]
    train = [_note(f"t{i}", f"Zorblax syndrome noted, {filler[i % 4]}.", "I10") for i in range(6)]
    train += [_note(f"u{i}", f"Nothing particular noted, {filler[i % 4]}.", "J18.9") for i in range(6)]
    val = [_note(f"v{i}", f"Florbic disease noted, {filler[i % 4]}.", "E11.9") for i in range(4)]
    test = [_note(f"s{i}", f"Quuxitis noted, {filler[i % 4]}.", "N18.4") for i in range(4)]
    coder = MatcherCoder(label_space=SPACE, min_count=3, min_precision=0.6).fit(train, val)
    assert "zorblax syndrome" in coder.terms_of("I10", kinds=["mined"])
    assert coder.terms_of("E11.9", kinds=["mined"]) == []  # val is for the threshold only
    assert coder.terms_of("N18.4", kinds=["mined"]) == []  # a code seen only in a test split
    assert not any("quuxitis" in t or "florbic" in t for t in coder.terms)
    assert set(_codes(coder, "Zorblax syndrome again.")) == {"I10"}
    assert _codes(coder, test[0].text) == {}


def test_mined_terms_must_lie_inside_gold_evidence_where_there_is_some():
    notes = []
    for i in range(4):
        text = f"Zorblax syndrome, visit {i}. Takes florbamine daily."
        notes.append(_note(f"t{i}", text, "I10", spans=[Span(code="I10", start=0, end=len("Zorblax syndrome"))]))
    coder = MatcherCoder(label_space=SPACE, train_codes=False, spans=False, calibrate=False, min_count=3).fit(notes)
    mined = coder.terms_of("I10", kinds=["mined"])
    assert "zorblax syndrome" in mined
    assert not any("florbamine" in t for t in mined)  # co-occurs with I10 in every note, but is not its evidence
    bare = [_note(n.id, n.text, "I10") for n in notes]  # without spans co-occurrence is all there is
    coder = MatcherCoder(label_space=SPACE, train_codes=False, spans=False, calibrate=False, min_count=3).fit(bare)
    assert "florbamine daily" in coder.terms_of("I10", kinds=["mined"])


def test_gold_evidence_spans_become_terms():
    text = "Admitted for a flare of glimmer lung."
    start = text.index("glimmer lung")
    train = [_note("t", text, "J18.9", spans=[Span(code="J18.9", start=start, end=start + len("glimmer lung"))])]
    coder = MatcherCoder(label_space=SPACE, train_codes=False, mine=False, calibrate=False).fit(train)
    assert coder.terms_of("J18.9", kinds=["span"]) == ["glimmer lung"]
    assert set(_codes(coder, "Glimmer lung again.")) == {"J18.9"}


def test_threshold_tuned_on_val():
    train = [_note(f"t{i}", "Hypertension. Pneumonia.", "I10", "J18.9") for i in range(3)]
    val = [_note("v1", "Hypertension and pneumonia.", "I10", "J18.9"), _note("v2", "No pneumonia.")]
    coder = MatcherCoder(label_space=SPACE, train_codes=False).fit(train, val)
    assert 0 < coder.threshold <= 1
    preds = coder.predict(val)
    assert set(preds[0].codes_at(coder.threshold)) == {"I10", "J18.9"} and preds[1].codes_at(coder.threshold) == []


def test_rejects_bad_params():
    with pytest.raises(ValueError):
        MatcherCoder(nested="sometimes")
    with pytest.raises(ValueError):
        MatcherCoder(label_space="everything")
    with pytest.raises(RuntimeError):
        MatcherCoder().predict([Note(id="x", text="pneumonia")])


# ------------------------------------------------------------------------- the whole ontology
def test_whole_icd10cm_dictionary_codes_a_code_no_training_note_has():
    """Every ICD-10-CM code's description and inclusion terms (rewrites off to stay fast)."""
    coder = MatcherCoder(rewrites=False, mine=False, calibrate=False).fit(TRAIN)
    assert coder.build_info["label_space"] > 90_000 and coder.label_systems["L88"] == "icd10cm"
    assert "L88" in _codes(coder, "Ulcer diagnosed as pyoderma gangrenosum.")  # never seen in training
    assert "Z80.3" in _codes(coder, "Mother had malignant neoplasm of breast.")


# ----------------------------------------------------------------------------- the train path
def test_train_config_code_and_evaluate_paths(tmp_path):
    from icdcoder.data.store import write_dataset
    from icdcoder.experiment import ExperimentConfig, run_experiment
    from icdcoder.pipeline import CodingPipeline

    notes = [("train", _note("t0", "Hypertension.", "I10")), ("train", _note("t1", "Pneumonia.", "J18.9")),
             ("train", _note("t2", "Hypertension and pneumonia.", "I10", "J18.9"))]
    notes += [("val", _note("v1", "Hypertension and pneumonia.", "I10", "J18.9")), ("val", _note("v2", "No pneumonia."))]
    notes += [("test", _note("s1", "Hypertension; pneumonia was ruled out.", "I10"))]
    write_dataset(notes, tmp_path / "data", name="toy", source="test")
    cfg = ExperimentConfig(name="m", data={"path": str(tmp_path / "data")}, output=str(tmp_path / "run"),
                           coder={"name": "matcher", "params": {"label_space": SPACE}})
    out = run_experiment(cfg, log=lambda m: None)
    assert out["metrics"]["micro_f1"] == 1.0
    coded = CodingPipeline.from_dir(tmp_path / "run" / "model").code_text("Mother had breast cancer. Pneumonia.")
    assert set(coded.suggested()) <= {"Z80.3", "J18.9"} and "J18.9" in [c.code for c in coded.codes]
