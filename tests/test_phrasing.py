"""Rule-based note phrasings of ontology text, and the ICD-10-CM Alphabetic Index reader."""

import inspect

import pytest

from icdcoder.errors import DataError
from icdcoder.ontology import get_ontology
from icdcoder.ontology.index_terms import load_index_terms
from icdcoder.training import phrasing
from icdcoder.training.phrasing import (
    ABBREVIATIONS,
    abbreviate,
    add_qualifiers,
    code_phrasings,
    due_to_as_secondary,
    phrasings,
    plain_rewrite,
    reorder_comma,
    reorder_of,
)

from .conftest import FIXTURES

INDEX_SAMPLE = FIXTURES / "icd10cm_index_sample.xml"


def desc(code: str) -> str:
    text = get_ontology().describe(code, "icd10cm")
    assert text, code
    return text


def inclusion(code: str, startswith: str) -> str:
    terms = [t for t in get_ontology().lookup(code, "icd10cm").inclusion_terms if t.startswith(startswith)]
    assert terms, (code, startswith)
    return terms[0]


# --- the ontology wording these tests rest on ------------------------------------------------------

def test_descriptions_used_here():
    assert desc("E11.9") == "Type 2 diabetes mellitus without complications"
    assert desc("I10") == "Essential (primary) hypertension"
    assert desc("J44.9") == "Chronic obstructive pulmonary disease, unspecified"
    assert desc("N18.9") == "Chronic kidney disease, unspecified"
    assert desc("N18.4") == "Chronic kidney disease, stage 4 (severe)"
    assert desc("M17.9") == "Osteoarthritis of knee, unspecified"
    assert desc("J13") == "Pneumonia due to Streptococcus pneumoniae"


# --- rule 1: plain rewrite -------------------------------------------------------------------------

@pytest.mark.parametrize("code, expected", [
    ("E11.9", "type 2 diabetes mellitus"),                 # trailing "without complications"
    ("I10", "essential hypertension"),                     # "(primary)" aside
    ("J44.9", "chronic obstructive pulmonary disease"),    # ", unspecified"
    ("N18.9", "chronic kidney disease"),
    ("I48.91", "atrial fibrillation"),                     # leading "Unspecified"
    ("J18.9", "pneumonia"),                                # ", unspecified organism"
    ("N39.0", "urinary tract infection"),                  # ", site not specified"
    ("J45.909", "asthma"),                                 # ", uncomplicated"
    ("K21.9", "gastro-esophageal reflux disease"),
    ("L89.90", "pressure ulcer"),                          # "of unspecified site, unspecified stage"
    ("B20", "human immunodeficiency virus disease"),       # "[HIV]"
    ("S72.002A", "fracture of neck of left femur"),        # default encounter, "unspecified part of"
    ("E55.9", "vitamin D deficiency"),                     # a single capital letter keeps its case
    ("G20", "Parkinson's disease"),                        # possessive eponym keeps its capital
    ("G43.009", "migraine without aura"),                  # "aura" is a subtype clinicians write
    ("A04.72", "enterocolitis due to Clostridium difficile"),
])
def test_plain_rewrite_of_real_descriptions(code, expected):
    assert plain_rewrite(desc(code)) == expected


def test_plain_rewrite_keeps_what_follows_an_unspecified_word():
    assert plain_rewrite("Opioid use, unspecified with other opioid-induced disorder") == \
        "opioid use with other opioid-induced disorder"
    assert plain_rewrite("Unilateral primary osteoarthritis, unspecified knee") == \
        "unilateral primary osteoarthritis, knee"
    assert plain_rewrite("Laceration of lesser saphenous vein at lower leg level, unspecified leg") == \
        "laceration of lesser saphenous vein at lower leg level"
    # a "without" clause in the middle of a description is not a trailing clause
    assert plain_rewrite("Laceration without foreign body of right elbow, subsequent encounter") == \
        "laceration without foreign body of right elbow, subsequent encounter"
    assert plain_rewrite("Non-ST elevation (NSTEMI) myocardial infarction") == \
        "non-ST elevation myocardial infarction"
    assert plain_rewrite("Cardiac, heart or myocardial failure NOS") == "cardiac, heart or myocardial failure"


# --- rules 2-4: word order -------------------------------------------------------------------------

def test_reorder_of():
    assert reorder_of("fracture of left femur") == "left femur fracture"
    assert reorder_of("ulcer of skin") == "skin ulcer"
    assert reorder_of("malignant neoplasm of prostate") == "malignant prostate neoplasm"
    assert reorder_of("personal history of stroke") is None      # history stays a history
    assert reorder_of("long term use of insulin") is None
    assert reorder_of("fracture of neck of left femur") is None  # two "of"s
    assert reorder_of("atherosclerotic heart disease of native coronary artery") is None


