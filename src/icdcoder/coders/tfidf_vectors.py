"""A saved TF-IDF model's vectorisers, read and applied without importing scikit-learn.

Importing scikit-learn costs one to two seconds (scipy.stats, pandas come with it), more than all
the rest of ``icdcoder code`` on one note. A fitted ``TfidfVectorizer`` is plain data (vocabulary,
idf weights, settings), so :func:`load_vectorizers` unpickles it into :class:`LightTfidfVectorizer`,
whose :meth:`~LightTfidfVectorizer.transform` repeats scikit-learn's steps in the same order and
precision (analyse, count, sublinear tf, idf, l2 norm summed in float64 row by row), giving the same
matrix. Settings it does not reproduce (a custom tokenizer, stop words, accent stripping, binary
counts ...) or any other class in the pickle make it load with scikit-learn instead. Pickling a light
vectoriser writes the scikit-learn class again, so a model saved after loading is unchanged.
"""

from __future__ import annotations

import copyreg
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

_SKLEARN_TEXT = "sklearn.feature_extraction.text"
_WHITE_SPACES = re.compile(r"\s\s+")


class _NeedsSklearn(Exception):
    pass


class _Light:
    """State holder standing in for a scikit-learn class; pickles back as that class."""

    _sklearn_name = ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __reduce_ex__(self, protocol: int):
        import importlib

        cls = getattr(importlib.import_module(_SKLEARN_TEXT), self._sklearn_name)
        return copyreg._reconstructor, (cls, object, None), {k: v for k, v in self.__dict__.items() if not k.startswith("_light_")}


class LightTfidfTransformer(_Light):
    _sklearn_name = "TfidfTransformer"


class LightTfidfVectorizer(_Light):
    """``transform``, ``vocabulary_`` and ``get_feature_names_out`` of a fitted TfidfVectorizer."""

    _sklearn_name = "TfidfVectorizer"

    def supported(self) -> bool:
        d = self.__dict__
        tfidf = d.get("_tfidf")
        return (isinstance(tfidf, LightTfidfTransformer) and isinstance(d.get("vocabulary_"), dict)
                and all(k in d for k in ("encoding", "decode_error", "lowercase", "ngram_range"))
                and all(k in tfidf.__dict__ for k in ("sublinear_tf", "norm"))
                and d.get("input") == "content" and d.get("analyzer") in ("word", "char_wb")
                and d.get("preprocessor") is None and d.get("tokenizer") is None
                and d.get("strip_accents") is None and d.get("stop_words") is None and not d.get("binary")
                and isinstance(d.get("token_pattern"), str) and re.compile(d["token_pattern"]).groups <= 1
                and tfidf.__dict__.get("norm") in ("l2", None))

    # -------------------------------------------------------------------------------- analysis
    def _analyze(self, doc: str) -> list[str]:
        if isinstance(doc, bytes):
            doc = doc.decode(self.encoding, self.decode_error)
        if self.lowercase:
            doc = doc.lower()
        min_n, max_n = self.ngram_range
        if self.analyzer == "char_wb":
            return _char_wb_ngrams(doc, min_n, max_n)
        tokens = self._token_re().findall(doc)
        if max_n == 1:
            return tokens
        original = tokens
        if min_n == 1:
            tokens, min_n = list(original), min_n + 1
        else:
            tokens = []
        for n in range(min_n, min(max_n + 1, len(original) + 1)):
            for i in range(len(original) - n + 1):
                tokens.append(" ".join(original[i:i + n]))
        return tokens

    def _token_re(self) -> re.Pattern:
        pattern = self.__dict__.get("_light_token_re")
        if pattern is None:
            pattern = self.__dict__["_light_token_re"] = re.compile(self.token_pattern)
        return pattern

    # ------------------------------------------------------------------------------- transform
    def transform(self, docs) -> Any:
        import scipy.sparse as sp

        vocab = self.vocabulary_
        indptr, indices, values = [0], [], []
        for doc in docs:
            counter: dict[int, int] = {}
            for feature in self._analyze(doc):
                j = vocab.get(feature)
                if j is not None:
                    counter[j] = counter.get(j, 0) + 1
            for j in sorted(counter):  # scikit-learn sorts each row's indices before weighting
                indices.append(j)
                values.append(counter[j])
            indptr.append(len(indices))
        dtype = self.__dict__.get("dtype", np.float64)
        data = np.asarray(values, dtype=dtype)
        tfidf = self._tfidf
        if tfidf.sublinear_tf:
            np.log(data, data)
            data += 1.0
        idf = tfidf.__dict__.get("idf_")
        cols = np.asarray(indices, dtype=np.int32)
        if idf is not None:
            data *= idf[cols]
        if tfidf.norm == "l2":
            _normalize_l2_rows(data, indptr)
        return sp.csr_matrix((data, cols, np.asarray(indptr, dtype=np.int32)), shape=(len(indptr) - 1, len(vocab)),
                             dtype=data.dtype)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = [None] * len(self.vocabulary_)
        for term, j in self.vocabulary_.items():
            names[j] = term
        return np.asarray(names, dtype=object)


def _char_wb_ngrams(text: str, min_n: int, max_n: int) -> list[str]:
    text = _WHITE_SPACES.sub(" ", text)
    ngrams = []
    for w in text.split():
        w = " " + w + " "
        w_len = len(w)
        for n in range(min_n, max_n + 1):
            offset = 0
            ngrams.append(w[offset:offset + n])
            while offset + n < w_len:
                offset += 1
                ngrams.append(w[offset:offset + n])
            if offset == 0:  # a word shorter than n counts once
                break
    return ngrams


def _normalize_l2_rows(data: np.ndarray, indptr: list[int]) -> None:
    """In place, as scikit-learn's ``inplace_csr_row_normalize_l2``: squares in the data's precision,
    summed one after the other in float64, each value divided in float64."""
    for a, b in zip(indptr, indptr[1:]):
        if a == b:
            continue
        row = data[a:b]
        total = float(np.cumsum((row * row).astype(np.float64))[-1])
        if total == 0.0:
            continue
        row[:] = (row.astype(np.float64) / np.sqrt(total)).astype(data.dtype)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == _SKLEARN_TEXT and name == "TfidfVectorizer":
            return LightTfidfVectorizer
        if module == _SKLEARN_TEXT and name == "TfidfTransformer":
            return LightTfidfTransformer
        if module.split(".")[0] == "sklearn":
            raise _NeedsSklearn(f"{module}.{name}")
        return super().find_class(module, name)


def load_vectorizers(fh: BinaryIO) -> Any:
    """``pickle.load`` of a TF-IDF coder's state, with light vectorisers where they reproduce
    scikit-learn's exactly (scikit-learn itself otherwise)."""
    start = fh.tell()
    try:
        state = _Unpickler(fh).load()
    except _NeedsSklearn:
        state = None
    if state is not None and all(v is None or (isinstance(v, LightTfidfVectorizer) and v.supported())
                                 for v in _vectorizers(state)):
        return state
    fh.seek(start)
    return pickle.load(fh)


def _vectorizers(state: Any) -> list[Any]:
    if isinstance(state, dict):
        return [v for k, v in state.items() if k in ("word", "char")]
    return [state]
