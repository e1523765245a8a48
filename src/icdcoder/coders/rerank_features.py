"""Candidates and their features for the reranker: what each source says about each (note, code) pair.

:class:`Sources` bundles the candidate sources fitted on one set of training notes:

* ``matcher`` - the ontology matcher (:mod:`icdcoder.coders.matcher`), asked for every mention with
  its assertion status (negated and family mentions included: the ranker learns what they are worth);
* ``tfidf`` - TF-IDF one-vs-rest, its ``tfidf_k`` most probable codes;
* ``knn`` - the codes of the ``knn_k`` training notes nearest in the same TF-IDF space, each weighed
  by the neighbours' cosine similarity;
* ``overlap`` - codes whose ontology names the note covers word by word, and the siblings of the
  categories the other sources propose (:mod:`icdcoder.coders.overlap`).

:func:`candidate_features` turns them into one row of :data:`FEATURES` per candidate. A source that
does not propose a code leaves its features missing (NaN; LightGBM learns a branch for it). The
features never read a note's gold codes, so the same function serves training (on notes the sources
were not fitted on: cross-fitting in :mod:`icdcoder.coders.rerank`) and prediction.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from icdcoder.coders.matcher import KINDS, MatcherCoder, Mention
from icdcoder.coders.overlap import Overlap, OverlapIndex
from icdcoder.coders.tfidf import TfidfCoder
from icdcoder.data.note import Note
from icdcoder.text.normalize import Token, tokenize
from icdcoder.text.sections import SECTION_KINDS as _SECTION_TITLES
from icdcoder.text.sections import find_sections, section_at, split_sentences

STATUSES = ("present", "negated", "possible", "family", "historical")
#: Section kinds a first mention can fall in (:mod:`icdcoder.text.sections`; 0: no header above it).
SECTION_KINDS = ("none", "other", *dict.fromkeys(_SECTION_TITLES.values()))

FEATURES: tuple[str, ...] = (
    # matcher
    "m_score", "m_mentions", "m_best_weight", "m_direct", "m_first_pos", "m_section", "m_best_kind",
    *(f"m_{s}" for s in STATUSES), "m_only_asserted",
    # tf-idf
    "t_prob", "t_rank",
    # nearest training notes
    "k_score", "k_count", "k_rank",
    # ontology-name overlap
    "o_cover", "o_sentence_cover", "o_words", "o_exact",
    # the code
    "freq", "log_freq", "seen", "chapter", "depth",
    # hierarchy among the note's candidates
    "has_ancestor", "has_descendant", "n_siblings", "sibling_best", "cat_rank", "excludes1",
    # agreement and the note
    "n_sources", "base", "base_rank", "note_candidates", "note_tokens",
)
CATEGORICAL = ("m_section", "m_best_kind", "chapter")
_F = {f: i for i, f in enumerate(FEATURES)}


@dataclass
class Sources:
    """The candidate sources fitted on one set of notes (see the module docstring)."""

    matcher: MatcherCoder
    tfidf: TfidfCoder
    knn_X: sp.csr_matrix                    # training notes' tf-idf rows (l2-normalised)
    knn_Y: sp.csr_matrix                    # training notes x tfidf.codes, 0/1
    freq: dict[str, int]                    # code -> training notes that have it
    overlap: OverlapIndex | None = None
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)  # Excludes1 cache
    col_of: dict[str, int] = field(default_factory=dict)                # code -> tfidf column

    def __post_init__(self) -> None:
        self.col_of = {c: j for j, c in enumerate(self.tfidf.codes)}

    @classmethod
    def fit(cls, notes: Sequence[Note], params: dict[str, Any], overlap: OverlapIndex | None) -> "Sources":
        matcher = MatcherCoder(**{**params["matcher"], "assertion": params["assertion"]}).fit(notes)
        tfidf = TfidfCoder(**params["tfidf"]).fit(notes)
        X = tfidf._features([n.text for n in notes])
        index = {c: j for j, c in enumerate(tfidf.codes)}
        rows = [(i, index[c]) for i, n in enumerate(notes) for c in n.codes if c in index]
        Y = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), ([r for r, _ in rows], [c for _, c in rows])),
                          shape=(len(notes), len(tfidf.codes)))
        freq = dict(Counter(c for n in notes for c in n.codes))
        return cls(matcher, tfidf, X.tocsr(), Y, freq, overlap)


def _chapter_id(matcher: MatcherCoder, code: str) -> int:
    ch = matcher.chapter_of.get(code[:3])
    if ch is not None and ch.isdigit():
        return int(ch)
    return 100 + (ord(code[0]) - ord("A")) if code[:1].isalpha() else 0


def _depth(code: str) -> int:
    return len(code.replace(".", ""))


def _excluded_of(src: Sources, code: str) -> tuple[str, ...]:
    """Codes that the Excludes1 notes of ``code`` and its ancestors name (read once per code)."""
    got = src.excluded.get(code)
    if got is None:
        from icdcoder.ontology import get_ontology

        onto = get_ontology()
        out: set[str] = set()
        for owner in [code, *onto.ancestors(code, "icd10cm")]:
            info = onto.lookup(owner, "icd10cm")
            if info is not None:
                out.update(info.excludes1_codes)
        got = src.excluded[code] = tuple(sorted(out))
    return got


def _conflicts(src: Sources, a: str, b: str) -> bool:
    """An Excludes1 note forbids ``a`` with ``b`` (either way; an excluded category covers its codes)."""
    return b.startswith(_excluded_of(src, a)) or a.startswith(_excluded_of(src, b))


def candidate_features(src: Sources, notes: Sequence[Note], params: dict[str, Any]
                       ) -> list[tuple[list[str], np.ndarray, dict[str, list[Mention]], dict[str, Overlap], list[Token]]]:
    """Per note: its candidate codes, their feature rows (len(codes) x len(FEATURES), float32), the
    matcher mentions and overlaps behind them, and the note's tokens (for evidence)."""
    if not notes:
        return []
    X = src.tfidf._features([n.text for n in notes])
    P = src.tfidf._probabilities(src.tfidf._margins(X))
    S = (X @ src.knn_X.T).toarray() if src.knn_X.shape[0] else np.zeros((len(notes), 0), dtype=np.float32)
    out = []
    for i, note in enumerate(notes):
        out.append(_note_features(src, note, P[i], S[i], params))
    return out