def test_reorder_of_on_real_text():
    assert "knee osteoarthritis" in phrasings(desc("M17.9"))
    assert "skin ulcer" in phrasings(inclusion("L98.4", "Ulcer of skin"))
    assert "malignant prostate neoplasm" in phrasings(desc("C61"))


def test_reorder_comma():
    assert reorder_comma("pneumonia, viral") == "viral pneumonia"
    assert reorder_comma("diabetes mellitus, type 2") == "type 2 diabetes mellitus"
    assert reorder_comma("nicotine dependence, cigarettes") is None
    assert reorder_comma("major depressive disorder, single episode") is None
    assert reorder_comma("a, b, c") is None


def test_reorder_comma_on_real_text():
    forms = phrasings(desc("N18.4"))
    assert forms[0] == "chronic kidney disease, stage 4"
    assert "stage 4 chronic kidney disease" in forms and "stage 4 CKD" in forms
    assert "acute upper respiratory disease" in phrasings(inclusion("J06.9", "Upper respiratory disease"))
    assert "symptomatic HIV infection" in phrasings(inclusion("B20", "HIV infection"))


def test_due_to_as_secondary():
    assert due_to_as_secondary("pneumonia due to Streptococcus pneumoniae") == \
        "pneumonia secondary to Streptococcus pneumoniae"
    assert due_to_as_secondary("viral pneumonia") is None
    forms = phrasings(desc("J13"))
    assert forms[0] == "pneumonia due to Streptococcus pneumoniae"
    assert "pneumonia secondary to Streptococcus pneumoniae" in forms
    assert "PNA secondary to Streptococcus pneumoniae" in forms


# --- rule 5: abbreviations -------------------------------------------------------------------------

def test_abbreviation_table():
    assert len(ABBREVIATIONS) >= 60
    assert all(k == k.lower() and k == k.strip() and "  " not in k for k in ABBREVIATIONS)
    for long, short in {
        "hypertension": "HTN", "type 2 diabetes mellitus": "T2DM", "diabetes mellitus": "DM",
        "chronic kidney disease": "CKD", "chronic obstructive pulmonary disease": "COPD",
        "congestive heart failure": "CHF", "heart failure": "HF", "atrial fibrillation": "AFib",
        "myocardial infarction": "MI", "coronary artery disease": "CAD", "urinary tract infection": "UTI",
        "gastroesophageal reflux disease": "GERD", "deep vein thrombosis": "DVT",
        "pulmonary embolism": "PE", "acute kidney injury": "AKI", "cerebrovascular accident": "CVA",
    }.items():
        assert ABBREVIATIONS[long] == short


def test_abbreviate_prefers_the_longest_phrase():
    assert abbreviate("type 2 diabetes mellitus with diabetic chronic kidney disease") == \
        "T2DM with diabetic CKD"
    assert abbreviate("congestive heart failure") == "CHF"
    assert abbreviate("non-ST elevation myocardial infarction") == "NSTEMI"
    assert abbreviate("hypertensive heart disease") is None          # whole words only
    assert abbreviate("Atrial Fibrillation") == "AFib"                 # case-insensitive


@pytest.mark.parametrize("code, first, short", [
    ("E11.9", "type 2 diabetes mellitus", "T2DM"),
    ("I10", "essential hypertension", "essential HTN"),
    ("J44.9", "chronic obstructive pulmonary disease", "COPD"),
    ("N18.9", "chronic kidney disease", "CKD"),
    ("I48.91", "atrial fibrillation", "AFib"),
    ("N39.0", "urinary tract infection", "UTI"),
    ("K21.9", "gastro-esophageal reflux disease", "GERD"),
    ("I25.10", "atherosclerotic heart disease of native coronary artery", "CAD"),
])
def test_phrasings_plain_first_then_abbreviation(code, first, short):
    forms = phrasings(desc(code))
    assert forms[0] == first
    assert forms[1] == short


# --- rule 6: qualifiers ----------------------------------------------------------------------------

def test_qualifiers():
    assert add_qualifiers("type 2 diabetes mellitus") == ["known T2DM", "type 2 diabetes mellitus, stable"]
    assert add_qualifiers("hypertension") == ["known HTN", "chronic hypertension"]
    assert add_qualifiers("acute bronchitis") == []
    assert add_qualifiers("myocardial infarction") == []       # "known MI" reads as an old MI
    assert add_qualifiers("fracture of left femur") == []
    assert "known T2DM" in phrasings(desc("E11.9"))


def test_chronic_only_where_it_cannot_move_the_code():
    # bronchitis J40 vs chronic bronchitis J42; atrial fibrillation I48.91 vs chronic I48.20
    for text in (desc("J40"), desc("I48.91"), desc("F32.9"), desc("J45.909")):
        assert not any(f.lower().startswith("chronic") for f in phrasings(text, max_forms=50)), text
    assert "chronic hypertension" in phrasings(inclusion("I10", "hypertension"))


