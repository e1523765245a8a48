"""Reranker: candidates from several sources, one learned ranker over them.

Computer-assisted coding in practice is a terminology matcher plus learned ranking over candidates
from several sources; this coder is that. For each note the sources of
:mod:`icdcoder.coders.rerank_features` (ontology matcher, TF-IDF top k, nearest training notes,
ontology-name overlap) propose candidates, each (note, candidate) pair gets a row of features, and
a LightGBM model scores it. The score is the probability that the code is gold; the threshold is
tuned on val like every other coder's.

**Cross-fitting.** A source fitted on a note has seen its answer: TF-IDF and kNN would score that
note's codes near 1, and a ranker trained on such rows learns to trust them more than it should on
new notes (and never sees a code that the sources do not know, as unseen codes are on test). So
``fit`` splits the training notes into ``folds``, fits the sources on all folds but one and computes
features for the held-out fold; the ranker trains on these out-of-fold rows. The sources used at
prediction time are then fitted once more on all training notes.

**Threshold without val.** The ranker itself is also cross-validated over the same folds of notes.
When ``fit`` gets no val (training on every labelled note, train+dev), the threshold is tuned on
these out-of-fold scores, so it is never tuned on notes the ranker was trained on
(``threshold_source`` in :attr:`build_info` says which was used). The out-of-fold ranking of each
training note is kept (:attr:`out_of_fold`): the candidate lists that generative prompts take
(``prompt: {candidates: 20, candidates_from: RUN/model}``) for training notes.

**Evidence** is pooled: the matcher's mentions (present ones first), else the note words of the
covered ontology name, else TF-IDF's n-grams.

**Abstaining.** A candidate is kept only when the note itself backs it: a matcher mention, an
ontology name the note's words cover, a TF-IDF word n-gram that raises the code's score, or a nearest
training note that shares words with it and carries the code. A source can propose a code on its
prior alone (TF-IDF's top k by probability, the neighbours of a note that shares no word with any
training note); such a candidate is dropped, so a note the sources cannot read ("12345", emoji,
another language) gets no codes.

**Saved state** (data only, no pickle): ``rerank.json`` (features, code frequencies, build info),
``ranker.txt`` (LightGBM's text model), ``matcher/`` and ``tfidf/`` (their own formats),
``knn.npz`` (training notes' tf-idf rows and code matrix).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from icdcoder.coders.base import Coder, register
from icdcoder.coders.overlap import OverlapIndex
from icdcoder.coders.rerank_features import CATEGORICAL, FEATURES, Sources, candidate_features
from icdcoder.data.note import Note
from icdcoder.data.splits import kfold_of
from icdcoder.prediction import Evidence, Prediction
from icdcoder.text.normalize import tokenize

STATE_FILE = "rerank.json"
RANKER_FILE = "ranker.txt"
KNN_FILE = "knn.npz"
FORMAT = 1
OOF_K = 30  # out-of-fold ranking kept per training note (candidate lists for generative prompts)
EVIDENCE_K = 20  # candidates below the threshold get evidence only among the first EVIDENCE_K

DEFAULT_MATCHER = {"label_space": "ontology", "mine": True, "calibrate": True}
DEFAULT_TFIDF = {"word_ngrams": [1, 2], "classifier": "svm", "C": 1.0, "top_k": 100}
DEFAULT_LGBM = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50,
                "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
                "verbose": -1}


PARALLEL_MIN = 32  # notes per process before predict forks workers
_FORKED: Any = None  # (sources, params) that forked workers inherit


def _forked_features(notes: list[Note]) -> list:
    """A worker's share of :meth:`RerankCoder._features`; tokens are left behind (the parent
    re-tokenises the few notes whose evidence needs them: cheaper than sending them back)."""
    sources, params = _FORKED
    return [(codes, F, mentions, overlaps, None) for codes, F, mentions, overlaps, _ in
            candidate_features(sources, notes, params)]


@register("rerank")
class RerankCoder(Coder):
    """Parameters: ``matcher`` and ``tfidf`` (their coders' parameters), ``assertion`` (the matcher reads
    each mention's status; off, every mention counts as present), ``overlap`` (the ontology-name
    source), ``tfidf_k``, ``knn_k``, ``overlap_k`` and ``overlap_cover`` (candidates per source),
    ``excludes1`` and ``conflict_k`` (Excludes1 conflicts with the ``conflict_k`` best candidates),
    ``folds`` (cross-fitting), ``rounds`` and ``lgbm`` (LightGBM), ``top_k`` codes kept per note,
    ``n_jobs``, ``seed``."""

    cv_threshold_without_val = True  # fit(train, None) tunes on its own out-of-fold scores
    state_files = (STATE_FILE, RANKER_FILE, KNN_FILE)
    nested_coders = ("matcher", "tfidf")

    def __init__(self, matcher: dict[str, Any] | None = None, tfidf: dict[str, Any] | None = None,
                 assertion: bool = True, overlap: bool = True, tfidf_k: int = 30, knn_k: int = 10, overlap_k: int = 60,
                 overlap_cover: float = 0.6, excludes1: bool = True, conflict_k: int = 15, folds: int = 5,
                 rounds: int = 300, lgbm: dict[str, Any] | None = None, top_k: int = 100, n_jobs: int = 2,
                 seed: int = 13):
        if folds < 2:
            raise ValueError(f"folds must be at least 2 (cross-fitting), not {folds}")
        super().__init__(matcher={**DEFAULT_MATCHER, **(matcher or {})}, tfidf={**DEFAULT_TFIDF, **(tfidf or {})},
                         assertion=assertion, overlap=overlap, tfidf_k=tfidf_k, knn_k=knn_k, overlap_k=overlap_k,
                         overlap_cover=overlap_cover, excludes1=excludes1, conflict_k=conflict_k, folds=folds,
                         rounds=rounds, lgbm={**DEFAULT_LGBM, **(lgbm or {})}, top_k=top_k, n_jobs=n_jobs,
                         seed=seed)
        self.sources: Sources | None = None
        self.booster: Any = None
        self.features: list[str] = list(FEATURES)
        self.build_info: dict[str, Any] = {}
        self.train_rows: dict[str, Any] = {}  # out-of-fold rows of the last fit (for tests and analysis)
        self.out_of_fold: dict[str, list[tuple[str, float]]] = {}  # training note id -> its out-of-fold ranking

    # ------------------------------------------------------------------------------------- fit
    def _overlap(self) -> OverlapIndex | None:
        return OverlapIndex.for_ontology() if self.params["overlap"] else None

    def _fit_sources(self, notes: Sequence[Note], overlap: OverlapIndex | None) -> Sources:
        return Sources.fit(notes, self.params, overlap)

    def _rows(self, src: Sources, notes: Sequence[Note]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Feature rows of ``notes`` under ``src``: X, y (gold or not), the note index of each row, codes."""
        feats = self._backed(notes, candidate_features(src, notes, self.params), src)
        X = [f[1] for f in feats]
        y = []
        for n, (codes, *_) in zip(notes, feats):
            gold = set(n.codes)
            y.append(np.fromiter((c in gold for c in codes), dtype=np.float32, count=len(codes)))
        note_of = [np.full(len(f[0]), i) for i, f in enumerate(feats)]
        codes = [c for f in feats for c in f[0]]
        width = len(FEATURES)
        return (np.vstack(X) if X else np.zeros((0, width), np.float32), np.concatenate(y) if y else np.zeros(0),
                np.concatenate(note_of) if note_of else np.zeros(0, int), codes)

    def _train_booster(self, X: np.ndarray, y: np.ndarray) -> Any:
        import lightgbm as lgb

        p = self.params
        params = {**p["lgbm"], "seed": p["seed"], "num_threads": p["n_jobs"], "deterministic": True}
        data = lgb.Dataset(X, y, feature_name=list(FEATURES), categorical_feature=list(CATEGORICAL),
                           free_raw_data=True)
        return lgb.train(params, data, num_boost_round=p["rounds"])

    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "RerankCoder":
        from icdcoder.progress import track

        if len(train) < self.params["folds"]:
            raise ValueError(f"cannot cross-fit {self.params['folds']} folds on {len(train)} training notes")
        p = self.params
        t0 = time.perf_counter()
        self._remember_labels(train)
        overlap = self._overlap()
        folds = kfold_of(len(train), p["folds"], p["seed"])
        parts_X, parts_y, parts_note, parts_codes = [], [], [], []
        for k in track(range(p["folds"]), "rerank cross-fitting", total=p["folds"], unit="fold"):
            held = [i for i in range(len(train)) if folds[i] == k]
            src = self._fit_sources([train[i] for i in range(len(train)) if folds[i] != k], overlap)
            X, y, note_of, codes = self._rows(src, [train[i] for i in held])
            parts_X.append(X)
            parts_y.append(y)
            parts_note.append(np.asarray(held)[note_of] if len(note_of) else note_of)
            parts_codes.extend(codes)
        X, y = np.vstack(parts_X), np.concatenate(parts_y)
        note_of = np.concatenate(parts_note).astype(np.int64)
        self.train_rows = {"X": X, "y": y, "note": note_of, "codes": parts_codes}
        t_cross = time.perf_counter()
        gold_total = sum(len(set(n.codes)) for n in train)
        self.booster = self._train_booster(X, y)
        self.sources = self._fit_sources(train, overlap)
        t_final = time.perf_counter()
        self.build_info = {"format": FORMAT, "train_notes": len(train), "train_rows": int(len(y)),
                           "train_positives": int(y.sum()),
                           "candidate_recall_oof": round(float(y.sum()) / max(gold_total, 1), 4),
                           "seconds": {"cross_fit": round(t_cross - t0, 2), "final": round(t_final - t_cross, 2)}}
        oof = self._oof_scores(X, y, note_of, folds)
        per_note: list[dict[str, float]] = [{} for _ in train]
        for r in range(len(y)):
            per_note[note_of[r]][parts_codes[r]] = float(oof[r])
        self.out_of_fold = {n.id: sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:OOF_K]
                            for n, s in zip(train, per_note)}
        if val:
            self.tune_threshold(val)
            self.build_info["threshold_source"] = "val"
        else:
            from icdcoder.evaluation import tune_thresholds

            preds = [Prediction.from_scores(n.id, s, top_k=p["top_k"]) for n, s in zip(train, per_note)]
            self.threshold, _ = tune_thresholds(train, preds)
            self.build_info["threshold_source"] = f"{p['folds']}-fold out-of-fold ranker scores on the training notes"
        return self

    def _oof_scores(self, X: np.ndarray, y: np.ndarray, note_of: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """The ranker's own out-of-fold scores: rows of each fold of notes scored by a ranker trained on
        the other folds' rows (so no note is scored by a ranker that trained on it)."""
        scores = np.zeros(len(y))
        row_fold = folds[note_of]
        for k in range(self.params["folds"]):
            inside = row_fold != k
            if (~inside).any() and y[inside].any():
                scores[~inside] = self._train_booster(X[inside], y[inside]).predict(X[~inside])
        return scores

    # ------------------------------------------------------------------------------------- predict
    def predict(self, notes: Sequence[Note]) -> list[Prediction]:
        if self.sources is None or self.booster is None:
            raise RuntimeError("RerankCoder is not fitted")
        out: list[Prediction] = []
        for start in range(0, len(notes), 256):
            batch = notes[start:start + 256]
            feats = self._backed(batch, self._features(batch))
            sizes = [len(f[0]) for f in feats]
            X = np.vstack([f[1] for f in feats]) if sum(sizes) else np.zeros((0, len(FEATURES)), np.float32)
            scores = self.booster.predict(X) if len(X) else np.zeros(0)
            at = 0
            for note, (codes, _, mentions, overlaps, toks), size in zip(batch, feats, sizes):
                s = {c: float(v) for c, v in zip(codes, scores[at:at + size])}
                at += size
                kept = sorted(s, key=lambda c: -s[c])[: self.params["top_k"]]
                wanted = [c for i, c in enumerate(kept) if i < EVIDENCE_K or s[c] >= self.threshold]
                out.append(Prediction.from_scores(note.id, {c: s[c] for c in kept},
                                                  self._evidence(note, wanted, s, mentions, overlaps, toks)))
        return out

    def _backed(self, notes: Sequence[Note], feats: list, src: Sources | None = None) -> list:
        """``feats`` with only the candidates that the note backs under ``src`` (default: the fitted
        sources; see "Abstaining" above). The ranker trains on such rows only, as it scores only them."""
        src = src if src is not None else self.sources
        raised = src.tfidf._support(src.tfidf._features([n.text for n in notes]))
        knn = FEATURES.index("k_score")
        out = []
        for i, (codes, F, mentions, overlaps, toks) in enumerate(feats):
            keep = [r for r, c in enumerate(codes) if c in mentions or c in overlaps or F[r, knn] > 0
                    or (c in src.col_of and raised[i, src.col_of[c]])]
            out.append(([codes[r] for r in keep], F[keep], mentions, overlaps, toks))
        return out

    def _features(self, notes: Sequence[Note]) -> list:
        """:func:`candidate_features` of ``notes``; in ``n_jobs`` forked processes when there are many
        notes (the features are Python work, one core each; the ranker then scores them all at once)."""
        jobs = min(self.params["n_jobs"], len(notes) // PARALLEL_MIN)
        if jobs < 2 or "fork" not in mp.get_all_start_methods() or threading.active_count() > 1:
            return candidate_features(self.sources, notes, self.params)  # forking a threaded process can hang
        global _FORKED
        _FORKED = (self.sources, self.params)
        try:
            chunks = [list(notes[i::jobs]) for i in range(jobs)]
            with mp.get_context("fork").Pool(jobs) as pool:
                parts = pool.map(_forked_features, chunks)
        finally:
            _FORKED = None
        out: list = [None] * len(notes)
        for i, part in enumerate(parts):
            out[i::jobs] = part
        return out

    def _evidence(self, note: Note, codes: list[str], scores: dict[str, float], mentions, overlaps,
                  toks) -> dict[str, list[Evidence]]:
        """Evidence of ``codes``, pooled: the matcher's mentions (present ones first), else the note's
        words of the covered name, else (for suggested codes) TF-IDF's n-grams. ``toks`` and the
        note's tf-idf row are computed at most once, when needed."""
        out: dict[str, list[Evidence]] = {}
        x = None
        src = self.sources
        for code in codes:
            ms = mentions.get(code)
            o = overlaps.get(code)
            if ms:
                ordered = sorted(ms, key=lambda m: (m.status != "present", m.span))
                spans = list(dict.fromkeys(m.span for m in ordered))[:5]
                out[code] = [Evidence(start=a, end=z, text=note.text[a:z]) for a, z in spans]
            elif o is not None and src is not None and src.overlap is not None:
                if toks is None:  # a forked worker left the tokens behind
                    toks = tokenize(note.text)
                out[code] = src.overlap.evidence(note.text, toks, o)
            elif scores[code] >= self.threshold and src is not None and code in src.col_of:
                if x is None:
                    x = src.tfidf._features([note.text])
                out[code] = src.tfidf._evidence(note.text, x[0], src.col_of[code])
        return out

    # -------------------------------------------------------------------------------- persistence
    def _save_state(self, folder: Path) -> None:
        src = self.sources
        if src is None or self.booster is None:
            raise RuntimeError("RerankCoder is not fitted")
        src.matcher.write_into(folder / "matcher")  # folder is a staging folder already
        src.tfidf.write_into(folder / "tfidf")
        np.savez_compressed(folder / KNN_FILE, x_data=src.knn_X.data, x_indices=src.knn_X.indices,
                            x_indptr=src.knn_X.indptr, x_shape=np.asarray(src.knn_X.shape),
                            y_data=src.knn_Y.data, y_indices=src.knn_Y.indices, y_indptr=src.knn_Y.indptr,
                            y_shape=np.asarray(src.knn_Y.shape))
        (folder / RANKER_FILE).write_text(self.booster.model_to_string(), encoding="utf-8")
        state = {"format": FORMAT, "features": self.features, "freq": src.freq, "build": self.build_info,
                 "out_of_fold": self.out_of_fold}
        (folder / STATE_FILE).write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")

    def _load_state(self, folder: Path) -> None:
        import lightgbm as lgb

        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise ValueError(f"{folder / STATE_FILE}: unknown rerank format {state.get('format')!r}")
        if state["features"] != list(FEATURES):
            raise ValueError(f"{folder / STATE_FILE}: saved with other features than this version computes; "
                             "train the reranker again")
        self.build_info = state.get("build", {})
        self.out_of_fold = {k: [(c, float(v)) for c, v in r] for k, r in state.get("out_of_fold", {}).items()}
        matcher = Coder.load(folder / "matcher", trust_pickle=self._trust_pickle)
        tfidf = Coder.load(folder / "tfidf", trust_pickle=self._trust_pickle)
        with np.load(folder / KNN_FILE, allow_pickle=False) as z:
            X = sp.csr_matrix((z["x_data"], z["x_indices"], z["x_indptr"]), shape=tuple(z["x_shape"]))
            Y = sp.csr_matrix((z["y_data"], z["y_indices"], z["y_indptr"]), shape=tuple(z["y_shape"]))
        self.sources = Sources(matcher, tfidf, X, Y, {k: int(v) for k, v in state["freq"].items()},  # type: ignore[arg-type]
                               self._overlap())
        self.booster = lgb.Booster(model_str=(folder / RANKER_FILE).read_text(encoding="utf-8"))
