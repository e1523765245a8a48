"""One-vs-rest linear models for many codes on one training matrix, with LIBLINEAR.

Why not one scikit-learn estimator per code: each ``fit`` validates, sorts, copies to float64 and
converts the whole training matrix into LIBLINEAR's format again, so with many codes most of the time
went into that (a profile of 2,000 notes x 988 codes: 25 of 50 s sorting indices, most of the
rest converting). Here the matrix is converted once; every code shares it and only swaps the labels.

Codes train on threads: the binding (``liblinear-multicore``, LibMultiLabel's back-end) calls the C
library through ctypes, which releases the GIL for the length of the solver, so the threads run on
real cores; the Python work per code (labels in, pruned weights out) is small. Weights are pruned
as each code finishes and kept as float32, so memory tracks the useful weights rather than codes x
features (LIBLINEAR itself computes in float64; its copy of the matrix is freed when training ends).

Models match scikit-learn's ``LinearSVC`` (L2-loss SVM, solved in the dual) and
``LogisticRegression(solver="liblinear")`` with an intercept (LIBLINEAR's bias feature of value 1,
regularised like scikit-learn's ``intercept_scaling=1``); ``class_weight="balanced"`` weighs each
code's classes as scikit-learn does. Stopping tolerance: LIBLINEAR's defaults unless ``eps`` is given
(0.1 for the dual solvers, as LibMultiLabel uses them; scikit-learn's 1e-4 took 1.5-2 times as long
for the same micro F1 on 2,000 synthetic notes).

Codes with few training notes (most of them, in ICD coding) are solved on working sets of notes,
within a bound on the objective of the SVM on every note (:func:`_solve_rare`), and codes carried by
exactly the same notes are solved once.

Reproducibility: LIBLINEAR shuffles with a generator of its own that no call resets; each thread of a
fit therefore trains with a private copy of the library and a fixed share of the codes (see
:func:`private_library`), so a fit repeats exactly for a given ``n_jobs`` (other thread counts give
weights that differ within the solver's tolerance).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import scipy.sparse as sp

#: LIBLINEAR solver numbers: L2-regularised L2-loss SVM (dual), logistic regression (primal, dual)
SVM_DUAL, LOGREG_PRIMAL, LOGREG_DUAL = 1, 0, 7
BIAS = 1.0  # value of the constant feature that carries the intercept, as scikit-learn's intercept_scaling


def _liblinear():
    try:
        from liblinear import liblinear as ll
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the tfidf coder's 'liblinear' solver needs the liblinear-multicore package "
                          "(pip install -c constraints.txt liblinear-multicore)") from e
    return ll


def private_library():
    """A copy of LIBLINEAR of one's own. LIBLINEAR shuffles with a generator whose state is a static
    variable that no call resets, so two fits in one process, or two threads, would shuffle differently
    and give weights that differ within the solver's tolerance (enough to reorder near-tied codes). Each
    thread of each fit loads its own copy of the library (a new file, so a new instance with fresh
    state): a fit repeats exactly, whatever ran before it."""
    ll = _liblinear()
    with tempfile.NamedTemporaryFile(prefix="icdcoder-liblinear-", suffix=".so") as copy:
        shutil.copyfile(ll.liblinear._name, copy.name)
        lib = ctypes.CDLL(copy.name)  # stays mapped once the file is removed
    lib.train.restype = ctypes.POINTER(ll.model)
    lib.train.argtypes = [ctypes.POINTER(ll.problem), ctypes.POINTER(ll.parameter)]
    lib.set_print_string_function.argtypes = [ll.PRINT_STRING_FUN]
    lib.set_print_string_function(ll.ctypes_print_null)
    return lib


def n_threads(n_jobs: int) -> int:
    """``n_jobs`` as a thread count: -1 means every physical core this process may use."""
    if n_jobs == -1:
        from joblib import cpu_count

        return max(1, min(cpu_count(only_physical_cores=True), len(os.sched_getaffinity(0))
                          if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be -1 or at least 1, not {n_jobs}")
    return n_jobs


class Problem:
    """A CSR matrix in LIBLINEAR's format (one feature-node array: each row's nodes, its bias node
    and an end marker), built once with numpy and shared read-only by every code's training."""

    def __init__(self, X: sp.csr_matrix):
        ll = _liblinear()
        X = sp.csr_matrix(X)
        if not X.has_sorted_indices:
            X = X.sorted_indices()
        n, f = X.shape
        counts = np.diff(X.indptr)
        self.rowptr = X.indptr.astype(np.int64) + 2 * np.arange(n + 1, dtype=np.int64)  # row starts
        space = np.empty(X.nnz + 2 * n, dtype=ll.feature_node)
        at = np.arange(X.nnz, dtype=np.int64) + 2 * np.repeat(np.arange(n, dtype=np.int64), counts)
        space["index"][at] = X.indices + 1  # LIBLINEAR counts features from 1
        space["value"][at] = X.data
        space["index"][self.rowptr[1:] - 2], space["value"][self.rowptr[1:] - 2] = f + 1, BIAS
        space["index"][self.rowptr[1:] - 1], space["value"][self.rowptr[1:] - 1] = -1, 0.0
        self.space, self.n_rows, self.n_features = space, n, f
        self.address = space.ctypes.data + self.rowptr[:-1] * space.itemsize  # of each row's first node
        self.all_rows = self._pointers(self.address)

    @staticmethod
    def _pointers(address: np.ndarray):
        ll = _liblinear()
        rows = (ctypes.POINTER(ll.feature_node) * len(address))()
        np.ctypeslib.as_array(ctypes.cast(rows, ctypes.POINTER(ctypes.c_uint64)), (len(address),))[:] = address
        return rows

    def with_labels(self, y: np.ndarray, rows: np.ndarray | None = None):
        """A LIBLINEAR problem on this matrix (or on its ``rows``) with labels ``y`` (+1/-1, one per
        note); it points into the shared matrix, nothing is copied."""
        ll = _liblinear()
        prob = ll.problem.__new__(ll.problem)
        if rows is None:
            prob.rows_kept, labels = self.all_rows, y
        else:
            prob.rows_kept, labels = self._pointers(self.address[rows]), y[rows]
        prob.l, prob.n, prob.bias, prob.x = len(labels), self.n_features + 1, BIAS, prob.rows_kept
        prob.y_kept = (ctypes.c_double * len(labels))()  # both kept alive with the problem
        np.ctypeslib.as_array(prob.y_kept)[:] = labels
        prob.y = prob.y_kept
        return prob