def test_no_history_of_forms_ever():
    ont = get_ontology()
    for code in ("E11.9", "I10", "J44.9", "N18.9", "I21.9", "I63.9", "I26.99", "C61", "J13", "F32.9",
                 "M17.9", "S72.002A", "G20", "E78.5", "I50.9"):
        for phrase, _ in code_phrasings(code, max_forms=100):
            assert "history" not in phrase.lower(), (code, phrase)
        for text in [ont.describe(code, "icd10cm")] + ont.lookup(code, "icd10cm").inclusion_terms:
            assert not any("history" in f.lower() for f in phrasings(text, max_forms=100))


def test_code_phrasings_leave_injury_and_status_codes_unqualified():
    for code in ("S72.002A", "Z79.4", "O24.410", "T38.3X1A"):
        phrases = [p for p, _ in code_phrasings(code, max_forms=100)]
        assert phrases, code
        assert not any(p.startswith("known ") or p.endswith(", stable") for p in phrases), code


# --- combining -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", " ", "\t\n", "()", "[]", "(((", ",", "NOS", "Unspecified", "x",
                                  "without", "of", "due to", "a, b", "1234", "é", "\x00", "—",
                                  "Fracture of (unspecified", "HTN, HTN, HTN"])
def test_never_empty_never_raises(text):
    forms = phrasings(text)
    assert all(f and f.strip() == f for f in forms)
    assert len({f.lower() for f in forms}) == len(forms)
    if any(c.isalnum() for c in text):
        assert forms


def test_deterministic_and_capped():
    text = desc("N18.4")
    assert phrasings(text) == phrasings(text)
    full = phrasings(text, max_forms=100)
    assert len(full) > 3
    for k in (1, 2, 3):
        assert phrasings(text, max_forms=k) == full[:k]
    assert phrasings(text, max_forms=0) == []
    assert len(phrasings(text)) <= 8


def test_phrasing_rules_are_written_independently_of_the_synthetic_corpus():
    source = inspect.getsource(phrasing)
    assert "mention_forms" not in source and "data.synth" not in source


# --- code_phrasings --------------------------------------------------------------------------------

def test_code_phrasings_kinds():
    pairs = code_phrasings("N18.9")
    assert pairs[0] == ("chronic kidney disease", "description")
    assert ("CKD", "rewrite") in pairs
    assert ("chronic renal failure", "inclusion") in pairs
    assert ("chronic renal insufficiency", "inclusion") in pairs
    assert {k for _, k in pairs} <= {"description", "inclusion", "index", "rewrite"}
    assert sum(k == "description" for _, k in pairs) == 1
    assert len(pairs) <= 12
    assert len({p.lower() for p, _ in pairs}) == len(pairs)


def test_code_phrasings_i10():
    pairs = code_phrasings("I10", max_forms=50)
    assert pairs[0] == ("essential hypertension", "description")
    assert ("high blood pressure", "inclusion") in pairs
    assert ("hypertension", "inclusion") in pairs
    assert ("HTN", "rewrite") in pairs and ("essential HTN", "rewrite") in pairs


def test_code_phrasings_qualified_forms_come_last():
    pairs = code_phrasings("I10", max_forms=6)
    assert [p for p, _ in pairs] == ["essential hypertension", "essential HTN", "high blood pressure",
                                     "hypertension", "HTN", "known essential HTN"]
    phrases = [p for p, _ in code_phrasings("N18.9", max_forms=50)]
    first_qualified = min(i for i, p in enumerate(phrases) if p.startswith("known ") or p.endswith(", stable"))
    assert all(not (p.startswith("known ") or p.endswith(", stable")) for p in phrases[:first_qualified])
    assert all(p.startswith("known ") or p.endswith(", stable") for p in phrases[first_qualified:])


def test_code_phrasings_cap_and_spelling():
    assert code_phrasings("n189", max_forms=3) == code_phrasings("N18.9")[:3]
    assert code_phrasings("N18.9", max_forms=0) == []


def test_code_phrasings_icd9cm_wording():
    ont = get_ontology()
    assert ont.describe("250.00", "icd9cm") == ("Diabetes mellitus without mention of complication, "
                                                "type II or unspecified type, not stated as uncontrolled")
    pairs = code_phrasings("250.00", "icd9cm", max_forms=50)
    assert pairs[0] == ("diabetes mellitus, type II", "description")
    assert ("type II diabetes mellitus", "rewrite") in pairs and ("T2DM", "rewrite") in pairs
    assert code_phrasings("486", "icd9cm")[:2] == [("pneumonia", "description"), ("PNA", "rewrite")]
    assert code_phrasings("428.0", "icd9cm")[:2] == [("congestive heart failure", "description"), ("CHF", "rewrite")]


