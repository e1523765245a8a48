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


def _objectives(X, Y, results, C=1.0, class_weight=None):
    """Each code's L2-loss SVM objective over every note (the bias regularised, as LIBLINEAR's -B 1;
    ``balanced``: each class weighted n / (2 n_class), as scikit-learn)."""
    out = []
    for j, (cols, w, b) in enumerate(results):
        y = np.where(Y[:, j].toarray().ravel() > 0, 1.0, -1.0)
        n, pos = len(y), int((y > 0).sum())
        cost = C * (np.where(y > 0, n / (2 * pos), n / (2 * (n - pos))) if class_weight == "balanced" else 1.0)
        margin = y * (X[:, cols] @ w.astype(np.float64) + b)
        out.append(0.5 * (float(w.astype(np.float64) @ w) + b * b) + (cost * np.maximum(0, 1 - margin) ** 2).sum())
    return np.array(out)


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
    full = _margins(X, train_ovr(X, Y, eps=1e-3, rare=0))  # margins of the tight solve on every note
    assert sizes == [600] * 20
    sizes.clear()
    small = list(train_ovr(X, Y, eps=1e-3, rare=2, working_set=4, anchors=3, gap=0.01))
    assert len(sizes) > 20  # a working set of 4 is too small for some code: it grew and was solved again
    assert sum(s <= 2 + 4 + 3 for s in sizes) == len(rare)  # each rare code began on its positives, 4 near, 3 far
    assert np.abs(full - _margins(X, small)).max() < 0.1  # near: the bound is on the objective, below
    optimum = _objectives(X, Y, train_ovr(X, Y, eps=1e-6, rare=0))
    assert (_objectives(X, Y, small)[rare] <= optimum[rare] * 1.011).all()


@pytest.mark.parametrize("gap, class_weight", [(0.05, None), (0.01, None), (0.05, "balanced")])
def test_rare_codes_are_solved_within_the_gap_of_the_optimum(gap, class_weight):
    """A rare code's set grows until the objective over every note is within ``gap`` of the set's own,
    which is below the optimum: so within ``gap`` of the SVM solved tightly on every note (up to the
    solver's tolerance on the set); with balanced class weights too (the refit weighs notes alike)."""
    X, Y = _data(n=1500, f=3000, codes=40, seed=0)
    rare = np.flatnonzero(np.diff(Y.indptr) <= 50)
    kw = {"class_weight": class_weight}
    optimum = _objectives(X, Y, train_ovr(X, Y, rare=0, eps=1e-6, **kw), **kw)[rare]
    excess = _objectives(X, Y, train_ovr(X, Y, gap=gap, **kw), **kw)[rare] / optimum - 1
    assert len(rare) >= 20 and excess.max() <= gap + 0.01, excess.max()


def test_the_refitted_intercept_minimises_the_objective():
    """The exact intercept for each column, against a numerical minimisation; columns in chunks."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    n, d = 200_001, 7  # over 1M entries: two chunks of columns
    scores = rng.normal(size=(n, d)) * 0.5 - 0.3
    y = np.where(rng.random((n, d)) < 0.05, 1.0, -1.0)
    cost = np.where(y > 0, 3.0, 0.7)
    got = linear_ovr.refit_bias(scores, y, cost)
    for j in range(d):
        def f(b, j=j):
            return 0.5 * b * b + (cost[:, j] * np.maximum(0, 1 - y[:, j] * (scores[:, j] + b)) ** 2).sum()
        ref = minimize_scalar(f, bounds=(-20, 20), method="bounded", options={"xatol": 1e-10}).x
        assert abs(got[j] - ref) < 1e-6 and f(got[j]) <= f(ref) + 1e-9


def test_the_notes_dot_products_choose_the_same_working_sets():
    """On few notes each block's likeness comes from the notes' dot products (``gram``) instead of two
    products over the features: the same sets, so the same models."""
    from sklearn.svm import LinearSVC

    X, Y = _data(n=400, codes=16, seed=4)
    positives = [Y.indices[Y.indptr[j]:Y.indptr[j + 1]] for j in range(Y.shape[1]) if Y[:, j].nnz <= 2]
    sets = []

    def solve(pos, rows):  # a deterministic stand-in for LIBLINEAR that records the sets it is given
        sets.append(tuple(rows))
        y = -np.ones(X.shape[0])
        y[pos] = 1.0
        m = LinearSVC(C=1.0, tol=1e-6, max_iter=100_000, random_state=0).fit(X[rows], y[rows])
        return np.append(m.coef_.ravel(), m.intercept_[0])

    costs = lambda pos: (1.0, 1.0)  # noqa: E731
    by_features = linear_ovr._solve_rare(X, positives, solve, 8, costs, anchors=4)
    first, sets = sets, []
    by_gram = linear_ovr._solve_rare(X, positives, solve, 8, costs, anchors=4, gram=(X @ X.T).toarray())
    assert len(positives) >= 4 and sets == first and np.array_equal(by_features, by_gram)


def test_codes_carried_by_the_same_notes_are_solved_once(monkeypatch):
    X, Y = _data(n=300, codes=6, seed=5)
    Y = sp.csc_matrix(sp.hstack([Y, Y[:, [1, 4]], Y[:, [1]]]))  # codes 6 and 8 repeat code 1, code 7 code 4
    solves = []
    with_labels = linear_ovr.Problem.with_labels

    def spy(self, y, rows=None):
        solves.append(1)
        return with_labels(self, y, rows)

    monkeypatch.setattr(linear_ovr.Problem, "with_labels", spy)
    for n_jobs in (1, 2):
        solves.clear()
        got = list(train_ovr(X, Y, rare=0, n_jobs=n_jobs))
        assert len(got) == 9 and len(solves) == 6
        for a, b in ((1, 6), (4, 7), (1, 8)):
            assert np.array_equal(got[a][0], got[b][0]) and np.array_equal(got[a][1], got[b][1])
            assert got[a][2] == got[b][2]
        assert not np.array_equal(got[1][1], got[4][1])


def test_a_failure_in_a_training_thread_reaches_the_caller(monkeypatch):
    X, Y = _data(n=200, codes=8, seed=6)
    with_labels = linear_ovr.Problem.with_labels
    calls = []

    def failing(self, y, rows=None):
        calls.append(1)
        if len(calls) == 5:
            raise MemoryError("no room for code 5")
        return with_labels(self, y, rows)

    monkeypatch.setattr(linear_ovr.Problem, "with_labels", failing)
    with pytest.raises(MemoryError, match="code 5"):
        list(train_ovr(X, Y, rare=0, n_jobs=2))


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
