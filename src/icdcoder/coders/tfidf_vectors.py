"""A TF-IDF model's vectorisers as plain data, applied without importing scikit-learn.

A model folder must never run code when it is loaded, so it holds no pickle; and importing
scikit-learn costs one to two seconds (scipy.stats, pandas come with it), more than all the rest of
``icdcoder code`` on one note. A fitted ``TfidfVectorizer`` is plain data: settings, the vocabulary
and the idf weights. :meth:`LightTfidfVectorizer.from_fitted` takes that data from one, the coder
saves it as JSON (settings, terms in column order) and an npz file (idf), and
:class:`LightTfidfVectorizer` rebuilt from it repeats scikit-learn's ``transform`` in the same order
and precision (analyse, count, sublinear tf, idf, l2 norm summed in float64 row by row), giving the
same matrix bit for bit. It reproduces the settings the coder uses (word and char_wb analysers,
n-gram range, lowercase, token pattern, sublinear tf, idf, l2 or no norm, float32 or float64); a
vectoriser with any other (a custom tokenizer, stop words, accent stripping, binary counts ...) is
refused, when saved as when loaded.

Models saved before this format pickled the vectorisers (``vectorizers.pkl``). :func:`load_pickled`
still reads them when the caller trusts the file (``--trust-pickle``; ``Coder.load`` refuses the
folder otherwise), and even then through an unpickler that resolves only the globals such a pickle
holds (scikit-learn's two classes, as inert state, and numpy's array, dtype and scalar
reconstructors) and refuses any other, so a crafted file cannot run code; it never falls back to ``pickle.load``.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from icdcoder.errors import IcdcoderError

_WHITE_SPACES = re.compile(r"\s\s+")
_DTYPES = ("float32", "float64")
_SETTINGS = ("analyzer", "ngram_range", "lowercase", "token_pattern", "sublinear_tf", "norm", "use_idf", "smooth_idf",
             "dtype", "encoding", "decode_error")
# settings of scikit-learn's vectoriser that the light one does not reproduce, with their defaults
_FIXED = {"input": "content", "preprocessor": None, "tokenizer": None, "strip_accents": None, "stop_words": None,
          "binary": False}


class LightTfidfVectorizer:
    """``transform``, ``vocabulary_``, ``idf_`` and ``get_feature_names_out`` of a fitted TfidfVectorizer,
    built from its settings (:meth:`settings`, JSON), its terms in column order and its idf weights
    (None when ``use_idf`` is false). Raises ValueError for settings it does not reproduce."""

    def __init__(self, settings: dict[str, Any], terms: Sequence[str], idf: np.ndarray | None):
        s = settings
        missing = [k for k in _SETTINGS if k not in s] if isinstance(s, dict) else list(_SETTINGS)
        if missing:
            raise ValueError(f"the vectoriser's settings lack {', '.join(missing)}")
        self.analyzer, self.lowercase, self.token_pattern = s["analyzer"], s["lowercase"], s["token_pattern"]
        self.sublinear_tf, self.norm, self.use_idf, self.smooth_idf = (s["sublinear_tf"], s["norm"], s["use_idf"],
                                                                       s["smooth_idf"])
        self.encoding, self.decode_error = s["encoding"], s["decode_error"]
        if self.analyzer not in ("word", "char_wb"):
            raise ValueError(f"analyzer {self.analyzer!r} is not supported (word or char_wb)")
        ngrams = s["ngram_range"]
        if not (isinstance(ngrams, (list, tuple)) and len(ngrams) == 2
                and all(isinstance(n, (int, np.integer)) for n in ngrams) and 1 <= ngrams[0] <= ngrams[1]):
            raise ValueError(f"bad ngram_range {ngrams!r}")
        self.ngram_range = (int(ngrams[0]), int(ngrams[1]))
        if not all(isinstance(v, bool) for v in (self.lowercase, self.sublinear_tf, self.use_idf, self.smooth_idf)):
            raise ValueError("lowercase, sublinear_tf, use_idf and smooth_idf must be true or false")
        if self.norm not in ("l2", None):
            raise ValueError(f"norm {self.norm!r} is not supported (l2 or none)")
        if s["dtype"] not in _DTYPES:
            raise ValueError(f"dtype {s['dtype']!r} is not supported ({' or '.join(_DTYPES)})")
        self.dtype = np.dtype(s["dtype"])
        if not isinstance(self.encoding, str) or not isinstance(self.decode_error, str):
            raise ValueError("encoding and decode_error must be strings")
        self._token_re = re.compile(self.token_pattern) if isinstance(self.token_pattern, str) else None
        if self._token_re is None or self._token_re.groups > 1:
            raise ValueError(f"token_pattern must be a regular expression with at most one group, not "
                             f"{self.token_pattern!r}")
        if not isinstance(terms, (list, tuple)) or not all(isinstance(t, str) for t in terms):
            raise ValueError("the vocabulary must be a list of strings")
        self._terms = list(terms)
        self.vocabulary_ = {t: j for j, t in enumerate(self._terms)}
        if len(self.vocabulary_) != len(self._terms):
            raise ValueError("the vocabulary repeats a term")
        if self.use_idf:
            if not (isinstance(idf, np.ndarray) and idf.dtype.kind == "f" and idf.shape == (len(self._terms),)):
                raise ValueError(f"the idf weights must be {len(self._terms)} floats")
        elif idf is not None:
            raise ValueError("idf weights given with use_idf false")
        self.idf_ = idf

    @classmethod
    def from_fitted(cls, vec: Any) -> "LightTfidfVectorizer":
        """The light copy of a fitted scikit-learn ``TfidfVectorizer`` (or of the inert state an old
        pickle holds of one; a light vectoriser is returned as is)."""
        if isinstance(vec, cls):
            return vec
        d = vars(vec)
        tfidf = vars(d["_tfidf"])
        for name, default in _FIXED.items():
            if d[name] != default:
                raise ValueError(f"{name}={d[name]!r} is not supported (only {default!r})")
        vocabulary = d["vocabulary_"]
        if not isinstance(vocabulary, dict):
            raise ValueError("vocabulary_ is not a dict")
        terms = sorted(vocabulary, key=vocabulary.__getitem__)
        if [vocabulary[t] for t in terms] != list(range(len(terms))):
            raise ValueError("the vocabulary's columns are not 0 to n-1")
        settings = {k: tfidf[k] if k in ("sublinear_tf", "norm", "use_idf", "smooth_idf") else d[k]
                    for k in _SETTINGS}
        settings["dtype"] = np.dtype(d["dtype"]).name
        idf = tfidf.get("idf_") if tfidf["use_idf"] else None
        return cls(settings, terms, None if idf is None else np.asarray(idf))

    def settings(self) -> dict[str, Any]:
        """What the constructor takes besides terms and idf, as JSON values."""
        return {**{k: getattr(self, k) for k in _SETTINGS}, "ngram_range": list(self.ngram_range),
                "dtype": self.dtype.name}

    @property
    def terms(self) -> list[str]:
        return self._terms

    # -------------------------------------------------------------------------------- analysis
    def _analyze(self, doc: str) -> list[str]:
        if isinstance(doc, bytes):
            doc = doc.decode(self.encoding, self.decode_error)
        if self.lowercase:
            doc = doc.lower()
        min_n, max_n = self.ngram_range
        if self.analyzer == "char_wb":
            return _char_wb_ngrams(doc, min_n, max_n)
        tokens = self._token_re.findall(doc)
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
        data = np.asarray(values, dtype=self.dtype)
        if self.sublinear_tf:
            np.log(data, data)
            data += 1.0
        cols = np.asarray(indices, dtype=np.int32)
        if self.idf_ is not None:
            data *= self.idf_[cols]
        if self.norm == "l2":
            _normalize_l2_rows(data, indptr)
        return sp.csr_matrix((data, cols, np.asarray(indptr, dtype=np.int32)), shape=(len(indptr) - 1, len(vocab)),
                             dtype=data.dtype)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self._terms, dtype=object)


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


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn any failure to read or make sense of a model file into an IcdcoderError naming it."""
    try:
        yield
    except IcdcoderError:
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, zipfile.BadZipFile,
            pickle.UnpicklingError) as e:
        raise IcdcoderError(f"{path}: cannot load this TF-IDF model file: {e}") from e


