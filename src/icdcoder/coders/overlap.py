"""Word overlap between a note and every code's ontology names: the candidate source for codes that
no training note has and whose names a note never writes verbatim.

The matcher needs a whole term in the text. Notes often write a code's words apart or in another
order ("a transverse fracture of the left humeral shaft ... open", for S42.322B "Displaced transverse
fracture of shaft of humerus, left arm, initial encounter for open fracture"), and machine-translated
notes more so. :class:`OverlapIndex` scores each name (a description or an inclusion term) by the
idf-weighted share of its content words that the note contains (``cover``), and the best share that
one sentence (with its neighbour) contains (``sentence_cover``), so the reranker can weigh "all
words, in one sentence" against "scattered over the note".

Names are folded with :func:`icdcoder.text.normalize.term_tokens`, the matcher's normalisation,
generic words ("unspecified", "other", "encounter", "of" ...) are dropped, and each word is reduced
to a stem (:func:`stem`: Snowball's English stemmer, then a clinical suffix and a 7-letter cut), so
"pneumonia associated with mechanical ventilation" meets "ventilator associated pneumonia" and a
"conjunctival inflammation" meets "conjunctivitis"; ``exact`` keeps the share of the name's words
the note writes unstemmed, for the reranker to tell the two apart. Candidates come two ways:
names that share a rare word (few names have it) with the note and clear ``min_cover``, and the
codes of categories that another source already proposes (the sibling a laterality or a type
decides; :meth:`OverlapIndex.expand`). The index is rebuilt from the ontology index on first use
(a few seconds) and kept in the cache folder as ``.npz``/``.json``: data, never code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp

from icdcoder.text.normalize import Token, term_tokens

if TYPE_CHECKING:
    from icdcoder.prediction import Evidence

FORMAT = 2
#: Clinical endings cut after Snowball's (when 4 letters stay): "gastritis"/"gastric", "ischemia"/"ischemic".
_ENDINGS = ("itis", "iti", "osis", "osi", "ia", "ic", "al", "ous", "a", "i")
#: Words that say nothing about which condition a name is (qualifiers of the classification itself).
GENERIC = frozenset("""
a an and as at by for from in into is of on or the to with without not elsewhere classified unspecified other
specified certain type site sites encounter initial subsequent sequela part parts than due
""".split())


@lru_cache(maxsize=1 << 17)
def stem(word: str) -> str:
    """The overlap index's form of a folded word (see the module docstring)."""
    global _stemmer
    if _stemmer is None:
        import snowballstemmer

        _stemmer = snowballstemmer.stemmer("english")
    s = _stemmer.stemWord(word) if word.isalpha() else word
    for end in _ENDINGS:
        if s.endswith(end) and len(s) - len(end) >= 4:
            s = s[: -len(end)]
            break
    return s[:7]


_stemmer = None


@dataclass(frozen=True)
class Overlap:
    """How much of a code's best-covered name a note contains."""

    cover: float            # idf-weighted share of the name's content words found anywhere in the note
    sentence_cover: float   # the same within one sentence and the next
    n_words: int            # content words of that name
    name: int               # row of that name in the index
    exact: float            # share of the name's words that the note writes as they are (unstemmed)


