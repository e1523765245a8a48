"""Sentences and section headers (icdcoder.text.sections)."""

from icdcoder.text import find_sections, section_at, split_sentences

NOTE = """DISCHARGE SUMMARY
Past medical history: T2DM, HTN. No history of MI.
Family history: Mother had breast cancer.
- Father: diabetes
Social history: Seen by Dr. Smith, e.g. twice. Temperature 40.2 C on day 3. Then better!
Physical examination revealed: no edema.
"""


def _texts(text, spans):
    return [text[s:e] for s, e in spans]


def test_sentences_split_on_lines_and_periods_but_not_abbreviations_or_decimals():
    got = _texts(NOTE, split_sentences(NOTE))
    assert got == ["DISCHARGE SUMMARY", "Past medical history:", "T2DM, HTN.", "No history of MI.", "Family history:",
                   "Mother had breast cancer.", "- Father: diabetes", "Social history:",
                   "Seen by Dr. Smith, e.g. twice.", "Temperature 40.2 C on day 3.", "Then better!",
                   "Physical examination revealed: no edema."]
    for s, e in split_sentences(NOTE):  # offsets are the original text's, stripped of blanks
        assert NOTE[s:e] == NOTE[s:e].strip() and e > s


def test_sections_have_kinds_and_end_at_the_next_header():
    secs = find_sections(NOTE)
    assert [(s.kind, s.title) for s in secs] == [
        ("past_medical_history", "Past medical history"), ("family_history", "Family history"),
        ("social_history", "Social history"), ("other", "Physical examination revealed")]
    fam = secs[1]
    assert NOTE[fam.start:fam.end] == "Family history: Mother had breast cancer.\n- Father: diabetes"
    assert NOTE[fam.body_start:fam.end].strip().startswith("Mother")
    assert section_at(secs, NOTE.index("diabetes")).kind == "family_history"  # "- Father:" is not a new header
    assert section_at(secs, NOTE.index("HTN")).kind == "past_medical_history"
    assert section_at(secs, 0) is None


def test_headerless_notes_have_no_sections():
    text = "A 29-year-old woman with a history of duodenal ulcer.\nNo history of nephrolithiasis."
    assert find_sections(text) == []
    assert _texts(text, split_sentences(text)) == ["A 29-year-old woman with a history of duodenal ulcer.",
                                                   "No history of nephrolithiasis."]


def test_title_alone_on_a_line_is_a_header():
    text = "FAMILY HISTORY\nDiabetes in the father.\nPLAN\nInsulin."
    secs = find_sections(text)
    assert [s.kind for s in secs] == ["family_history", "assessment_plan"]
    assert section_at(secs, text.index("Diabetes")).kind == "family_history"
