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
              n_jobs: int = 1, rare: int = 50,
              working_set: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """Yield, in code order, ``(columns, weights, bias)`` for each column of the 0/1 matrix ``Y``
    (notes x codes): the feature columns whose weight is at least ``prune`` in absolute value, those
    weights as float32, and the intercept. A code that every note or no note carries gets no weights
    and a bias of +10 or -10 (a constant score), as the per-code estimators gave.

    SVM codes with at most ``rare`` training notes are solved on a working set (see
    :func:`_solve_rare`): ``working_set`` notes (at most an eighth of them) to start with, grown until
    no other note violates its margin."""
    if classifier not in ("svm", "logreg"):
        raise ValueError(f"classifier must be 'svm' or 'logreg', not {classifier!r}")
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', not {class_weight!r}")
    ll = _liblinear()
    X = sp.csr_matrix(X)
    Y = sp.csc_matrix(Y)
    n, f = X.shape
    if Y.shape[0] != n:
        raise ValueError(f"{n} notes in X but {Y.shape[0]} in Y")
    solver = SVM_DUAL if classifier == "svm" else LOGREG_DUAL if f > n else LOGREG_PRIMAL
    problem = Problem(X)
    options = f"-s {solver} -c {C!r} -q" + (f" -e {eps!r}" if eps is not None else "")
    shared = ll.parameter(options)  # read-only in training; balanced weights need one per code
    start = min(working_set, max(n // 8, 1))  # on few notes a working set of half of them saved nothing

    def solve(lib, y: np.ndarray, pos: int, rows: np.ndarray | None = None) -> np.ndarray:
        param = shared
        if class_weight == "balanced":  # n / (2 n_class), as scikit-learn's compute_class_weight
            param = ll.parameter(options)
            param.nr_weight = 2
            param.weight_label = (ctypes.c_int * 2)(1, -1)
            param.weight = (ctypes.c_double * 2)(n / (2 * pos), n / (2 * (n - pos)))
        model = ll.toPyModel(lib.train(problem.with_labels(y, rows), param))  # freed with ``model``
        sign = 1.0 if model.get_labels()[0] == 1 else -1.0  # LIBLINEAR puts +1 first; checked anyway
        return sign * np.ctypeslib.as_array(model.w, (f + 1,))  # a copy: model.w is freed with model

    def one(lib, j: int) -> tuple[np.ndarray, np.ndarray, float]:
        positives = Y.indices[Y.indptr[j]:Y.indptr[j + 1]]
        pos = len(positives)
        if pos == 0 or pos == n:
            return np.zeros(0, np.int32), np.zeros(0, np.float32), 10.0 if pos else -10.0
        y = -np.ones(n)
        y[positives] = 1.0
        if solver == SVM_DUAL and pos <= rare and start + pos < n:
            w = _solve_rare(X, y, positives, lambda *a: solve(lib, *a), start, shared.eps)
        else:
            w = solve(lib, y, pos)
        keep = np.flatnonzero(np.abs(w[:f]) >= prune).astype(np.int32)
        return keep, w[keep].astype(np.float32), float(w[f] * BIAS)

    threads = min(n_threads(n_jobs), max(Y.shape[1], 1))
    if threads == 1:
        lib = private_library()
        yield from (one(lib, j) for j in range(Y.shape[1]))
        return

    def share(t: int) -> list:  # thread t trains codes t, t + threads, ... in order: the same every fit
        lib = private_library()
        return [one(lib, j) for j in range(t, Y.shape[1], threads)]

    with ThreadPoolExecutor(threads) as pool:
        shares = list(pool.map(share, range(threads)))
    for j in range(Y.shape[1]):
        yield shares[j % threads][j // threads]


def _solve_rare(X: sp.csr_matrix, y: np.ndarray, positives: np.ndarray, solve, size: int, tol: float) -> np.ndarray:
    """An SVM for a code with few training notes, trained on a few hundred notes instead of all.

    Why it is the same model: an SVM's solution depends only on its support vectors, the notes on or
    inside the margin; training on any set that holds them all gives the same weights. For a rare code
    they are few (a median of 125 of 2,000 notes for codes seen once in the synthetic corpus), so
    start from the positives and the negatives most like them, then check every note's margin and add
    the notes that violate it by more than the solver's own tolerance, worst first and at most as many
    as the set holds (adding every violator at once grew sets to thousands), until none does. On 10,000
    synthetic notes (one thread) a code seen 1-2 times took 25 ms instead of 108, 3-10 times 26 instead
    of 105, 11-50 times 52 instead of 120; codes seen more often gained nothing, hence ``rare``."""
    n, f = X.shape
    likeness = X @ np.asarray(X[positives].sum(axis=0)).ravel()
    likeness[positives] = np.inf
    rows = np.sort(np.argpartition(-likeness, size + len(positives) - 1)[:size + len(positives)])
    while True:
        w = solve(y, len(positives), rows)
        margin = y * (X @ w[:f].astype(np.float32) + w[f] * BIAS)
        outside = np.ones(n, dtype=bool)
        outside[rows] = False
        late = np.flatnonzero((margin < 1.0 - tol) & outside)
        if len(late) == 0:
            return w
        rows = np.union1d(rows, late[np.argsort(margin[late], kind="stable")[:len(rows)]])


def stack(results: list[tuple[np.ndarray, np.ndarray, float]], n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The pruned weights of every code as one CSR matrix (codes x features) and the biases."""
    counts = np.array([len(c) for c, _, _ in results], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cols = np.concatenate([c for c, _, _ in results]) if results else np.zeros(0, np.int32)
    vals = np.concatenate([v for _, v, _ in results]) if results else np.zeros(0, np.float32)
    W = sp.csr_matrix((vals.astype(np.float32), cols, indptr), shape=(len(results), n_features))
    return W, np.array([b for _, _, b in results], dtype=np.float32)
