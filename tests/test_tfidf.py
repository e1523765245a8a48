import numpy as np
import pytest

from icdcoder.coders import Coder
from icdcoder.coders.tfidf import TfidfCoder
from icdcoder.data.note import Note

WORDS = {"I10": "hypertension", "E11.9": "diabetes", "J18.9": "pneumonia", "N39.0": "urinary infection"}
FILLER = "patient admitted stable discharged home follow up clinic vitals normal".split()


def _notes(n, seed, vocabulary=None):
    """Toy notes: filler plus one telling word per code (``vocabulary``: code -> word)."""
    vocabulary = vocabulary or WORDS
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        codes = [c for c in vocabulary if rng.random() < 0.4] or ["I10"]
        words = list(rng.choice(FILLER, 12)) + [vocabulary[c] for c in codes]
        rng.shuffle(words)
        out.append(Note.build(f"s{seed}-{i}", " ".join(words), [(c, "icd10cm") for c in codes]))
    return out


@pytest.fixture(scope="module")
def fitted():
    train, val = _notes(80, 0), _notes(30, 1)
    return TfidfCoder(word_ngrams=(1, 1), C=10.0).fit(train, val), _notes(30, 2)


def test_learns_distinctive_words_and_points_at_them(fitted):
    coder, test = fitted
    preds = coder.predict(test)
    assert [p.id for p in preds] == [n.id for n in test]
    correct = sum(set(p.codes_at(coder.threshold)) == set(n.codes) for p, n in zip(preds, test))
    assert correct >= 27  # the task is trivially separable: nearly every note exactly right
    for p, n in zip(preds, test):
        scores = [c.score for c in p.codes]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        for c in p.codes:
            if c.score >= coder.threshold and c.code in n.codes:
                assert c.evidence, c
                ev = c.evidence[0]
                assert n.text[ev.start:ev.end] == ev.text
                assert ev.text in WORDS[c.code]  # the weightiest n-gram is the code's own word


def test_threshold_tuned_on_val_and_saved(fitted, tmp_path):
    coder, test = fitted
    assert 0 < coder.threshold < 1 and coder.threshold != 0.5
    coder.save(tmp_path / "m")
    again = Coder.load(tmp_path / "m")
    assert isinstance(again, TfidfCoder) and again.threshold == coder.threshold
    a, b = coder.predict(test[:5]), again.predict(test[:5])
    assert [[(c.code, round(c.score, 6)) for c in p.codes] for p in a] == \
           [[(c.code, round(c.score, 6)) for c in p.codes] for p in b]


def test_svm_scores_are_calibrated_probabilities():
    train, val = _notes(80, 3), _notes(30, 4)
    coder = TfidfCoder(word_ngrams=(1, 1), char_ngrams=(3, 4), classifier="svm", C=1.0).fit(train, val)
    assert coder.platt[0] > 0  # larger margins, higher probability
    preds = coder.predict(_notes(10, 5))
    assert all(0 < c.score < 1 for p in preds for c in p.codes)


def test_constant_codes_and_errors():
    notes = [Note.build(f"n{i}", f"same text {i}", [("I10", "icd10cm")]) for i in range(3)]
    coder = TfidfCoder(word_ngrams=(1, 1)).fit(notes)  # one code present everywhere: constant score
    assert coder.predict(notes[:1])[0].codes[0].score > 0.99
    with pytest.raises(ValueError, match="empty"):
        TfidfCoder().fit([])
    with pytest.raises(ValueError, match="classifier"):
        TfidfCoder(classifier="forest")
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfCoder().predict(notes)
