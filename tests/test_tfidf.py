import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

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
    X = coder._features([notes[0].text])
    assert coder._probabilities(coder._margins(X))[0, 0] > 0.99 and coder.W.nnz == 0
    assert coder.predict(notes[:1])[0].codes == []  # no word raises it: its prior alone suggests nothing
    with pytest.raises(ValueError, match="empty"):
        TfidfCoder().fit([])
    with pytest.raises(ValueError, match="classifier"):
        TfidfCoder(classifier="forest")
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfCoder().predict(notes)


# characters whose lower-case form is longer (İ), or that other case mappings expand (ß, ﬁ), combining
# marks, and emoji (one code point, or several joined): none may move a span off its word
AWKWARD = ["İstanbul İİ", "Straße ß", "ﬁle ﬃ", "cafe\u0301 n\u0303o",
           "\U0001F600 \U0001F1EB\U0001F1F7 \U0001F469\u200d\u2695\ufe0f", "İ ß ﬁ e\u0301 \U0001F600"]


@pytest.mark.parametrize("before", AWKWARD)
def test_evidence_offsets_refer_to_the_original_text(fitted, before):
    coder, _ = fitted
    text = f"{before} patient admitted {before} with HYPERTENSION and {before} pneumonia, {before}"
    pred = coder.predict([Note(id="n", text=text)])[0]
    found = {c.code: c.evidence for c in pred.codes if c.score >= coder.threshold}
    assert {"I10", "J18.9"} <= set(found)
    for code, word in (("I10", "HYPERTENSION"), ("J18.9", "pneumonia")):
        ev = found[code][0]
        assert text[ev.start:ev.end] == ev.text == word


TERMS = {t for words in WORDS.values() for t in words.split()}


@settings(max_examples=150, deadline=None)
@given(before=st.text(), after=st.text())
@example(before="İ", after="")
def test_every_evidence_span_is_a_word_of_the_note(fitted, before, after):
    coder, _ = fitted
    text = f"{before} hypertension {after}"
    for c in coder.predict([Note(id="n", text=text)])[0].codes:
        for ev in c.evidence:
            assert text[ev.start:ev.end] == ev.text and ev.text.lower() in TERMS


UNREADABLE = ["12345", "Lorem ipsum dolor sit amet", "\U0001F600\U0001F44D",
              "Paciente con dolor torácico y fiebre desde ayer"]


def test_a_note_without_a_known_word_gets_no_codes(tiny_model_dir, small_synth):
    """The frequent codes' bias alone cleared the threshold (C34.90, I10, N18.4 and F17.210 on each of these)."""
    coder = Coder.load(tiny_model_dir)
    preds = coder.predict([Note(id=f"j{i}", text=t) for i, t in enumerate(UNREADABLE)])
    assert [p.codes for p in preds] == [[] for _ in UNREADABLE]
    real = coder.predict(small_synth["test"])  # notes it can read keep their candidates, with evidence
    assert all(len(p.codes) == coder.params["top_k"] for p in real)
    assert all(c.evidence for p in real for c in p.codes if c.score >= coder.threshold)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_top_k_is_a_stable_argsorts_first_k(data):
    """Scores with many ties (a few distinct values) and any k: the partial sort picks and orders codes
    as the full stable argsort did."""
    from icdcoder.coders.tfidf import top_k

    rows, cols = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 120))
    S = np.array(data.draw(st.lists(st.integers(-2, 3), min_size=rows * cols, max_size=rows * cols)),
                 dtype=np.float32).reshape(rows, cols)
    k = data.draw(st.integers(1, cols))
    assert (top_k(S, k) == np.argsort(-S, axis=1, kind="stable")[:, :k]).all()


@pytest.fixture(scope="module")
def svm_coder(small_synth):
    return TfidfCoder(word_ngrams=(1, 2), classifier="svm", C=1.0).fit(small_synth["train"], small_synth["val"])


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_top_supported_codes_on_dense_weights_are_the_full_support_answer(svm_coder, small_synth, k):
    """The dense-weight path checks only each note's 4k most probable codes (and the whole row when
    fewer than k of them are raised): it must pick what scoring every (note, code) pair picks."""
    from icdcoder.coders.tfidf import top_k

    coder = svm_coder
    few = " ".join(small_synth["train"][0].text.split()[:3])  # a note that raises few codes
    notes = small_synth["test"] + [Note(id="few", text=few), Note(id="none", text="lorem ipsum")]
    X = coder._features([n.text for n in notes])
    P = coder._probabilities(coder._margins(X))
    supported = coder._support(X)
    expected = [row[supported[i, row]] for i, row in enumerate(top_k(np.where(supported, P, -1.0), k))]
    assert 4 * k < len(coder.codes) and any(len(e) < k for e in expected)  # both paths are taken
    coder._WT, coder._WT_of = np.ascontiguousarray(coder.W.T.toarray()), coder.W  # dense, whatever the density
    try:
        got = coder._top_supported(X, P, k)
    finally:
        coder._WT_of = None
    assert [g.tolist() for g in got] == [e.tolist() for e in expected]


def test_scores_do_not_depend_on_the_number_of_threads(tiny_model_dir, small_synth, monkeypatch):
    """Row blocks scored on threads give the single thread's margins bit for bit."""
    import concurrent.futures

    coder = Coder.load(tiny_model_dir)
    X = coder._features([n.text for n in (small_synth["train"] * 2)[:300]])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = coder._margins(X)
    pools = []

    class Counting(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, n, *a, **kw):
            pools.append(n)
            super().__init__(n, *a, **kw)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Counting)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    three = coder._margins(X)
    assert pools == [3] and one.shape == (300, len(coder.codes))
    assert np.array_equal(one, three)
