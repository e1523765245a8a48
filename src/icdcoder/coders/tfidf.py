"""TF-IDF + linear one-vs-rest: the baseline every other coder must beat.

Sparse all the way: the vectoriser gives a CSR matrix, each code gets one linear model, and the
weights of all codes are stacked into one pruned CSR matrix ``W`` (codes x features), so scoring a
batch is one sparse product ``X @ W.T + b`` and memory grows with the useful weights, not with
codes x features. Scores are probabilities: logistic regression gives them directly; a linear SVM's
margins are mapped through one Platt sigmoid fitted on validation (per-code calibration is not
possible for codes with one or two training examples).

Evidence for a predicted code: the word n-grams of the note whose tf-idf value times the code's
weight is largest, located in the text. The vectoriser reads the note lower-cased, and lower-casing can
lengthen a character ("İ" becomes "i" and a combining dot), so the n-grams are found in the lower-cased
text and their offsets mapped back to the original characters: evidence offsets always refer to the note.

Abstaining: a code is a candidate for a note only when at least one word n-gram of the note raises its
score (tf-idf value times the code's weight is positive), i.e. only when it has evidence. Without
this a frequent code's bias alone could clear the threshold on a note the model cannot read ("12345",
"Lorem ipsum", emoji, another language); such a note gets no codes. Character n-grams, when used,
refine the score of a candidate but do not make one: a fragment of a word is no evidence a reviewer
can check. A code that every training note carries has no weights at all and is never suggested.

A saved model is data only, so loading one never runs code: ``weights.npz`` and ``bias.npy``, and the
vectorisers as ``tfidf.json`` (codes, Platt sigmoid, settings and vocabulary) plus ``vectors.npz``
(idf weights), loaded into light vectorisers that give scikit-learn's matrix without importing it
(see :mod:`icdcoder.coders.tfidf_vectors`, which also reads older models' ``vectorizers.pkl`` safely).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from icdcoder.coders.base import Coder, register
from icdcoder.coders.tfidf_vectors import LightTfidfVectorizer, load_pickled, reading
from icdcoder.data.note import Note
from icdcoder.errors import IcdcoderError
from icdcoder.prediction import Evidence, Prediction

_BATCH = 512
_MIN_ROWS_PER_THREAD = 64  # smaller blocks cost more in threads than they save
# Format 2: the vectorisers as data (tfidf.json: codes, platt, each vectoriser's settings and terms in
# column order; vectors.npz: idf weights). Format 1 pickled them in vectorizers.pkl, still read (safely).
FORMAT = 2
WEIGHTS_FILE, BIAS_FILE, STATE_FILE, VECTORS_FILE, PICKLED_FILE = ("weights.npz", "bias.npy", "tfidf.json",
                                                                   "vectors.npz", "vectorizers.pkl")


@register("tfidf")
class TfidfCoder(Coder):
    """Parameters: ``word_ngrams``, ``char_ngrams`` (None to skip), ``max_features`` (per vectoriser),
    ``min_df``, ``classifier`` (``logreg`` or ``svm``), ``C``, ``class_weight``, ``top_k`` codes kept
    per note, ``prune`` (weights below it in absolute value are dropped), ``evidence`` n-grams per code,
    ``n_jobs`` (codes trained at once; -1: one per physical core), ``solver``: ``sklearn`` (one
    scikit-learn estimator per code; the default until the README's figures are re-run with the other)
    or ``liblinear`` (one conversion of the training matrix shared by every code, see
    :mod:`icdcoder.coders.linear_ovr`: LIBLINEAR's models, rare SVM codes within 5% of the optimum;
    2.1-5.1x faster than LibMultiLabel at the same micro F1, bench/bench_linear.py). A note's
    candidates are the codes that one of its word n-grams raises (see the module docstring: without a
    word it knows, a note gets no codes)."""

    state_files = (WEIGHTS_FILE, BIAS_FILE, STATE_FILE, VECTORS_FILE)
    legacy_pickles = (PICKLED_FILE,)

    def __init__(self, word_ngrams: tuple[int, int] = (1, 2), char_ngrams: tuple[int, int] | None = None,
                 max_features: int = 200_000, min_df: int = 2, classifier: str = "logreg", C: float = 10.0,
                 class_weight: str | None = None, top_k: int = 50, prune: float = 1e-4, evidence: int = 3,
                 n_jobs: int = 1, seed: int = 13, solver: str = "sklearn"):
        super().__init__(word_ngrams=list(word_ngrams), char_ngrams=list(char_ngrams) if char_ngrams else None,
                         max_features=max_features, min_df=min_df, classifier=classifier, C=C,
                         class_weight=class_weight, top_k=top_k, prune=prune, evidence=evidence, n_jobs=n_jobs,
                         seed=seed, solver=solver)
        if classifier not in ("logreg", "svm"):
            raise ValueError(f"classifier must be 'logreg' or 'svm', not {classifier!r}")
        if solver not in ("liblinear", "sklearn"):
            raise ValueError(f"solver must be 'liblinear' or 'sklearn', not {solver!r}")
        self.word_vec = self.char_vec = None
        self.codes: list[str] = []
        self.W: sp.csr_matrix | None = None
        self.b: np.ndarray | None = None
        self.platt = (1.0, 0.0)

    # ------------------------------------------------------------------------------------ features
    def _vectorizers(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        p = self.params
        min_df = p["min_df"]
        word = TfidfVectorizer(ngram_range=tuple(p["word_ngrams"]), max_features=p["max_features"], min_df=min_df,
                               sublinear_tf=True, lowercase=True, token_pattern=r"(?u)\b\w[\w.]*\b", dtype=np.float32)
        char = None
        if p["char_ngrams"]:
            char = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(p["char_ngrams"]),
                                   max_features=p["max_features"], min_df=min_df, sublinear_tf=True,
                                   dtype=np.float32)
        return word, char

    def _features(self, texts: Sequence[str], fit: bool = False) -> sp.csr_matrix:
        if fit:
            self.word_vec, self.char_vec = self._vectorizers()
            if len(texts) < self.params["min_df"]:  # tiny corpora (tests, single notes): keep every term
                self.word_vec.min_df = 1
                if self.char_vec is not None:
                    self.char_vec.min_df = 1
        parts = [self.word_vec.fit_transform(texts) if fit else self.word_vec.transform(texts)]
        if self.char_vec is not None:
            parts.append(self.char_vec.fit_transform(texts) if fit else self.char_vec.transform(texts))
        X = sp.hstack(parts, format="csr", dtype=np.float32) if len(parts) > 1 else parts[0].tocsr()
        return X

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "TfidfCoder":
        from joblib import Parallel, delayed

        if not train:
            raise ValueError("cannot fit on an empty training set")
        self._remember_labels(train)
        X = self._features([n.text for n in train], fit=True)
        self.codes = sorted({c for n in train for c in n.codes})
        index = {c: j for j, c in enumerate(self.codes)}
        rows = [(i, index[c]) for i, n in enumerate(train) for c in n.codes]
        Y = sp.csc_matrix((np.ones(len(rows), dtype=np.int8), ([r for r, _ in rows], [c for _, c in rows])),
                          shape=(len(train), len(self.codes)))
        from icdcoder.progress import track

        p = self.params
        if p["solver"] == "liblinear":
            from icdcoder.coders.linear_ovr import stack, train_ovr

            jobs = train_ovr(X, Y, classifier=p["classifier"], C=p["C"], class_weight=p["class_weight"],
                             prune=p["prune"], n_jobs=p["n_jobs"])
            self.W, self.b = stack(list(track(jobs, "tfidf fit", total=len(self.codes), unit="code")), X.shape[1])
            return self._calibrate(val)
        jobs = Parallel(n_jobs=self.params["n_jobs"], prefer="threads", return_as="generator")(
            delayed(self._fit_one)(X, Y[:, j].toarray().ravel()) for j in range(len(self.codes)))
        results = list(track(jobs, "tfidf fit", total=len(self.codes), unit="code"))  # in code order
        self._stack(results, X.shape[1])
        return self._calibrate(val)

    def _calibrate(self, val: Sequence[Note] | None) -> "TfidfCoder":
        """The Platt sigmoid (SVM) and the decision threshold, both on validation."""
        if self.params["classifier"] == "svm" and val:
            self._fit_platt(val)
        if val:
            self.tune_threshold(val)
        return self

    def _fit_one(self, X: sp.csr_matrix, y: np.ndarray) -> tuple[np.ndarray, float]:
        """One code's weights and bias; a code without both classes gets a constant score."""
        pos = int(y.sum())
        if pos == 0 or pos == len(y):
            return np.zeros(X.shape[1], dtype=np.float32), (10.0 if pos else -10.0)
        p = self.params
        if p["classifier"] == "logreg":
            from sklearn.linear_model import LogisticRegression

            # the dual problem is far cheaper when features outnumber notes, as with n-grams they do
            clf = LogisticRegression(C=p["C"], solver="liblinear", dual=X.shape[1] > X.shape[0],
                                     class_weight=p["class_weight"],
                                     random_state=p["seed"])
        else:
            from sklearn.svm import LinearSVC

            clf = LinearSVC(C=p["C"], class_weight=p["class_weight"], random_state=p["seed"])
        clf.fit(X, y)
        return clf.coef_.ravel().astype(np.float32), float(clf.intercept_[0])

    def _stack(self, results: list[tuple[np.ndarray, float]], n_features: int) -> None:
        rows, cols, vals = [], [], []
        for j, (w, _) in enumerate(results):
            keep = np.flatnonzero(np.abs(w) >= self.params["prune"])
            rows.append(np.full(len(keep), j, dtype=np.int32))
            cols.append(keep.astype(np.int32))
            vals.append(w[keep])
        self.W = sp.csr_matrix((np.concatenate(vals) if vals else [], (np.concatenate(rows) if rows else [],
                                np.concatenate(cols) if cols else [])),
                               shape=(len(results), n_features), dtype=np.float32)
        self.b = np.array([b for _, b in results], dtype=np.float32)

    def _scoring(self) -> sp.csr_matrix | np.ndarray:
        # W.T, converted once per weight matrix: converting on every call cost ~30 ms per note on a
        # 300-code model, most of the time of a one-note request to the server
        if getattr(self, "_WT_of", None) is not self.W:
            self._WT, self._WT_of = scoring_matrix(self.W), self.W
        return self._WT

    def _margins(self, X: sp.csr_matrix) -> np.ndarray:
        WT = self._scoring()

        def product(rows: slice) -> np.ndarray:
            M = X[rows] @ WT
            return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float32)

        # scipy's sparse products release the GIL: row blocks on threads use every core (each row's
        # product is computed the same way whatever the split, so the scores do not depend on it)
        threads = X.shape[0] // _MIN_ROWS_PER_THREAD  # a server's one-note requests stop here
        if threads > 1:
            threads = min(threads, prediction_threads())
        if threads <= 1:
            return product(slice(None)) + self.b
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, X.shape[0], threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            blocks = list(pool.map(product, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
        return np.vstack(blocks) + self.b

    def _top_supported(self, X: sp.csr_matrix, P: np.ndarray, k: int) -> list[np.ndarray]:
        """Per note, the ``k`` most probable codes that a word n-gram of the note raises (see the module
        docstring), most probable first, ties by column; fewer when fewer are raised.

        With dense weights and many codes, the support of every (note, code) pair would cost as much as
        the scores: only each note's ``4k`` most probable codes are checked, on the note's own words,
        and a note with fewer than ``k`` supported among them is checked in full. The answer is the
        same, since the most probable supported codes lie in any prefix of the ranking that holds ``k``
        of them. (Measured on 7,270 codes with 57% non-zero weights: 0.2 ms a note, against 7.6 ms for
        the full support matrix.)"""
        WT = self._scoring()
        width = 4 * k
        if not isinstance(WT, np.ndarray) or width >= P.shape[1]:
            supported = self._support(X)
            top = top_k(np.where(supported, P, -1.0), k)
            return [row[supported[i, row]] for i, row in enumerate(top)]
        n_words = len(self.word_vec.vocabulary_)
        ranked = top_k(P, width)
        out = []
        for i, row in enumerate(ranked):
            cols = X.indices[X.indptr[i]:X.indptr[i + 1]]
            cols = cols[cols < n_words]
            found: list[np.ndarray] = []
            n_found = 0
            for start in range(0, width, k):  # k at a time: the first k are usually all supported
                chunk = row[start:start + k]
                chunk = chunk[(WT[np.ix_(cols, chunk)] > 0).any(axis=0)]
                found.append(chunk)
                n_found += len(chunk)
                if n_found >= k:
                    break
            if n_found >= k:
                out.append(np.concatenate(found)[:k])
                continue
            supported = (WT[cols, :] > 0).any(axis=0)  # the whole row: few codes raised for this note
            full = top_k(np.where(supported, P[i], -1.0)[None, :], k)[0]
            out.append(full[supported[full]])
        return out

    def _support(self, X: sp.csr_matrix) -> np.ndarray:
        """notes x codes, True where a word n-gram of the note raises the code's score (its evidence)."""
        n_words = len(self.word_vec.vocabulary_)
        if getattr(self, "_raises_of", None) is not self.W:  # words x codes, 1 where the weight is positive
            W = self.W[:, :n_words]
            self._raises, self._raises_of = (W > 0).astype(np.float32).T.tocsr(), self.W
        words = X[:, :n_words].astype(bool).astype(np.float32)
        return np.asarray((words @ self._raises).todense()) > 0

    def _fit_platt(self, val: Sequence[Note]) -> None:
        """One sigmoid for all codes, fitted on validation margins (a logistic regression on one feature)."""
        from sklearn.linear_model import LogisticRegression

        X = self._features([n.text for n in val])
        M = self._margins(X)
        index = {c: j for j, c in enumerate(self.codes)}
        Y = np.zeros_like(M, dtype=np.int8)
        for i, n in enumerate(val):
            for c in n.codes:
                if c in index:
                    Y[i, index[c]] = 1
        if 0 < Y.sum() < Y.size:
            lr = LogisticRegression(C=1e4).fit(M.reshape(-1, 1), Y.ravel())
            self.platt = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    def _probabilities(self, margins: np.ndarray) -> np.ndarray:
        if self.params["classifier"] == "logreg":
            z = margins
        else:
            a, c = self.platt
            z = a * margins + c
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    # ------------------------------------------------------------------------------------- predict
    def predict(self, notes: Sequence[Note]) -> list[Prediction]:
        if self.W is None:
            raise RuntimeError("TfidfCoder is not fitted")
        out: list[Prediction] = []
        k = min(self.params["top_k"], len(self.codes))
        for start in range(0, len(notes), _BATCH):
            batch = notes[start:start + _BATCH]
            X = self._features([n.text for n in batch])
            P = self._probabilities(self._margins(X))
            for i, (note, top) in enumerate(zip(batch, self._top_supported(X, P, k))):
                scores = {self.codes[j]: float(P[i, j]) for j in top}
                shown = [j for j in top if P[i, j] >= self.threshold]
                x = X[i] if shown else None
                ev = {self.codes[j]: self._evidence(note.text, x, j) for j in shown}
                out.append(Prediction.from_scores(note.id, scores, ev))
        return out

    def _evidence(self, text: str, x: sp.csr_matrix, j: int) -> list[Evidence]:
        """Word n-grams whose tf-idf times weight for code ``j`` is largest and positive, located in ``text``."""
        n_words = len(self.word_vec.vocabulary_)
        words = x.indices < n_words
        cols = x.indices[words]
        if len(cols) == 0 or self.params["evidence"] <= 0:
            return []
        # code j's weights on the note's columns, read from the CSR row directly (scipy's indexing cost
        # ~0.5 ms a code, most of a prediction's time when codes are many)
        W = self.W
        if not W.has_sorted_indices:
            W.sort_indices()
        wcols, wvals = W.indices[W.indptr[j]:W.indptr[j + 1]], W.data[W.indptr[j]:W.indptr[j + 1]]
        if len(wcols) == 0:
            return []
        at = np.minimum(np.searchsorted(wcols, cols), len(wcols) - 1)
        contrib = x.data[words] * np.where(wcols[at] == cols, wvals[at], np.float32(0))
        order = np.argsort(-contrib)[: self.params["evidence"]]
        names = self._feature_names()
        lower, origin = lowered(text)
        out = []
        for o in order:
            if contrib[o] <= 0:
                break
            m = _term_pattern(names[cols[o]]).search(lower)
            if m:
                start, end = (m.start(), m.end()) if origin is None else (origin[m.start()], origin[m.end() - 1] + 1)
                out.append(Evidence(start=start, end=end, text=text[start:end]))
        return out

    def _feature_names(self) -> np.ndarray:
        if getattr(self, "_names", None) is None:
            self._names = self.word_vec.get_feature_names_out()
        return self._names

    # -------------------------------------------------------------------------------- persistence
    def _save_state(self, folder: Path) -> None:
        sp.save_npz(folder / WEIGHTS_FILE, self.W)
        np.save(folder / BIAS_FILE, self.b)
        vectorizers, idf = {}, {}
        for name, vec in (("word", self.word_vec), ("char", self.char_vec)):
            if vec is not None:
                light = LightTfidfVectorizer.from_fitted(vec)
                vectorizers[name] = {**light.settings(), "vocabulary": light.terms}
                if light.idf_ is not None:
                    idf[name] = light.idf_
        state = {"format": FORMAT, "codes": self.codes, "platt": list(self.platt), "vectorizers": vectorizers}
        (folder / STATE_FILE).write_text(json.dumps(state, separators=(",", ":")), encoding="utf-8")
        np.savez(folder / VECTORS_FILE, **idf)

    def _load_state(self, folder: Path) -> None:
        with reading(folder / WEIGHTS_FILE):
            self.W = sp.load_npz(folder / WEIGHTS_FILE).tocsr()  # refuses pickled arrays
        with reading(folder / BIAS_FILE):
            self.b = np.load(folder / BIAS_FILE, allow_pickle=False)
        if (folder / STATE_FILE).exists() or not (folder / PICKLED_FILE).exists():
            state, path = self._read_state(folder), folder / STATE_FILE
        else:  # format 1: Coder.load has checked that the caller trusts it; this is for direct callers
            if not self._trust_pickle:
                raise IcdcoderError(f"{folder / PICKLED_FILE}: an old TF-IDF model's pickle is read only when "
                                    f"trusted (--trust-pickle)")
            state, path = load_pickled(folder / PICKLED_FILE), folder / PICKLED_FILE
        with reading(path):
            self.word_vec, self.char_vec = state["word"], state["char"]
            self.codes, self.platt = list(state["codes"]), tuple(float(v) for v in state["platt"])
            if not all(isinstance(c, str) for c in self.codes) or len(self.platt) != 2:
                raise ValueError("codes must be strings and platt two numbers")
            n_features = sum(len(v.vocabulary_) for v in (self.word_vec, self.char_vec) if v is not None)
            if self.W.shape != (len(self.codes), n_features) or self.b.shape != (len(self.codes),):
                raise ValueError(f"{len(self.codes)} codes and {n_features} features do not fit weights of shape "
                                 f"{self.W.shape} and bias of shape {self.b.shape}")

    @staticmethod
    def _read_state(folder: Path) -> dict[str, Any]:
        path = folder / STATE_FILE
        with reading(path):
            state = json.loads(path.read_text(encoding="utf-8"))
            version = state.get("format") if isinstance(state, dict) else None
            if version != FORMAT:
                raise ValueError(f"unknown TF-IDF model format {version!r} (this version reads {FORMAT})")
        with reading(folder / VECTORS_FILE), np.load(folder / VECTORS_FILE, allow_pickle=False) as z:
            idf = {name: z[name] for name in z.files}
        with reading(path):
            vectorizers = state["vectorizers"]
            if "word" not in vectorizers or set(vectorizers) - {"word", "char"}:
                raise ValueError("vectorizers must be word and optionally char")
            made = {name: LightTfidfVectorizer({k: v for k, v in spec.items() if k != "vocabulary"},
                                               spec["vocabulary"], idf.get(name))
                    for name, spec in vectorizers.items()}
            return {"word": made["word"], "char": made.get("char"), "codes": state["codes"], "platt": state["platt"]}


def scoring_matrix(W: sp.csr_matrix) -> sp.csr_matrix | np.ndarray:
    """``W.T`` for scoring: dense when a third of the weights or more are non-zero (as an SVM's often
    are), i.e. when dense float32 takes at most 1.5 times the memory of the sparse form (4 bytes a
    cell against 8 a weight), because a sparse matrix times a dense one is several times faster than
    a product of two sparse ones, and the dense form lets prediction check support on few codes
    (7,270 codes with 57% non-zero weights: 510 notes/s dense, 230 sparse, on a busy 2-core machine)."""
    if 3 * W.nnz >= W.shape[0] * W.shape[1]:
        return np.ascontiguousarray(W.T.toarray(), dtype=np.float32)
    return W.T.tocsr()


def top_k(S: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` largest values, largest first, ties by column (a stable
    argsort's order). With many columns only the ``k`` are sorted: a full argsort of every row cost
    more than the scores themselves with thousands of codes."""
    if 4 * k >= S.shape[1]:
        return np.argsort(-S, axis=1, kind="stable")[:, :k]
    kth = np.partition(-S, k - 1, axis=1)[:, k - 1:k]  # each row's k-th largest, negated
    out = np.empty((S.shape[0], k), dtype=np.intp)
    for i in range(S.shape[0]):  # the k-th value's ties go to the lowest columns, as in a stable sort
        above, tied = np.flatnonzero(-S[i] < kth[i]), np.flatnonzero(-S[i] == kth[i])
        chosen = np.concatenate([above, tied[:k - len(above)]])
        out[i] = chosen[np.argsort(-S[i, chosen], kind="stable")]
    return out


@functools.lru_cache(maxsize=1 << 16)
def _term_pattern(term: str) -> re.Pattern:
    """An n-gram as a regex over lower-cased text: its words whole, any non-word characters between.
    Cached: ``re``'s own cache holds 512 patterns, far fewer than the terms that evidence names, and
    compiling again cost more than searching."""
    return re.compile(r"\b" + r"\W+".join(re.escape(t) for t in term.split()) + r"\b")


def prediction_threads() -> int:
    """Threads for scoring: the physical cores this process may use, or ``OMP_NUM_THREADS`` when set
    (as numpy's BLAS does; a Ray actor gets its ``num_cpus`` there)."""
    import os

    from icdcoder.coders.linear_ovr import n_threads

    env = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, int(env)) if env.isdigit() else n_threads(-1)


def lowered(text: str) -> tuple[str, list[int] | None]:
    """``text.lower()`` and, when lower-casing changed its length, the index in ``text`` of each
    lower-cased character (None: the same indices). Only a few characters lengthen ("İ" -> "i̇"); none
    shortens, so equal lengths mean every character kept its place."""
    lower = text.lower()
    if len(lower) == len(text):
        return lower, None
    origin: list[int] = []
    for i, ch in enumerate(text):
        origin.extend([i] * len(ch.lower()))
    return lower, origin