def _note_features(src: Sources, note: Note, probs: np.ndarray, sims: np.ndarray, params: dict[str, Any]):
    toks: list[Token] = tokenize(note.text)
    mentions = src.matcher.mentions(note, toks)
    # tf-idf top k
    k = min(params["tfidf_k"], len(probs))
    t_top = np.argsort(-probs, kind="stable")[:k]
    t_rank = {src.tfidf.codes[j]: r for r, j in enumerate(t_top)}
    # nearest training notes: similarity-weighted votes
    kk = min(params["knn_k"], len(sims))
    k_score: dict[str, float] = {}
    k_count: dict[str, int] = {}
    if kk:
        nb = np.argsort(-sims, kind="stable")[:kk]
        total = float(sims[nb].sum()) or 1.0
        for j in nb:
            row = src.knn_Y[j]
            for c in row.indices:
                code = src.tfidf.codes[c]
                k_score[code] = k_score.get(code, 0.0) + float(sims[j]) / total
                k_count[code] = k_count.get(code, 0) + 1
    k_rank = {c: r for r, c in enumerate(sorted(k_score, key=lambda c: (-k_score[c], c)))}
    found = set(mentions) | set(t_rank) | set(k_score)
    sentences = split_sentences(note.text)
    overlaps: dict[str, Overlap] = {}
    if src.overlap is not None:
        overlaps = src.overlap.note_candidates(toks, sentences, min_cover=params["overlap_cover"],
                                               expand=sorted({c[:3] for c in found}), limit=params["overlap_k"])
    codes = sorted(found | set(overlaps))
    n = len(codes)
    F = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    sections = find_sections(note.text)
    length = max(len(note.text), 1)
    m_scores = {c: src.matcher._score(c, ms) for c, ms in mentions.items()}
    for r, code in enumerate(codes):
        f = F[r]
        ms = mentions.get(code)
        if ms:
            f[_F["m_score"]] = m_scores[code]
            spans = {m.span for m in ms}
            f[_F["m_mentions"]] = len(spans)
            best = max(ms, key=lambda m: m.weight)
            f[_F["m_best_weight"]] = best.weight
            f[_F["m_direct"]] = float(any(m.direct for m in ms))
            first = min(m.span[0] for m in ms)
            f[_F["m_first_pos"]] = first / length
            sec = section_at(sections, first)
            f[_F["m_section"]] = SECTION_KINDS.index(sec.kind) if sec is not None and sec.kind in SECTION_KINDS else 0
            f[_F["m_best_kind"]] = int(src.matcher.post_kind[best.post])
            status_spans: dict[str, set] = {s: set() for s in STATUSES}
            for m in ms:
                status_spans.setdefault(m.status, set()).add(m.span)
            for s in STATUSES:
                f[_F[f"m_{s}"]] = len(status_spans[s])
            f[_F["m_only_asserted"]] = float(not status_spans["present"])
        if code in t_rank:
            f[_F["t_prob"]] = probs[src.col_of[code]]
            f[_F["t_rank"]] = t_rank[code]
        if code in k_score:
            f[_F["k_score"]] = k_score[code]
            f[_F["k_count"]] = k_count[code]
            f[_F["k_rank"]] = k_rank[code]
        o = overlaps.get(code)
        if o is not None:
            f[_F["o_cover"]] = o.cover
            f[_F["o_sentence_cover"]] = o.sentence_cover
            f[_F["o_words"]] = o.n_words
            f[_F["o_exact"]] = o.exact
        fr = src.freq.get(code, 0)
        f[_F["freq"]] = fr
        f[_F["log_freq"]] = math.log1p(fr)
        f[_F["seen"]] = float(fr > 0)
        f[_F["chapter"]] = _chapter_id(src.matcher, code)
        f[_F["depth"]] = _depth(code)
        f[_F["n_sources"]] = (code in mentions) + (code in t_rank) + (code in k_score) + (code in overlaps)
    # one number per candidate to compare it with the others: the best of its sources' scores
    base = np.nanmax(np.stack([F[:, _F["m_score"]], F[:, _F["t_prob"]], F[:, _F["k_score"]],
                               0.5 * F[:, _F["o_sentence_cover"]]]), axis=0) if n else np.zeros(0)
    base = np.nan_to_num(base, nan=0.0)
    order = np.argsort(-base, kind="stable")
    F[:, _F["base"]] = base
    F[order, _F["base_rank"]] = np.arange(n)
    by_cat: dict[str, list[int]] = {}
    for r, code in enumerate(codes):
        by_cat.setdefault(code[:3], []).append(r)
    code_set = set(codes)
    pos = {c: r for r, c in enumerate(codes)}
    prefixes = {c[:j] for c in codes for j in range(3, len(c))}  # proper prefixes: every ancestor's form
    top = [codes[j] for j in order[:params["conflict_k"]]]
    checked = set(order[:2 * params["conflict_k"]].tolist())
    for r, code in enumerate(codes):
        f = F[r]
        f[_F["has_ancestor"]] = float(any(code[:j] in code_set for j in range(3, len(code))))
        f[_F["has_descendant"]] = float(code in prefixes)
        sib = [j for j in by_cat[code[:3]] if j != r]
        f[_F["n_siblings"]] = len(sib)
        f[_F["sibling_best"]] = max((base[j] for j in sib), default=0.0)
        f[_F["cat_rank"]] = sum(base[j] > base[r] for j in sib)
        if params["excludes1"]:  # against the best candidates, for the best candidates (a few lookups a note)
            f[_F["excludes1"]] = float(r in checked and any(
                c != code and base[pos[c]] > base[r] and _conflicts(src, code, c) for c in top))
    F[:, _F["note_candidates"]] = n
    F[:, _F["note_tokens"]] = len(toks)
    return codes, F, mentions, overlaps, toks


def kind_name(kind_id: float) -> str:
    """The matcher term kind of an ``m_best_kind`` value."""
    return KINDS[int(kind_id)]
