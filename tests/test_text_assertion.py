"""Assertion status of mentions (icdcoder.text.assertion): ConText-style triggers on negspacy."""

import logging
import re

import pytest

from icdcoder.text.assertion import Assertion, assertions


def _status(text, *mentions):
    spans = []
    for m in mentions:
        found = re.search(re.escape(m), text)
        assert found, m
        spans.append((found.start(), found.end()))
    return [a.value for a in assertions(text, spans)]


@pytest.mark.parametrize("text, mention, expected", [
    ("Pneumonia.", "Pneumonia", "present"),
    ("No evidence of pneumonia on imaging.", "pneumonia", "negated"),
    ("The patient denies chest pain.", "chest pain", "negated"),
    ("Pulmonary embolism was ruled out.", "Pulmonary embolism", "negated"),
    ("Possible pneumonia, to be evaluated.", "pneumonia", "possible"),
    ("Cannot exclude appendicitis at this time.", "appendicitis", "possible"),
    ("Mother had breast cancer.", "breast cancer", "family"),
    ("Diabetes in his father.", "Diabetes", "family"),
    ("History of hypertension.", "hypertension", "historical"),
    ("Former smoker.", "smoker", "historical"),
    ("A 45-year-old man with diabetes.", "diabetes", "present"),
    ("No fever, but pneumonia on the right.", "pneumonia", "present"),  # "but" ends the negation
    ("Hypertension; pneumonia was ruled out.", "Hypertension", "present"),  # so does ";"
    ("Family history of breast cancer.", "Family history of breast cancer", "present"),  # trigger inside
])
def test_one_mention(text, mention, expected):
    assert _status(text, mention) == [expected]


def test_several_mentions_of_one_note_each_get_their_own_status():
    text = ("No evidence of pneumonia. Mother had breast cancer. History of hypertension. "
            "Possible sepsis.\nAdmitted with pneumonia and diabetes.")
    spans = [(m.start(), m.end()) for m in re.finditer(r"pneumonia|breast cancer|hypertension|sepsis|diabetes", text)]
    got = [a.value for a in assertions(text, spans)]
    assert got == ["negated", "family", "historical", "possible", "present", "present"]


def test_family_history_section_makes_mentions_family_unless_negated():
    text = "Past medical history: asthma.\nFamily history: colon cancer. No diabetes.\nPlan: inhaler for asthma."
    spans = [(text.index("asthma"), text.index("asthma") + 6), (text.index("colon"), text.index("cancer") + 6),
             (text.index("diabetes"), text.index("diabetes") + 8), (text.rindex("asthma"), text.rindex("asthma") + 6)]
    assert [a.value for a in assertions(text, spans)] == ["present", "family", "negated", "present"]


def test_no_mentions_and_returned_type():
    assert assertions("Pneumonia.", []) == []
    assert assertions("Pneumonia.", [(0, 9)]) == [Assertion.PRESENT]


def test_no_note_text_reaches_any_log(caplog):
    secret = "Zanzibarian pneumonia of Mrs Quetzalcoatl"
    with caplog.at_level(logging.DEBUG):
        assertions(f"No evidence of {secret}.", [(15, 15 + len(secret))])
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "Quetzalcoatl" not in logged and "Zanzibarian" not in logged


def test_spacy_is_imported_only_when_an_assertion_is_asked_for():
    import subprocess
    import sys

    code = ("import sys, icdcoder, icdcoder.text, icdcoder.coders.matcher; "
            "assert not {'spacy', 'negspacy', 'ahocorasick'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
