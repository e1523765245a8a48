"""Normalisation with offsets back to the original note (icdcoder.text.normalize)."""

import pytest

from icdcoder.text import fold_token, term_tokens, tokenize


def test_tokens_keep_original_offsets_through_accents_and_punctuation():
    text = "Úlcera duodenal; NEUMONÍA (left-lower lobe) & Crohn's disease."
    toks = tokenize(text)
    assert [t.norm for t in toks] == ["ulcera", "duodenal", "neumonia", "left", "lower", "lobe", "crohn", "disease"]
    for t in toks:
        assert fold_token(text[t.start:t.end]) == t.norm  # every token slices back to what it came from
    assert text[toks[2].start:toks[2].end] == "NEUMONÍA"
    assert text[toks[6].start:toks[6].end] == "Crohn's"


@pytest.mark.parametrize("raw, norm", [
    ("neoplasms", "neoplasm"), ("arteries", "artery"), ("abscesses", "abscess"), ("headaches", "headache"),
    ("branches", "branch"), ("vertebrae", "vertebra"), ("kidneys", "kidney"), ("metastases", "metastasis"),
    ("diagnosis", "diagnosis"), ("status", "status"), ("illness", "illness"), ("mellitus", "mellitus"),
    ("ischaemic", "ischemic"), ("haemorrhage", "hemorrhage"), ("oedema", "edema"), ("tumour", "tumor"),
    ("II", "2"), ("iii", "3"), ("Parkinson’s", "parkinson"), ("COVID", "covid"), ("was", "was"),
])
def test_fold_token(raw, norm):
    assert fold_token(raw) == norm


def test_terms_and_notes_fold_alike():
    # the dictionary term and the note's wording meet despite plural, article and case differences
    assert term_tokens("Malignant neoplasm of the breasts") == term_tokens("malignant NEOPLASMS of breast")
    assert term_tokens("Type II diabetes") == ("type", "2", "diabete")
    assert "the" not in [t.norm for t in tokenize("the kidney")]
    assert [t.norm for t in tokenize("the kidney", skip=frozenset())] == ["the", "kidney"]