def train_ovr(X: sp.csr_matrix, Y: sp.spmatrix, *, classifier: str = "svm", C: float = 1.0,
              class_weight: str | None = None, eps: float | None = None, prune: float = 0.0,
              n_jobs: int = 1, rare: int = 50, working_set: int = 256, anchors: int = 16,
              gap: float = 0.05, block: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """Yield, in code order, ``(columns, weights, bias)`` for each column of the 0/1 matrix ``Y``
    (notes x codes): the feature columns whose weight is at least ``prune`` in absolute value, those
    weights as float32, and the intercept. A code that every note or no note carries gets no weights
    and a bias of +10 or -10 (a constant score), as the per-code estimators gave.

    SVM codes with at most ``rare`` training notes are solved on a working set (see
    :func:`_solve_rare`): ``working_set`` notes (at most an eighth of them) most like the positives
    and ``anchors`` least like them to start with, grown until the objective over every note is within
    ``gap`` (relative) of the optimum. Codes carried by exactly the same notes are solved once.
    Problems go through in blocks of ``block`` (default: as many as keep a notes x block matrix near 4M
    entries), so the rare codes of a block choose their working sets and check their bounds together."""
    if classifier not in ("svm", "logreg"):
        raise ValueError(f"classifier must be 'svm' or 'logreg', not {classifier!r}")
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', not {class_weight!r}")
    ll = _liblinear()
    X = sp.csr_matrix(X)
    Y = sp.csc_matrix(Y)
    n, f = X.shape
    m = Y.shape[1]
    if Y.shape[0] != n:
        raise ValueError(f"{n} notes in X but {Y.shape[0]} in Y")
    solver = SVM_DUAL if classifier == "svm" else LOGREG_DUAL if f > n else LOGREG_PRIMAL
    problem = Problem(X)
    options = f"-s {solver} -c {C!r} -q" + (f" -e {eps!r}" if eps is not None else "")
    shared = ll.parameter(options)  # read-only in training; balanced weights need one per code
    start = min(working_set, max(n // 8, 1))  # on few notes a working set of half of them saved nothing
    block = block or int(np.clip(4_000_000 // max(n, 1), 8, 256))
    # on few notes, the notes' dot products computed once spare each block of rare codes two products
    # over the features; only where they cost less than one block's (sum of squared document
    # frequencies against nnz x block; CodiEsp: 11.8M against 42.4M, 17 ms)
    gram = None
    if solver == SVM_DUAL and n <= 2048 and (np.diff(Y.indptr) <= rare).any():
        df = np.bincount(X.indices, minlength=f).astype(np.int64)
        if int((df * df).sum()) <= X.nnz * block:
            gram = (X @ X.T).toarray()
    # codes carried by exactly the same notes have the same model: each such problem is solved once
    # (CodiEsp English: 1,767 codes, 1,152 problems, as most codes come from one note)
    first: dict[bytes, int] = {}
    problem_of = np.array([first.setdefault(Y.indices[Y.indptr[j]:Y.indptr[j + 1]].tobytes(), len(first))
                           for j in range(m)], dtype=np.int64)
    reps = np.unique(problem_of, return_index=True)[1]  # a code of each problem, in problem order
    positives = [Y.indices[Y.indptr[j]:Y.indptr[j + 1]] for j in reps]

    def costs(pos: int) -> tuple[float, float]:
        """The loss weight of a positive and of a negative note of a code with ``pos`` positives."""
        if class_weight == "balanced":  # n / (2 n_class), as scikit-learn's compute_class_weight
            return C * n / (2 * pos), C * n / (2 * (n - pos))
        return C, C

    def solve(lib, positives: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """One code's weights and bias (``f + 1`` float64), trained on every note or on ``rows``."""
        pos = len(positives)
        y = -np.ones(n)
        y[positives] = 1.0
        param = shared
        if class_weight == "balanced":
            param = ll.parameter(options)
            param.nr_weight = 2
            param.weight_label = (ctypes.c_int * 2)(1, -1)
            param.weight = (ctypes.c_double * 2)(*(cost / C for cost in costs(pos)))
        model = ll.toPyModel(lib.train(problem.with_labels(y, rows), param))  # freed with ``model``
        sign = 1.0 if model.get_labels()[0] == 1 else -1.0  # LIBLINEAR puts +1 first; checked anyway
        return sign * np.ctypeslib.as_array(model.w, (f + 1,))  # a copy: model.w is freed with model

    def pruned(W: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Each row of ``W`` (codes x ``f + 1``) as its kept columns, their float32 weights and the bias."""
        out = []
        for w in W:
            keep = np.flatnonzero(np.abs(w[:f]) >= prune)
            out.append((keep.astype(np.int32), w[keep].astype(np.float32, copy=False), float(w[f] * BIAS)))
        return out

    def solved(lib, mine: list[int]) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, float]]]:
        """``(problem, result)`` for the problems ``mine``, in their order, a block at a time."""
        for at in range(0, len(mine), block):
            done: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
            few = []
            for u in mine[at:at + block]:
                pos = len(positives[u])
                if pos == 0 or pos == n:
                    done[u] = np.zeros(0, np.int32), np.zeros(0, np.float32), 10.0 if pos else -10.0
                elif solver == SVM_DUAL and pos <= rare and start + pos < n:
                    few.append(u)
                else:
                    done[u] = pruned(solve(lib, positives[u])[None])[0]
            if few:
                W = _solve_rare(X, [positives[u] for u in few], lambda *a: solve(lib, *a), start, costs, gap,
                                anchors, gram)
                done.update(zip(few, pruned(W)))
            yield from ((u, done[u]) for u in mine[at:at + block])

    # results come back in code order as they are ready, so a caller's progress moves while training runs
    results: list = [None] * len(positives)
    threads = min(n_threads(n_jobs), max(len(positives), 1))
    if threads == 1:
        stream = solved(private_library(), list(range(len(positives))))
        for u in problem_of:  # problems are numbered in the order of their first code
            while results[u] is None:
                v, result = next(stream)
                results[v] = result
            yield results[u]
        return
    ready = threading.Condition()

    def share(t: int) -> None:  # thread t solves problems t, t + threads, ...: the same every fit
        try:
            for u, result in solved(private_library(), list(range(t, len(positives), threads))):
                with ready:
                    results[u] = result
                    ready.notify_all()
        finally:  # a failure wakes the caller at once
            with ready:
                ready.notify_all()

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(share, t) for t in range(threads)]
        for u in problem_of:
            with ready:
                while results[u] is None:
                    for future in futures:
                        if future.done() and future.exception() is not None:
                            raise future.exception()
                    ready.wait(timeout=1.0)
            yield results[u]


def _solve_rare(X: sp.csr_matrix, positives: list[np.ndarray], solve, size: int, costs, gap: float = 0.05,
                anchors: int = 16, gram: np.ndarray | None = None) -> np.ndarray:
    """SVMs for codes with few training notes, each trained on a few hundred notes instead of all: their
    weights as float32 rows (codes x features + 1, the bias last).

    Why it is (nearly) the same model: an SVM's solution depends on the notes on or inside its margin;
    for a rare code most notes are far outside it. Start from the positives, the ``size`` negatives
    most like them and the ``anchors`` least like them, solve, and bound how far the solution is from
    the SVM on every note: the objective on the set is at most the optimum on every note (fewer loss
    terms), and the objective over every note at the solution, with its intercept refitted exactly
    over every note (:func:`refit_bias`), is at least it. While the two differ by more than ``gap``
    (relative), add the notes outside the set with the largest losses, at most as many as the set
    holds (adding every one at once grew sets to thousands), and solve again. So each rare code's
    objective is within ``gap`` of the optimum, up to the solver's own tolerance on the set.

    What an earlier rule missed: stopping when no note violates its margin by more than the solver's
    tolerance left hundreds of notes just inside it; each adds a little squared hinge loss, and the
    objective sat 13% (CodiEsp) to 31% (20k generated notes) above the optimum on average, up to 75%
    for a code. Most of it was the intercept, which the notes unlike the positives set: the anchors
    and the refit fix that. With ``gap`` 0.05, measured against LIBLINEAR solving every note at
    ``eps`` 1e-3: 2.0% above on average (at most 3.2%) on CodiEsp, 1.4% (3.1%) on 20k generated notes;
    LIBLINEAR on every note at its default tolerance: 1.0% (5.2%) and 1.4% (23%). (Under the earlier
    rule, on 10,000 synthetic notes, a code seen 1-2 times took 25 ms instead of 108 solving every
    note, 11-50 times 52 instead of 120; codes seen more often gained nothing, hence ``rare``.)

    The codes of a block go together: one product gives each code's likeness to every note (from the
    notes' dot products ``gram`` when given), one product per round every unfinished code's margins,
    and the bounds and intercepts are computed on the notes x codes matrix at once (per-code products,
    and the Python around them, were 1.3x slower on CodiEsp); the weights land in one float32 matrix
    that is pruned at once."""
    n, f = X.shape
    k = len(positives)
    which = np.repeat(np.arange(k), [len(p) for p in positives])
    P = sp.csr_matrix((np.ones(len(which), dtype=X.dtype), (which, np.concatenate(positives))), shape=(k, n))
    if gram is not None:  # codes x notes: each code's positives' dot products with every note
        likeness = np.asarray(P @ gram)
    else:
        likeness = np.ascontiguousarray((X @ np.ascontiguousarray((P @ X).toarray().T)).T)
    rows, labels = [], []
    for c, p in enumerate(positives):
        likeness[c, p] = np.inf
        near = np.argpartition(-likeness[c], size + len(p) - 1)[:size + len(p)]
        far = np.argpartition(likeness[c], anchors - 1)[:anchors] if 0 < anchors < n else near[:0]
        rows.append(np.union1d(near, far))
        y = -np.ones(n, dtype=np.float32)
        y[p] = 1.0
        labels.append(y)
    del likeness
    W = np.empty((k, f + 1), dtype=np.float32)  # each code's latest weights, bias last
    active = np.arange(k)
    while len(active):
        for c in active:
            W[c] = solve(positives[c], rows[c])
        weights = W[active, :f]
        bias = W[active, f].astype(np.float64)
        margins = X @ np.ascontiguousarray(weights.T)  # notes x unfinished codes
        margins += bias * BIAS
        # the objective over every note, bounded below by the set's own (the optimum on fewer notes)
        y = np.stack([labels[c] for c in active], axis=1)
        cost = np.array([costs(len(positives[c])) for c in active], dtype=np.float64)
        cost = np.where(y > 0, cost[:, 0], cost[:, 1])
        inside = np.zeros(y.shape, dtype=bool)
        for i, c in enumerate(active):
            inside[rows[c], i] = True
        norm = np.einsum("ij,ij->i", weights, weights, dtype=np.float64)
        lower = 0.5 * (norm + bias ** 2) + (cost * np.maximum(0.0, 1.0 - y * margins) ** 2 * inside).sum(axis=0)
        scores = margins - bias * BIAS
        bias = refit_bias(scores, y, cost)  # the intercept best over every note, the weights held
        W[active, f] = bias
        loss = cost * np.maximum(0.0, 1.0 - y * (scores + bias * BIAS)) ** 2
        upper = 0.5 * (norm + bias ** 2) + loss.sum(axis=0)
        loss[inside] = 0.0
        unfinished = np.flatnonzero(upper - lower > gap * lower)
        for i in unfinished:  # grow: the notes outside the set with the largest losses
            c = active[i]
            late = np.flatnonzero(loss[:, i] > 0)
            rows[c] = np.union1d(rows[c], late[np.argsort(-loss[late, i], kind="stable")[:len(rows[c])]])
        active = active[unfinished]
    return W


def refit_bias(scores: np.ndarray, y: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """For each column (a code): the intercept that minimises the L2-loss SVM's objective over every
    note with the weights held (``scores``: notes x codes, each note's score without the intercept;
    ``y`` +1/-1; ``cost`` each note's loss weight). Exact: the objective's derivative in the intercept,
    ``b + 2 sum(cost (b - t))`` over the notes whose hinge is open at ``b`` (a positive below its
    breakpoint ``t = 1 - score``, a negative above ``t = -1 - score``), is piecewise linear and rising,
    so its root lies between two sorted breakpoints where it is one line. Columns go a few at a time
    (about 1M notes x codes), as each takes a dozen float64 arrays of its size."""
    step = max(1, 1_000_000 // max(len(scores), 1))
    if scores.shape[1] > step:
        return np.concatenate([refit_bias(scores[:, a:a + step], y[:, a:a + step], cost[:, a:a + step])
                               for a in range(0, scores.shape[1], step)])
    scores = np.asarray(scores, dtype=np.float64)
    pos = y > 0
    t = np.where(pos, 1.0, -1.0) - scores  # each note's breakpoint (the bias feature is 1)
    order = np.argsort(t, axis=0, kind="stable")
    t = np.take_along_axis(t, order, axis=0)
    c = np.take_along_axis(np.broadcast_to(cost, t.shape), order, axis=0)
    p = np.take_along_axis(pos, order, axis=0)
    # on segment k (between sorted breakpoints k-1 and k) the negatives among the first k are open and
    # the positives from k on: there the derivative is the line slope[k] b - offset[k]
    neg, pos_ = np.where(p, 0.0, c), np.where(p, c, 0.0)
    zero = np.zeros((1, t.shape[1]))
    open_neg_c = np.vstack([zero, np.cumsum(neg, axis=0)])
    open_neg_ct = np.vstack([zero, np.cumsum(neg * t, axis=0)])
    open_pos_c = pos_.sum(axis=0) - np.vstack([zero, np.cumsum(pos_, axis=0)])
    open_pos_ct = (pos_ * t).sum(axis=0) - np.vstack([zero, np.cumsum(pos_ * t, axis=0)])
    slope = 1.0 + 2.0 * (open_neg_c + open_pos_c)
    offset = 2.0 * (open_neg_ct + open_pos_ct)
    # the derivative at breakpoint k (continuous there, so from segment k) rises with k: the root's
    # segment is the first whose right end is not below zero
    k = (slope[:-1] * t - offset[:-1] < 0).sum(axis=0)
    cols = np.arange(t.shape[1])
    return offset[k, cols] / slope[k, cols]


def stack(results: list[tuple[np.ndarray, np.ndarray, float]], n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The pruned weights of every code as one CSR matrix (codes x features) and the biases."""
    counts = np.array([len(c) for c, _, _ in results], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cols = np.concatenate([c for c, _, _ in results]) if results else np.zeros(0, np.int32)
    vals = np.concatenate([v for _, v, _ in results]) if results else np.zeros(0, np.float32)
    W = sp.csr_matrix((vals.astype(np.float32, copy=False), cols, indptr), shape=(len(results), n_features))
    return W, np.array([b for _, _, b in results], dtype=np.float32)
