"""The one-vs-rest LIBLINEAR trainer gives scikit-learn's models, and the tfidf coder built on it the
same F1 as with one scikit-learn estimator per code."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from icdcoder.coders import Coder
from icdcoder.coders import linear_ovr
from icdcoder.coders.linear_ovr import stack, train_ovr
from icdcoder.coders.tfidf import TfidfCoder


def _data(n=300, f=800, codes=12, seed=0):
    """Sparse non-negative features; code j is carried by one note, two, or up to a third of them,
    whose feature j is raised by 1 (a telling feature among noise)."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, f, density=0.03, format="csr", random_state=seed, dtype=np.float32)
    Y = np.zeros((n, codes), dtype=np.int8)
    for j in range(codes):
        k = (1, 2)[j % 4] if j % 4 < 2 else 1 + (j * n // 3) // codes
        Y[rng.choice(n, size=k, replace=False), j] = 1
    X = sp.csr_matrix(X + sp.hstack([sp.csr_matrix(Y, dtype=np.float32), sp.csr_matrix((n, f - codes))]))
    return X, sp.csc_matrix(Y)


def _margins(X, results):
    W, b = stack(list(results), X.shape[1])
    return (X @ W.T).toarray() + b


@pytest.mark.parametrize("classifier, class_weight, f", [("svm", None, 800), ("svm", "balanced", 800),
                                                          ("logreg", None, 800), ("logreg", None, 100),
                                                          ("logreg", "balanced", 800)])
def test_same_models_as_scikit_learn(classifier, class_weight, f):
    """Solved tightly, each code's weights and intercept are scikit-learn's (dual and primal logreg:
    features above and below the number of notes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    X, Y = _data(f=f)
    got = list(train_ovr(X, Y, classifier=classifier, C=1.0, class_weight=class_weight, eps=1e-7, rare=0))
    for j in (0, 5, 11):
        y = Y[:, j].toarray().ravel()
        if classifier == "svm":
            ref = LinearSVC(C=1.0, class_weight=class_weight, tol=1e-9, max_iter=100_000).fit(X, y)
        else:
            ref = LogisticRegression(C=1.0, solver="liblinear", dual=f > X.shape[0], class_weight=class_weight,
                                     tol=1e-9, max_iter=100_000).fit(X, y)
        cols, w, b = got[j]
        dense = np.zeros(X.shape[1])
        dense[cols] = w
        assert np.abs(dense - ref.coef_.ravel()).max() < 1e-3 and abs(b - ref.intercept_[0]) < 1e-3


def test_rare_codes_train_on_a_working_set_and_get_the_full_solution(monkeypatch):
    """Codes seen once or twice are solved on a few notes, grown until no note violates its margin:
    the margins are those of the solve on every note, within the solver's tolerance."""
    X, Y = _data(n=600, codes=20, seed=3)
    sizes = []
    with_labels = linear_ovr.Problem.with_labels

    def spy(self, y, rows=None):
        sizes.append(self.n_rows if rows is None else len(rows))
        return with_labels(self, y, rows)

    monkeypatch.setattr(linear_ovr.Problem, "with_labels", spy)
    rare = np.flatnonzero(np.diff(Y.indptr) <= 2)
    assert len(rare) >= 2
    full = _margins(X, train_ovr(X, Y, eps=1e-3, rare=0))
    assert sizes == [600] * 20
    sizes.clear()
    small = _margins(X, train_ovr(X, Y, eps=1e-3, rare=2, working_set=4))
    assert len(sizes) > 20  # a working set of 4 is too small for some code: it grew and was solved again
    assert sum(s <= 4 + 2 for s in sizes) == len(rare)  # each rare code began on its positives and 4 others
    assert np.abs(full - small).max() < 0.01


def test_a_fit_repeats_exactly_and_threads_give_the_models_of_one_thread():
    """LIBLINEAR's shuffling state would carry over from one fit to the next: each fit's threads get
    private copies of the library, so the same fit in the same process gives the same bits."""
    X, Y = _data(seed=1)
    for n_jobs in (1, 2):
        first, again = stack(list(train_ovr(X, Y, n_jobs=n_jobs)), X.shape[1]), stack(list(train_ovr(X, Y, n_jobs=n_jobs)), X.shape[1])
        assert (first[0] != again[0]).nnz == 0 and np.array_equal(first[1], again[1])
    one = _margins(X, train_ovr(X, Y, eps=1e-4, n_jobs=1))
    two = _margins(X, train_ovr(X, Y, eps=1e-4, n_jobs=2))
    assert np.abs(one - two).max() < 1e-2  # other shuffles, the same optimum


def test_constant_codes_pruning_and_errors():
    X, _ = _data()
    Y = sp.csc_matrix(np.stack([np.ones(X.shape[0]), np.zeros(X.shape[0]), np.arange(X.shape[0]) % 2], 1))
    (c1, w1, b1), (c0, w0, b0), (c, w, _) = train_ovr(X, Y, prune=0.05)
    assert (len(c1), b1, len(c0), b0) == (0, 10.0, 0, -10.0)
    assert w.dtype == np.float32 and len(c) > 0 and np.abs(w).min() >= 0.05
    assert len(c) < len(train_ovr(X, Y[:, 2], prune=0.0).__next__()[0])
    with pytest.raises(ValueError, match="classifier"):
        next(train_ovr(X, Y, classifier="forest"))
    with pytest.raises(ValueError, match="class_weight"):
        next(train_ovr(X, Y, class_weight="even"))
    with pytest.raises(ValueError, match="n_jobs"):
        next(train_ovr(X, Y, n_jobs=0))
    with pytest.raises(ValueError, match="notes"):
        next(train_ovr(X, Y[:10]))
    with pytest.raises(ValueError, match="solver"):
        TfidfCoder(solver="sgd")


@pytest.fixture(scope="module")
def synth():
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    splits = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig(n_train=600, n_val=300, n_test=300)):
        splits[split].append(note)
    return splits


@pytest.mark.slow
@pytest.mark.parametrize("classifier, C", [("svm", 1.0), ("logreg", 10.0)])
def test_same_f1_as_one_scikit_learn_estimator_per_code(synth, classifier, C):
    from icdcoder.evaluation import evaluate

    f1 = {}
    for solver in ("sklearn", "liblinear"):
        coder = TfidfCoder(classifier=classifier, C=C, solver=solver).fit(synth["train"], synth["val"])
        f1[solver] = evaluate(synth["test"], coder.predict(synth["test"]), threshold=coder.threshold)["micro_f1"]
    assert f1["sklearn"] > 0.5 and abs(f1["liblinear"] - f1["sklearn"]) <= 0.005, f1


def test_a_model_saved_before_the_solver_parameter_loads(tmp_path, synth):
    coder = TfidfCoder(word_ngrams=(1, 1), solver="liblinear").fit(synth["train"][:120], synth["val"][:40])
    coder.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "coder.json").read_text())
    del meta["params"]["solver"]  # as every model written before this trainer existed
    (tmp_path / "m" / "coder.json").write_text(json.dumps(meta))
    again = Coder.load(tmp_path / "m")
    assert again.params["solver"] == "sklearn"  # the default; the solver only matters when fitting
    a, b = coder.predict(synth["test"][:5]), again.predict(synth["test"][:5])
    assert [[(c.code, round(c.score, 6)) for c in p.codes] for p in a] == \
           [[(c.code, round(c.score, 6)) for c in p.codes] for p in b]
    assert any(p.codes for p in a)