@pytest.mark.parametrize("code", ["Z99.999", "not a code", "", "E11.99999", "428.0"])
def test_code_phrasings_unknown_code(code):
    assert code_phrasings(code) == []


def test_code_phrasings_with_index_terms():
    index = load_index_terms(INDEX_SAMPLE)
    pairs = code_phrasings("E11.65", index_terms=index, max_forms=50)
    assert pairs[0] == ("type 2 diabetes mellitus with hyperglycemia", "description")
    assert ("type 2 diabetes with hyperglycemia", "index") in pairs
    assert ("T2DM with hyperglycemia", "rewrite") in pairs
    # an index phrase equal to the description is not repeated
    pairs = code_phrasings("J44.9", index_terms=index, max_forms=50)
    assert [p for p, _ in pairs].count("chronic obstructive pulmonary disease") == 1
    assert all(k != "index" for _, k in pairs)
    # order: description, its rewrites, inclusion terms, index phrases, their rewrites
    pairs = code_phrasings("N18.9", index_terms={"N18.9": ["kidney disease, chronic"]}, max_forms=50)
    kinds = [k for _, k in pairs]
    assert ("kidney disease, chronic", "index") in pairs
    assert kinds.index("rewrite") < kinds.index("inclusion") < kinds.index("index")
    assert kinds[kinds.index("index") + 1:] == ["rewrite"] * (len(kinds) - kinds.index("index") - 1)


def test_code_phrasings_uses_the_given_ontology():
    class Stub:
        def lookup(self, code, system):
            from icdcoder.ontology import CodeInfo
            if code != "X1":
                return None
            return CodeInfo(code="X1", system=system, description="Pneumonia, viral", billable=True,
                            parent=None, ancestors=[], children=[], chapter=None,
                            inclusion_terms=["Virus pneumonia NOS"])
    pairs = code_phrasings("X1", ontology=Stub(), max_forms=50)
    assert pairs[0] == ("pneumonia, viral", "description")
    assert ("virus pneumonia", "inclusion") in pairs
    assert ("viral pneumonia", "rewrite") in pairs
    assert code_phrasings("X2", ontology=Stub()) == []


# --- the Alphabetic Index ---------------------------------------------------------------------------

def test_load_index_terms_fixture():
    assert load_index_terms(INDEX_SAMPLE) == {
        "L02.91": ["abscess"],
        "G06.0": ["brain abscess"],
        "E11.9": ["diabetes", "type 2 diabetes"],
        "E10.9": ["type 1 diabetes"],
        "E11.65": ["type 2 diabetes with hyperglycemia"],
        "E11.44": ["diabetes with amyotrophy"],
        "E11.618": ["diabetes with arthropathy"],
        "J44.9": ["chronic obstructive pulmonary disease"],
        "I21.9": ["myocardial infarct"],
        "I21.4": ["non-ST elevation myocardial infarct"],
        "G20.C": ["Parkinson's disease"],
        "J18.9": ["pneumonia"],
        "J15.4": ["pneumonia due to Streptococcus"],
        "J15.3": ["pneumonia due to group B Streptococcus"],
        "J13": ["pneumonia due to Streptococcus pneumoniae"],
        "J12.9": ["viral pneumonia"],
        "P23.0": ["congenital viral pneumonia"],
    }


def test_load_index_terms_skips_dashes_see_and_bad_codes(tmp_path):
    index = load_index_terms(INDEX_SAMPLE)
    assert not any(code.startswith("S72") for code in index)          # "S72.9-", "S72.00-"
    assert not any("maltreatment" in p or "skin" in p for ps in index.values() for p in ps)
    path = tmp_path / "index.xml"
    path.write_text(
        "<ICD10CM.index><letter><title>X</title>"
        "<mainTerm><title>Thing</title><code>not-a-code</code>"
        "<term level=\"1\"><title>other</title><code>e119</code><manif>G63</manif></term>"
        "<term level=\"1\"><title>odd</title><subcat>H74.1</subcat></term>"
        "</mainTerm></letter></ICD10CM.index>", encoding="utf-8")
    assert load_index_terms(path) == {"E11.9": ["other thing"]}


def test_load_index_terms_malformed_xml(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<ICD10CM.index>\n<letter>\n<mainTerm><title>A</title>\n</letter>\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_index_terms(path)
    assert str(path) in str(err.value)
    assert err.value.path == str(path) and err.value.line == 4


def test_load_index_terms_wrong_file(tmp_path):
    path = tmp_path / "tabular.xml"
    path.write_text("<ICD10CM.tabular><chapter/></ICD10CM.tabular>", encoding="utf-8")
    with pytest.raises(DataError, match="ICD10CM.index"):
        load_index_terms(path)
    with pytest.raises(DataError) as err:
        load_index_terms(tmp_path / "missing.xml")
    assert "missing.xml" in str(err.value)
