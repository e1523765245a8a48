"""Locating a generative coder's quoted evidence in the note (icdcoder.coders.generative.quotes)."""

import pytest

from icdcoder.coders.generative.quotes import QuoteMatch, clean_quote, locate_all, locate_quote

NOTE = "Patient has a history of hypertension and type 2 diabetes.\nDenies chest pain."


def located(text, quote, **kw):
    m = locate_quote(text, quote, **kw)
    assert m is not None, quote
    assert 0 <= m.start < m.end <= len(text)
    return m, text[m.start:m.end]


# --- clean_quote ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, clean", [
    ('"history of hypertension"', "history of hypertension"),
    ("  'type 2 diabetes'. ", "type 2 diabetes"),
    ("\u201chypertension\u201d;", "hypertension"),
    ("`chest pain`:", "chest pain"),
    ('"type 2 diabetes".', "type 2 diabetes"),
    ('"type 2 diabetes."', "type 2 diabetes"),
    ("history  of\n hypertension,", "history of hypertension"),
    ("\u2018Crohn's disease\u2019", "Crohn's disease"),
    ("", ""),
    ('" . "', ""),
])
def test_clean_quote(raw, clean):
    assert clean_quote(raw) == clean


# --- exact ---------------------------------------------------------------------------------------------
def test_exact_literal():
    assert locate_quote(NOTE, "history of hypertension") == QuoteMatch(14, 37, "exact", 100.0)


def test_exact_up_to_case():
    m, span = located(NOTE, "HISTORY OF Hypertension")
    assert (m.start, m.end, m.kind, m.score) == (14, 37, "exact", 100.0)
    assert span == "history of hypertension"


def test_exact_across_a_line_break_in_the_note():
    m, span = located(NOTE, "diabetes. Denies chest pain")
    assert m.kind == "exact"
    assert span == "diabetes.\nDenies chest pain"
    assert (m.start, m.end) == (49, 76)


def test_quote_marks_and_period_around_the_quote():
    m, span = located(NOTE, '"Type 2 diabetes."')
    assert (m.start, m.end, m.kind) == (42, 57, "exact")
    assert span == "type 2 diabetes"
    m, span = located(NOTE, "\u201cchest pain\u201d.")
    assert (span, m.kind) == ("chest pain", "exact")


def test_offsets_are_into_the_original_text_after_repeated_whitespace():
    text = "BP 150/90.\n\n  Pt   with    known\t\tHYPERTENSION,  on lisinopril."
    m, span = located(text, "known hypertension")
    assert m.kind == "exact"
    assert span == "known\t\tHYPERTENSION"
    assert m.start == text.index("known")
    assert m.end == text.index(",")
    m, span = located(text, "with known hypertension")
    assert span == "with    known\t\tHYPERTENSION"


def test_first_occurrence_and_exact_before_fuzzy():
    text = "hypertensive heart disease; hypertension; hypertension again"
    m, span = located(text, "hypertension")
    assert (m.start, m.kind) == (text.index("hypertension;"), "exact")


# --- fuzzy ---------------------------------------------------------------------------------------------
def test_fuzzy_typo_covers_exactly_the_word():
    m, span = located(NOTE, "hypertenson")
    assert m.kind == "fuzzy"
    assert 85.0 <= m.score < 100.0
    assert (m.start, m.end) == (25, 37)
    assert span == "hypertension"


def test_fuzzy_typo_in_a_phrase_covers_exactly_the_words():
    m, span = located(NOTE, '"History of hypertenson."')
    assert m.kind == "fuzzy"
    assert span == "history of hypertension"
    assert (m.start, m.end) == (14, 37)


def test_fuzzy_does_not_run_over_a_line_break_into_an_unrelated_line():
    m, span = located(NOTE, "history of hypertension and type 2 diabetes mellitus")
    assert m.kind == "fuzzy"
    assert span == "history of hypertension and type 2 diabetes"


def test_fuzzy_keeps_a_line_break_the_quote_spans():
    m, span = located(NOTE, "diabetes Denies chest")
    assert m.kind == "fuzzy"
    assert span == "diabetes.\nDenies chest"


def test_fuzzy_word_order_noise():
    # A small swap still aligns well enough, and the span is the note's own wording.
    m, span = located(NOTE, "type diabetes 2")
    assert m.kind == "fuzzy"
    assert span == "type 2 diabetes"
    # A larger reordering falls under the default cut-off...
    assert locate_quote(NOTE, "hypertension and diabetes type 2") is None
    assert locate_quote(NOTE, "diabetes type 2") is None
    # ...and a lower cut-off lets it through: the aligned window ("diabetes.\nDenie") is snapped to
    # whole words and loses the next line, which shares no word with the quote.
    m, span = located(NOTE, "diabetes type 2", min_score=60)
    assert m.kind == "fuzzy" and 60 <= m.score < 85
    assert (m.start, m.end, span) == (49, 57, "diabetes")


def test_fuzzy_score_cutoff_is_honoured():
    assert locate_quote(NOTE, "hypertenson", min_score=95) is None


# --- nothing found -------------------------------------------------------------------------------------
def test_absent_quote():
    assert locate_quote(NOTE, "pulmonary embolism") is None
    assert locate_quote(NOTE, "has a history of high blood pressure") is None


def test_too_short_quote():
    assert locate_quote(NOTE, '"ha"') is None
    assert locate_quote(NOTE, " . ") is None
    assert locate_quote(NOTE, "ha", min_chars=2) == QuoteMatch(8, 10, "exact", 100.0)


@pytest.mark.parametrize("text, quote", [
    ("", "hypertension"), ("", ""), ("   \n", "hypertension"), (NOTE, ""), ("hypertension", "   "),
    ("abc", "x" * 10_000), ("x" * 100_000, "hypertension"), ("\ud800 odd \x00 text", "\ud800 odd"),
])
def test_never_raises(text, quote):
    m = locate_quote(text, quote)
    assert m is None or 0 <= m.start < m.end <= len(text)


def test_empty_text():
    assert locate_quote("", "hypertension") is None
    assert locate_all("", ["hypertension", ""]) == [None, None]


def test_locate_all_in_order():
    out = locate_all(NOTE, ["history of hypertension", "lung cancer", "hypertenson", "ab"])
    assert out[0] == QuoteMatch(14, 37, "exact", 100.0)
    assert out[1] is None
    assert out[2] is not None and (out[2].start, out[2].end, out[2].kind) == (25, 37, "fuzzy")
    assert out[3] is None
    assert locate_all(NOTE, ["hypertenson"], min_score=95) == [None]