class OverlapIndex:
    """Content words of every name of every code (see the module docstring)."""

    def __init__(self, codes: list[str], row_code: np.ndarray, words: list[str], rows: sp.csr_matrix,
                 n_words: np.ndarray, exact: list[str]) -> None:
        self.codes = codes
        self.exact = exact                # name row -> its folded content words, space-separated
        self.row_code = row_code          # name row -> code index
        self.words = words
        self.word_id = {w: i for i, w in enumerate(words)}
        self.rows = rows.tocsr()          # names x words, idf weights summing to 1 per row
        self.binary = self.rows.copy()    # the same pattern with 1s: does a name hold a given word
        self.binary.data[:] = 1.0
        self.n_words = n_words
        self.df = np.bincount(self.rows.indices, minlength=self.rows.shape[1])  # names per word
        self.code_id = {c: i for i, c in enumerate(codes)}
        cat_rows: dict[str, list[int]] = {}
        for r, ci in enumerate(row_code):
            cat_rows.setdefault(codes[ci][:3], []).append(r)
        self.category_rows = {k: np.asarray(v, dtype=np.int64) for k, v in cat_rows.items()}

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, names: dict[str, list[str]]) -> "OverlapIndex":
        """From ``code -> [description, inclusion terms ...]``."""
        codes = sorted(names)
        word_id: dict[str, int] = {}
        row_words: list[list[int]] = []
        row_code: list[int] = []
        exact: list[str] = []
        for ci, code in enumerate(codes):
            seen_rows: set[tuple[int, ...]] = set()
            for name in names[code]:
                folded = sorted({t for t in term_tokens(name) if t not in GENERIC and not t.isdigit()})
                ws = tuple(sorted({word_id.setdefault(stem(t), len(word_id)) for t in folded}))
                if ws and ws not in seen_rows:
                    seen_rows.add(ws)
                    row_words.append(list(ws))
                    row_code.append(ci)
                    exact.append(" ".join(folded))
        n_rows, n_vocab = len(row_words), len(word_id)
        df = np.zeros(n_vocab, dtype=np.int64)
        for ws in row_words:
            df[ws] += 1
        idf = np.log((n_rows + 1) / (df + 1)) + 1.0
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(ws) for ws in row_words])
        indices = np.fromiter((w for ws in row_words for w in ws), dtype=np.int32, count=int(indptr[-1]))
        data = idf[indices]
        sums = np.add.reduceat(data, indptr[:-1]) if n_rows else np.zeros(0)
        data = (data / np.repeat(sums, np.diff(indptr))).astype(np.float32)
        rows = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_vocab))
        words = [""] * n_vocab
        for w, i in word_id.items():
            words[i] = w
        return cls(codes, np.asarray(row_code, dtype=np.int32), words, rows, np.diff(indptr).astype(np.int32), exact)

    @classmethod
    def for_ontology(cls) -> "OverlapIndex":
        """Every ICD-10-CM code's description and inclusion terms, from the cache when it is there."""
        from icdcoder.ontology import get_ontology

        onto = get_ontology()
        path = _cache_path(onto.index.meta.get("key", ""))
        if path is not None and path.with_suffix(".npz").exists():
            try:
                return cls.load(path)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt
        names = {r.code: [r.description, *r.inclusion_terms] for r in onto.records("icd10cm") if r.description}
        index = cls.build(names)
        if path is not None:
            index.save(path)
        return index

    # -------------------------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """``path.npz`` (arrays) and ``path.json`` (codes, words), each written atomically."""
        from icdcoder.io import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path.with_suffix(".npz"), "wb", encoding=None) as fh:
            np.savez(fh, row_code=self.row_code, indptr=self.rows.indptr, indices=self.rows.indices,
                     data=self.rows.data, n_words=self.n_words, shape=np.asarray(self.rows.shape))
        with atomic_write(path.with_suffix(".json"), "w") as fh:
            json.dump({"format": FORMAT, "codes": self.codes, "words": self.words, "exact": self.exact}, fh)

    @classmethod
    def load(cls, path: Path) -> "OverlapIndex":
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: overlap index format {meta.get('format')!r}")
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            rows = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            return cls(meta["codes"], z["row_code"], meta["words"], rows, z["n_words"], meta["exact"])

    # ------------------------------------------------------------------------------------ queries
    def note_candidates(self, toks: Sequence[Token], sentences: Sequence[tuple[int, int]], *, min_cover: float = 0.75,
                        max_df: int = 400, expand: Sequence[str] = (), min_expand_cover: float = 0.5,
                        per_category: int = 3, limit: int = 40) -> dict[str, Overlap]:
        """Codes whose names the note covers (see the module docstring): rare-word hits with
        ``cover >= min_cover``, plus the best ``per_category`` codes of each category in ``expand``
        with ``cover >= min_expand_cover``; the ``limit`` best by sentence cover then cover."""
        ids = [self.word_id.get(stem(t.norm)) for t in toks]  # each token's word in the index, or None
        present = np.unique(np.fromiter((i for i in ids if i is not None), dtype=np.int64))
        if len(present) == 0:
            return {}
        b = np.zeros(self.rows.shape[1], dtype=np.float32)
        b[present] = 1.0
        cover = self.rows @ b  # every name's cover at once: one sparse product beats picking rows out
        b[present[self.df[present] > max_df]] = 0.0
        has_rare = self.binary @ b > 0  # names holding a word few names have
        keep = np.flatnonzero(has_rare & (cover >= min_cover))
        picked: dict[int, float] = dict(zip(keep.tolist(), cover[keep].tolist()))
        for cat in sorted(set(expand)):  # the best-covered codes of each category another source proposes
            crow = self.category_rows.get(cat)
            if crow is None:
                continue
            seg = cover[crow]
            n = 0
            seen_codes: set[int] = set()
            for o in np.argsort(-seg, kind="stable"):
                if seg[o] < min_expand_cover or n >= per_category:
                    break
                ci = int(self.row_code[crow[o]])
                if ci not in seen_codes:
                    seen_codes.add(ci)
                    picked.setdefault(int(crow[o]), float(seg[o]))
                    n += 1
        if not picked:
            return {}
        prow = np.fromiter(picked, dtype=np.int64, count=len(picked))
        sent = self._sentence_covers(prow, toks, ids, sentences)
        best: dict[str, Overlap] = {}
        folded = {t.norm for t in toks}
        for r, s in zip(prow.tolist(), sent.tolist()):
            code = self.codes[int(self.row_code[r])]
            names = self.exact[r].split(" ")
            o = Overlap(picked[r], s, int(self.n_words[r]), r, sum(w in folded for w in names) / len(names))
            old = best.get(code)
            if old is None or (o.sentence_cover, o.cover) > (old.sentence_cover, old.cover):
                best[code] = o
        ranked = sorted(best.items(), key=lambda kv: (-kv[1].sentence_cover, -kv[1].cover, kv[0]))[:limit]
        return dict(ranked)

    def evidence(self, text: str, toks: Sequence[Token], overlap: Overlap, limit: int = 5) -> list["Evidence"]:
        """The note's words (``toks``, tokenised ``text``) of the name behind ``overlap``: the first
        place each of them occurs."""
        from icdcoder.prediction import Evidence

        r = overlap.name
        want = {self.words[w] for w in self.rows.indices[self.rows.indptr[r]:self.rows.indptr[r + 1]]}
        spans: dict[str, tuple[int, int]] = {}
        for t in toks:
            if stem(t.norm) in want and t.norm not in spans:
                spans[t.norm] = (t.start, t.end)
        return [Evidence(start=a, end=z, text=text[a:z]) for a, z in sorted(spans.values())[:limit]]

    def _sentence_covers(self, rows: np.ndarray, toks: Sequence[Token], ids: Sequence[int | None],
                         sentences: Sequence[tuple[int, int]]) -> np.ndarray:
        """Best cover of each name row by one sentence together with the next (``ids``: each token's
        word in the index)."""
        if not sentences:
            b = np.zeros(self.rows.shape[1], dtype=np.float32)
            b[[i for i in ids if i is not None]] = 1.0
            return np.asarray(self.rows[rows] @ b).ravel()
        starts = np.asarray([s for s, _ in sentences])
        sent_of = np.maximum(np.searchsorted(starts, [t.start for t in toks], side="right") - 1, 0)
        n_sent = len(sentences)
        r, c = [], []
        for w, s in zip(ids, sent_of.tolist()):
            if w is not None:
                r.append(s)
                c.append(w)
                if s > 0:
                    r.append(s - 1)  # window: sentence s-1 together with s
                    c.append(w)
        if not r:
            return np.zeros(len(rows), dtype=np.float32)
        S = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_sent, self.rows.shape[1]))
        S.data[:] = 1.0  # duplicates summed by the constructor: presence only
        M = (S @ self.rows[rows].T).toarray()
        return M.max(axis=0) if n_sent else np.zeros(len(rows), dtype=np.float32)


def _cache_path(ontology_key: str) -> Path | None:
    from icdcoder.cache import cache_dir

    h = hashlib.sha256()
    here = Path(__file__).resolve()
    try:
        h.update(here.read_bytes())
        h.update((here.parents[1] / "text" / "normalize.py").read_bytes())
    except OSError:
        return None
    h.update(f"{FORMAT}:{ontology_key}".encode())
    return cache_dir("overlap") / f"names-{h.hexdigest()[:20]}"