# ------------------------------------------------------------------------------ old pickled models

class _Pickled:
    """Inert stand-in for a scikit-learn class in an old pickle: keeps the state it is given, runs nothing."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _PickledVectorizer(_Pickled):
    pass


class _PickledTransformer(_Pickled):
    pass


def _allowed() -> dict[tuple[str, str], Any]:
    """Every global a pickled fitted TfidfVectorizer holds (pickle protocols 4 and 5, numpy 1 and 2)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {
        ("sklearn.feature_extraction.text", "TfidfVectorizer"): _PickledVectorizer,
        ("sklearn.feature_extraction.text", "TfidfTransformer"): _PickledTransformer,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,  # arrays (idf) and their dtypes
        ("numpy", "float32"): np.float32, ("numpy", "float64"): np.float64}  # the vectoriser's dtype setting
    for core in ("numpy._core", "numpy.core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct  # arrays, protocol 4
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar  # numpy ints (vocabulary columns)
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # arrays, protocol 5
    return allowed


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh)
        self.path, self.allowed = path, _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise IcdcoderError(f"{self.path}: refused to load {module}.{name}: a TF-IDF model's vectorisers "
                                f"need nothing but scikit-learn's two classes and numpy arrays, and this "
                                f"global could run code (the file may be crafted). Re-train the model with "
                                f"this version, which saves no pickle.") from None


def load_pickled(path: Path) -> dict[str, Any]:
    """The state an old TF-IDF model pickled (``word``, ``char``, ``codes``, ``platt``), its vectorisers
    made light; raises IcdcoderError, naming the file, for any other content."""
    with reading(path):
        with open(path, "rb") as fh:
            state = _Unpickler(fh, path).load()
        if not isinstance(state, dict):
            raise ValueError(f"a {type(state).__name__}, not the saved state")
        vecs = {}
        for name in ("word", "char"):
            vec = state[name]
            if not (isinstance(vec, _PickledVectorizer) or (vec is None and name == "char")):
                raise ValueError(f"{name} is a {type(vec).__name__}, not a TfidfVectorizer")
            try:
                vecs[name] = None if vec is None else LightTfidfVectorizer.from_fitted(vec)
            except (ValueError, KeyError, TypeError) as e:
                raise IcdcoderError(f"{path}: the {name} vectoriser cannot be loaded without unpickling "
                                    f"scikit-learn ({type(e).__name__}: {e}); re-train the model with this "
                                    f"version") from e
        return {**vecs, "codes": state["codes"], "platt": state["platt"]}
