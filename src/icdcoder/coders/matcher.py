"""Ontology matcher: every code's names found in the note, with assertion handled.

The terminology half of a computer-assisted coding system: one term dictionary per code, matched on
normalised tokens (:mod:`icdcoder.text.normalize`) with an Aho-Corasick automaton (pyahocorasick),
each mention's assertion read by :mod:`icdcoder.text.assertion`, and a score per code. It needs no
GPU and no training to work (the ontology alone codes), and it can propose codes that no training
note ever had: the label space is the whole ICD-10-CM by default.

**Terms of a code** (``kind`` in brackets; the base weight of a term is its specificity times the
kind's weight in :data:`KIND_WEIGHT`):

* the ICD-10-CM description and inclusion terms as written (``description``, ``inclusion``) and
  their rule rewrites from :mod:`icdcoder.training.phrasing` - plain note wording, "X of Y" ->
  "Y X", "A, B" -> "B A", "due to" -> "secondary to" (``rewrite``), the 127 clinical abbreviations
  (``abbreviation``: matched only when the note writes the abbreviation's capitals, so "AS" is
  aortic stenosis and "as" is not) - and a few clinical synonyms of ontology wording
  (:data:`SYNONYMS`: "malignant neoplasm" -> "cancer", "cerebral infarction" -> "stroke"; ``synonym``);
  codes with a 7th character other than ``A`` (subsequent encounters, sequelae) keep their
  description only;
* the CMS Alphabetic Index phrases when ``index_file`` is given (``index``) and their rewrites;
* from the training notes only: gold evidence spans (``Note.spans``; ``span``) and mined n-grams
  (``mined``): 1-``max_ngram`` token n-grams whose first and last tokens are not stopwords, that
  cross no comma or sentence break and hold no number but a grade ("stage 4", not "heart rate 63"),
  seen in at least ``min_count`` training notes that have the code, where at least
  ``min_precision`` of the notes that contain the n-gram have the code (3 codes at most per n-gram);
  its weight is that precision, shrunk by one note (``co / (df + 1)``). Where the training notes
  have gold evidence spans for the code, the n-gram must lie inside one in at least half of those
  notes: co-occurrence ("losartan 50 mg daily" in notes coded N18.30) is not evidence. Validation
  notes are never mined: ``fit`` uses val for the threshold only.

**Weights.** Specificity ``1 - 0.4 * 0.65 ** (n - 1)`` for a term of ``n`` content tokens (0.6 for one
token, 0.83 for three), divided by ``1 + 0.5 ln k`` when ``k`` codes share the term (ancestors of
another code of the term left out). With ``calibrate`` the ontology terms are then run over the
training notes and a term's weight for a code becomes its smoothed precision there,
``(hits + 2 w0) / (fires + 2)``: "pain" that fires in 300 notes, 112 of them coded R52, weighs
about 0.37 whatever its specificity said.

**Matching.** Every occurrence of every term (overlaps included). A match inside a longer match
loses those of its codes that share an ICD chapter with a code of the longer one ("chronic kidney
disease" inside "chronic kidney disease stage 4" does not add N18.9; inside "type 2 diabetes mellitus
with diabetic chronic kidney disease" it stays). ``word_order`` adds every order of the tokens of
2-3 token terms (at 0.9 of the weight); ``fuzzy`` maps a note token of 6+ letters that no term has to
the closest term token (rapidfuzz ratio >= 88, at 0.9 of the weight). Both are off by default.

**Assertion** (with ``assertion``; :mod:`icdcoder.text.assertion`), per mention:

* negated (ruled out included) or possible/hypothetical: the mention codes nothing;
* family history: the condition is not coded; its Z80-Z84 "Family history of ..." code is, when one
  fits (:func:`history_codes`: "Mother had breast cancer" -> Z80.3, "diabetes in his father" -> Z83.3);
* historical ("history of X", "prior X", "X, resolved"): when a specific Z85-Z87 "Personal history
  of ..." code fits X it is coded instead (breast cancer -> Z85.3, pneumonia -> Z87.01, DVT ->
  Z86.718); otherwise X itself is coded at ``historical_weight`` (0.8) of its weight, since a
  "history of hypertension" or "of T2DM" is a chronic condition that ICD-10-CM codes as current.
  A personal-history code fits only through the condition's own wording (its description, its
  ancestors', its terms), never through a residual "other diseases of the ... system" code;
* a term of a Z80-Z87 code itself ("family history of colon cancer") codes that code whatever its
  context says, unless negated or possible.

**Specificity across the note.** A code whose descendant is also found is dropped (the descendant
is the more specific reading of the same text: E11 and E11.9 -> E11.9); a code with no matched
descendant stays, category or not.

**Score** of a code: the noisy-or of its mentions, ``1 - prod(1 - w_m)``, times the prior factor
``(1 - prior_weight) + prior_weight * f / (f + 1)`` with ``f`` its count in the training notes,
so a code never seen in training keeps ``1 - prior_weight`` (0.85) of its evidence. The threshold is
tuned on val (``Coder.tune_threshold``). Evidence: the matched spans (original offsets, up to 5).

**Saved state**: ``matcher.json`` (codes, terms, case patterns, history maps, priors, build stats)
and ``postings.npz`` (which codes each term points at, with kind and weight): data only. The
automaton is rebuilt from them at load time (about a second or two for the whole ontology).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter, defaultdict
from itertools import permutations
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from icdcoder.coders.base import Coder, register
from icdcoder.data.note import Note
from icdcoder.prediction import Evidence, Prediction
from icdcoder.text.normalize import Token, tokenize

class Mention(NamedTuple):
    """One place a code's term is found: its weight, characters, posting, whether the posting is the
    code's own (not a history code it was mapped to) and its assertion ("present" when not read)."""

    weight: float
    span: tuple[int, int]
    post: int
    direct: bool
    status: str


STATE_FILE = "matcher.json"
POSTINGS_FILE = "postings.npz"
FORMAT = 1

KINDS = ("description", "inclusion", "index", "rewrite", "abbreviation", "synonym", "span", "mined")
KIND_ID = {k: i for i, k in enumerate(KINDS)}
#: Weight of a term kind before specificity (mined terms weigh their precision instead).
KIND_WEIGHT = {"description": 1.0, "inclusion": 0.95, "index": 0.95, "rewrite": 0.9, "abbreviation": 0.85,
               "synonym": 0.85, "span": 0.9, "mined": 1.0}
_ONTOLOGY_KINDS = frozenset(KIND_ID[k] for k in ("description", "inclusion", "index", "rewrite", "abbreviation",
                                                  "synonym"))

#: Ontology wording -> what notes write for it. Applied to every plain form that contains the
#: phrase (whole words), then "X of Y" forms are reordered ("cancer of breast" -> "breast cancer").
SYNONYMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("malignant neoplasm", ("cancer", "carcinoma", "malignancy")),
    ("benign neoplasm", ("benign tumor",)),
    ("neoplasm", ("tumor",)),
    ("cerebral infarction", ("stroke", "ischemic stroke")),
    ("myocardial infarction", ("heart attack",)),
    ("essential hypertension", ("hypertension", "arterial hypertension", "high blood pressure")),
    ("hyperlipidemia", ("dyslipidemia",)),
    ("calculus of kidney", ("kidney stone", "nephrolithiasis", "renal lithiasis")),
    ("calculus of gallbladder", ("gallstones", "cholelithiasis")),
    ("acute kidney failure", ("acute renal failure", "acute renal insufficiency")),
    ("chronic kidney disease", ("chronic renal failure", "chronic renal insufficiency")),
    ("type 2 diabetes mellitus", ("type 2 diabetes", "diabetes mellitus type 2", "diabetes type 2")),
    ("type 1 diabetes mellitus", ("type 1 diabetes", "diabetes mellitus type 1", "diabetes type 1")),
    ("human immunodeficiency virus disease", ("hiv infection", "hiv")),
    ("atherosclerotic heart disease of native coronary artery", ("coronary artery disease",
                                                                 "coronary heart disease")),
    ("fever", ("pyrexia", "febrile syndrome")),
)

#: Never the first or last token of a mined n-gram, nor a one-token term.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself him
himself his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
out over own same she should so some such than that the their them then there these they this those through to too
under until up very was we were what when where which while who whom why will with without would you your
patient year old day days week weeks month months time times case left right also due one two three after showed
performed presented revealed treatment study examination normal level levels value values mg ml kg g l h per
""".split())
_FAMILY_PREFIX = "family history of "
_PERSONAL_PREFIX = "personal history of "
#: Words that carry no condition in a "Family/Personal history of X" description.
_HISTORY_STOP = frozenset("of the and or other unspecified disease disorder condition certain specified in with "
                          "without to by related a an for on at from not elsewhere classified leading site sites "
                          "part parts type".split())
_CONDITION_CHAPTERS = frozenset("ABCDEFGHIJKLMNQ")
_GRADES = frozenset({"type", "stage", "grade", "class", "phase", "degree", "level"})


def specificity(n_tokens: int) -> float:
    return 1.0 - 0.4 * 0.65 ** (max(n_tokens, 1) - 1)


def prefix_ancestors(code: str, known: set[str] | frozenset[str] | dict) -> list[str]:
    """Ancestors of an ICD-10-CM code within ``known``, nearest first (the hierarchy is the code's
    prefix: E11.65 -> E11.6 -> E11)."""
    flat = code.replace(".", "")
    out = []
    for n in range(len(flat) - 1, 2, -1):
        cand = f"{flat[:3]}.{flat[3:n]}"
        if cand in known:
            out.append(cand)
    if len(flat) > 3 and flat[:3] in known:
        out.append(flat[:3])
    return out


_BREAK = re.compile(r"[;:!?\n]")


def boundaries(text: str, toks: Sequence[Token]) -> list[bool]:
    """``out[i]``: a sentence-like break (". ; : ! ?" or a line break; not the period after a
    one-character token, as in "C. diff") stands between token ``i - 1`` and token ``i``. No term
    and no mined n-gram runs across one."""
    out = [False] * len(toks)
    for i in range(1, len(toks)):
        gap = text[toks[i - 1].end:toks[i].start]
        if gap and (_BREAK.search(gap) or ("." in gap and toks[i - 1].end - toks[i - 1].start > 1)):
            out[i] = True
    return out


def _content_len(tokens: Sequence[str]) -> int:
    return sum(1 for t in tokens if t not in STOPWORDS) or 1


def _key(tokens: Sequence[str]) -> str:
    return " ".join(tokens)


# ---------------------------------------------------------------------------------- term building
_SYNONYM_RES = [(phrase, re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])"), alts) for phrase, alts in SYNONYMS]


def _synonym_forms(plain: str) -> list[str]:
    from icdcoder.training.phrasing import reorder_of

    low = plain.lower()
    out = []
    for phrase, pattern, alts in _SYNONYM_RES:
        if phrase in low and pattern.search(low):
            for alt in alts:
                form = pattern.sub(alt, low)
                out.append(form)
                reordered = reorder_of(form)
                if reordered:
                    out.append(reordered)
    return out


def term_forms(text: str, first_kind: str, rewrites: bool, synonyms: bool) -> list[tuple[str, str]]:
    """(phrase, kind) for one ontology text: as written (``first_kind``), then its rewrites,
    abbreviations and synonym forms."""
    from icdcoder.training.phrasing import abbreviate, phrasings

    out = [(text, first_kind)]
    if not rewrites:
        return out
    forms = phrasings(text, qualifiers=False, max_forms=16)
    for form in forms:
        abbreviated = abbreviate(form) is None and any(_is_abbrev_token(w) for w in form.split())
        out.append((form, "abbreviation" if abbreviated else "rewrite"))
    if synonyms:
        for form in dict.fromkeys(f for p in forms for f in _synonym_forms(p)):
            out.append((form, "synonym"))
            short = abbreviate(form)
            if short:
                out.append((short, "abbreviation"))
    return out


_ABBREVS: frozenset[str] | None = None


def _is_abbrev_token(word: str) -> bool:
    global _ABBREVS
    if _ABBREVS is None:
        from icdcoder.training.phrasing import ABBREVIATIONS

        _ABBREVS = frozenset(w for v in ABBREVIATIONS.values() for w in v.split())
    return word in _ABBREVS


class _Builder:
    """Collects (term, code) postings, keeping the best weight per pair."""

    def __init__(self) -> None:
        self.terms: dict[str, int] = {}
        self.ntok: list[int] = []
        self.post: list[dict[str, tuple[int, float, int]]] = []  # per term: code -> (kind, weight, case)
        self.cases: dict[str, int] = {}

    def add(self, tokens: Sequence[str], code: str, kind: str, weight: float, case: str | None = None) -> None:
        if not tokens:
            return
        key = _key(tokens)
        tid = self.terms.get(key)
        if tid is None:
            tid = self.terms[key] = len(self.ntok)
            self.ntok.append(len(tokens))
            self.post.append({})
        cid = self.cases.setdefault(case, len(self.cases)) if case else -1
        old = self.post[tid].get(code)
        if old is None or weight > old[1]:
            self.post[tid][code] = (KIND_ID[kind], float(weight), cid)


def _acceptable_term(tokens: Sequence[str]) -> bool:
    if not tokens:
        return False
    if len(tokens) == 1 and (tokens[0] in STOPWORDS or len(tokens[0]) < 2 or tokens[0].isdigit()):
        return False
    return not all(t in STOPWORDS or t.isdigit() for t in tokens)


def _needs_capitals(word: str) -> bool:
    """An abbreviation that reads as a word or unit in lower case ("AS", "ALL", "MS", "HTN") must be
    written with its capitals; a longer one ("COPD", "T2DM") matches in any case."""
    return any(c.isupper() for c in word) and (len(word) <= 3 or word.lower() in STOPWORDS)


def _case_pattern(phrase: str) -> str | None:
    """The tokens of an abbreviation form that must be matched with their capitals, "*" for the others;
    None when no token needs them."""
    raw = [phrase[t.start:t.end] for t in tokenize(phrase)]
    if not any(_needs_capitals(w) for w in raw):
        return None
    return " ".join(w if _needs_capitals(w) else "*" for w in raw)


# ------------------------------------------------------------------------------ history mapping
def _history_alternatives(description: str) -> list[tuple[frozenset[str], bool]]:
    """(key tokens, residual) for each condition a "Family/Personal history of X" code names:
    "ischemic heart disease and other diseases of the circulatory system" -> the first, and the second
    as residual; "malignant neoplasm of trachea, bronchus and lung" -> one per organ."""
    x = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", description)
    x = re.sub(r"\s+", " ", x).strip().lower()
    x = re.split(r"\s+without\s+", x)[0]
    parts = [p.strip(" ,") for p in re.split(r",?\s+and other\s+", x)]
    parts = [parts[0]] + ["other " + p for p in parts[1:]]
    alts: list[str] = []
    for part in parts:
        m = re.match(r"^(.*?\bof )(.+)$", part)
        if m and re.search(r",|\band\b|\bor\b", m.group(2)):
            items = [i.strip() for i in re.split(r",\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+", m.group(2)) if i.strip()]
            alts += [m.group(1) + i for i in items]
        else:
            alts += [p for p in re.split(r",\s*(?:and\s+)?(?=\w)", part)] if part.count(",") and " of " not in part \
                else [part]
    out = []
    residual_all = x.startswith("other ")
    for alt in alts:
        residual = residual_all or alt.startswith("other ") or "unspecified" in alt or " other " in f" {alt} "
        key = frozenset(t.norm for t in tokenize(alt) if t.norm not in _HISTORY_STOP)
        if key:
            out.append((key, residual))
    return out


def history_codes(rows: dict[str, dict[str, Any]], known: set[str], term_tokens_of: dict[str, set[str]],
                  blocks: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(family_of, personal_of)``: condition code -> its Z80-Z84 family-history code / Z85-Z87
    personal-history code, for every condition code in ``known`` (chapters A-N, Q) where one fits.

    A history code's description "Family history of X" names conditions (:func:`_history_alternatives`);
    it fits a condition code when every key word of X is among the condition's words: its own
    description, its ancestors', its dictionary terms ("own"), or the title of its block and chapter
    ("wide"; family history only). Among fitting codes the first by: not residual ("other ...",
    "unspecified"), fits through own words, deeper code, more key words. A non-billable choice is
    replaced by its best fitting billable descendant (residual allowed) when it has one.
    """
    hist: dict[str, list[tuple[str, frozenset[str], bool]]] = {"family": [], "personal": []}
    for code, row in rows.items():
        desc = (row["description"] or "").lower()
        if code not in known:
            continue
        if code[:3] in {"Z80", "Z81", "Z82", "Z83", "Z84"} and desc.startswith(_FAMILY_PREFIX):
            hist["family"] += [(code, k, r) for k, r in _history_alternatives(desc[len(_FAMILY_PREFIX):])]
        elif code[:3] in {"Z85", "Z86", "Z87"} and desc.startswith(_PERSONAL_PREFIX):
            hist["personal"] += [(code, k, r) for k, r in _history_alternatives(desc[len(_PERSONAL_PREFIX):])]

    def words(text: str | None) -> set[str]:
        return {t.norm for t in tokenize(text or "")}

    own_cache: dict[str, set[str]] = {}

    def own(code: str) -> set[str]:
        if code not in own_cache:
            row = rows.get(code)
            w = words(row["description"] if row else None) | term_tokens_of.get(code, set())
            parent = row.get("parent") if row else None
            if parent:
                w |= own(parent)
            own_cache[code] = w
        return own_cache[code]

    def wide(code: str) -> set[str]:
        row = rows.get(code[:3]) or {}
        return words(blocks.get(code[:3])) | words(row.get("chapter_title"))

    family_of: dict[str, str] = {}
    personal_of: dict[str, str] = {}
    conditions = [c for c in sorted(known) if c[:1] in _CONDITION_CHAPTERS]
    by_category: dict[str, list[str]] = defaultdict(list)
    for c in conditions:
        by_category[c[:3]].append(c)
    for kind, alts in hist.items():
        if not alts:
            continue
        target = family_of if kind == "family" else personal_of
        for cat, codes in by_category.items():
            union = wide(cat)
            for c in codes:
                union |= own(c)
            candidates = [a for a in alts if a[1] <= union]
            if not candidates:
                continue
            wide_cat = wide(cat)
            for c in codes:
                o = own(c)
                w = o | wide_cat
                fits = []  # (rank, code), best first after sorting
                for z, key, residual in candidates:
                    if key <= w:
                        fits.append(((not residual, key <= o, len(z.replace(".", "")), len(key)), z, residual))
                fits.sort(key=lambda f: f[0], reverse=True)
                allowed = [f for f in fits if kind == "family" or (f[0][0] and f[0][1])]
                if not allowed:
                    continue
                best = allowed[0][1]
                if not (rows.get(best) or {}).get("billable", True):
                    flat = best.replace(".", "")
                    below = [f[1] for f in fits if f[1] != best and f[1].replace(".", "").startswith(flat)
                             and (rows.get(f[1]) or {}).get("billable")]
                    if below:
                        best = below[0]
                target[c] = best
    return family_of, personal_of


# ------------------------------------------------------------------------------------ ontology
def _ontology_rows() -> dict[str, dict[str, Any]]:
    """Every real ICD-10-CM code with description, parent, billable flag, inclusion terms and chapter."""
    from icdcoder.ontology import get_ontology

    return {r.code: {"description": r.description, "parent": r.parent, "billable": r.billable,
                     "inclusion": list(r.inclusion_terms), "chapter": r.chapter[0] if r.chapter else None,
                     "chapter_title": r.chapter[1] if r.chapter else None}
            for r in get_ontology().records("icd10cm")}


def _block_titles(categories: Iterable[str]) -> dict[str, str]:
    """Category -> title of its block ("C18" -> "Malignant neoplasms of digestive organs"), read from
    simple_icd_10_cm (the ontology index keeps chapters, not blocks); {} when unavailable."""
    import warnings

    try:
        with warnings.catch_warnings():  # it reads its data with deprecated importlib.resources calls
            warnings.simplefilter("ignore", DeprecationWarning)
            import simple_icd_10_cm as cm

            cm.get_ancestors("A00")
    except (ImportError, ValueError):  # pragma: no cover - a core dependency
        return {}
    out = {}
    for cat in categories:
        try:
            anc = cm.get_ancestors(cat)
            block = next((a for a in anc if "-" in a), None)
            if block:
                out[cat] = re.sub(r"\s*\([A-Z0-9.\-]+\)\s*$", "", cm.get_description(block))
        except (ValueError, KeyError):
            continue
    return out


def ontology_entries(rows: dict[str, dict[str, Any]], codes: Sequence[str], index_terms: dict[str, list[str]],
                     rewrites: bool, synonyms: bool, *, cache: bool = False,
                     index_file: str | None = None) -> list[tuple[str, str, str, float, str | None]]:
    """(term key, code, kind, weight before sharing, capitals pattern) for the ontology terms of
    ``codes``. With ``cache`` the list is kept in the cache folder, keyed by the ontology index, the
    term rules (this module, phrasing, normalisation) and the options, so the whole-ontology
    dictionary is built once per machine (~15-40 s) and read back in about a second."""
    path = None
    if cache:
        path = _entries_cache_path(codes, rewrites, synonyms, index_file)
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                return [(k, c, kind, float(w), case) for k, c, kind, w, case in data["entries"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged cache file is rebuilt
    out: list[tuple[str, str, str, float, str | None]] = []
    form_cache: dict[tuple[str, str, bool], list[tuple[str, str]]] = {}
    for code in codes:
        row = rows.get(code)
        if row is None:
            continue
        flat = code.replace(".", "")
        # subsequent encounters and sequelae (7th character other than A) keep their description only
        full = rewrites and not (len(flat) == 7 and flat[-1] != "A" and code[0] in "MOSTVWXY")
        texts = [(row["description"], "description")] + [(t, "inclusion") for t in row["inclusion"]]
        texts += [(t, "index") for t in index_terms.get(code, [])]
        for text, kind in texts:
            if not text:
                continue
            ck = (text, kind, full)
            if ck not in form_cache:
                form_cache[ck] = term_forms(text, kind, full, synonyms)
            for phrase, fkind in form_cache[ck]:
                toks = tuple(t.norm for t in tokenize(phrase))
                case = _case_pattern(phrase) if fkind == "abbreviation" else None
                if not (_acceptable_term(toks) or (case and toks and not toks[0].isdigit())):
                    continue
                out.append((_key(toks), code, fkind, specificity(_content_len(toks)) * KIND_WEIGHT[fkind], case))
    if path is not None:
        try:
            from icdcoder.io import atomic_write

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as fh:
                json.dump({"entries": out}, fh, ensure_ascii=False, separators=(",", ":"))
        except OSError:
            pass  # no cache folder: build again next time
    return out


def _entries_cache_path(codes: Sequence[str], rewrites: bool, synonyms: bool, index_file: str | None) -> Path | None:
    from icdcoder.cache import cache_dir
    from icdcoder.ontology import get_ontology

    h = hashlib.sha256()
    here = Path(__file__).resolve()
    for f in (here, here.parents[1] / "training" / "phrasing.py", here.parents[1] / "text" / "normalize.py"):
        try:
            h.update(f.read_bytes())
        except OSError:
            return None
    h.update(json.dumps([FORMAT, get_ontology().index.meta.get("key", ""), rewrites, synonyms, len(codes),
                         codes[0] if codes else "", codes[-1] if codes else ""]).encode())
    if index_file:
        from icdcoder.io import file_sha256

        h.update(file_sha256(index_file).encode())
    return cache_dir("matcher") / f"terms-{h.hexdigest()[:20]}.json"


# --------------------------------------------------------------------------------------- coder
@register("matcher")
class MatcherCoder(Coder):
    """Parameters (see the module docstring for what each does): ``label_space`` ("ontology": every
    ICD-10-CM code, billable or category; "billable"; "train": the training codes only; or a list of
    codes), ``train_codes`` (add the training codes to it), ``index_file`` (CMS Index XML),
    ``rewrites`` (phrasing rules and abbreviations), ``synonyms``, ``mine`` with ``min_count``,
    ``min_precision``, ``max_ngram``, ``spans`` (gold evidence spans as terms), ``calibrate``,
    ``assertion``, ``historical_weight``, ``family_weight``, ``word_order``, ``fuzzy``,
    ``prior_weight``, ``nested`` ("chapter", "keep" or "drop"), ``top_k``."""

    state_files = (STATE_FILE, POSTINGS_FILE)

    def __init__(self, label_space: str | list[str] = "ontology", train_codes: bool = True,
                 index_file: str | None = None, rewrites: bool = True, synonyms: bool = True, mine: bool = True,
                 min_count: int = 3, min_precision: float = 0.6, max_ngram: int = 4, spans: bool = True,
                 calibrate: bool = True, assertion: bool = True, historical_weight: float = 0.8,
                 family_weight: float = 0.9, word_order: bool = False, fuzzy: bool = False,
                 prior_weight: float = 0.15, nested: str = "chapter", top_k: int = 100):
        if nested not in ("chapter", "keep", "drop"):
            raise ValueError(f"nested must be 'chapter', 'keep' or 'drop', not {nested!r}")
        if isinstance(label_space, str) and label_space not in ("ontology", "billable", "train"):
            raise ValueError(f"label_space must be 'ontology', 'billable', 'train' or a list of codes, "
                             f"not {label_space!r}")
        super().__init__(label_space=label_space, train_codes=train_codes, index_file=index_file, rewrites=rewrites,
                         synonyms=synonyms, mine=mine, min_count=min_count, min_precision=min_precision,
                         max_ngram=max_ngram, spans=spans, calibrate=calibrate, assertion=assertion,
                         historical_weight=historical_weight, family_weight=family_weight, word_order=word_order,
                         fuzzy=fuzzy, prior_weight=prior_weight, nested=nested, top_k=top_k)
        self.codes: list[str] = []
        self.terms: list[str] = []
        self.cases: list[str] = []
        self.term_ptr = np.zeros(1, dtype=np.int64)
        self.post_code = np.zeros(0, dtype=np.int32)
        self.post_kind = np.zeros(0, dtype=np.int8)
        self.post_weight = np.zeros(0, dtype=np.float32)
        self.post_case = np.zeros(0, dtype=np.int32)
        self.family_of: dict[str, str] = {}
        self.personal_of: dict[str, str] = {}
        self.chapter_of: dict[str, str] = {}  # category -> chapter
        self.prior: dict[str, int] = {}
        self.build_info: dict[str, Any] = {}
        self._automaton: Any = None
        self._vocab: list[str] | None = None
        self._fuzzy_cache: dict[str, str | None] = {}

    # ------------------------------------------------------------------------------- label space
    def _label_space(self, rows: dict[str, dict[str, Any]], train: Sequence[Note]) -> set[str]:
        from icdcoder.codes import CodeFormatError, normalize_code

        spec = self.params["label_space"]
        if spec == "ontology":
            space = set(rows)
        elif spec == "billable":
            space = {c for c, r in rows.items() if r["billable"]}
        elif spec == "train":
            space = set()
        else:
            space = set()
            for raw in spec:
                try:
                    space.add(normalize_code(str(raw), "icd10cm"))
                except CodeFormatError as e:
                    raise ValueError(f"label_space: {e}") from None
        if self.params["train_codes"] or spec == "train":
            space |= {c for n in train for c in n.codes if n.code_systems[c].value == "icd10cm"}
        return space

    # ------------------------------------------------------------------------------------- fit
    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "MatcherCoder":
        if not train:
            raise ValueError("cannot fit on an empty training set")
        p = self.params
        t0 = time.perf_counter()
        self._remember_labels(train)
        rows = _ontology_rows()
        space = self._label_space(rows, train)
        index_terms: dict[str, list[str]] = {}
        if p["index_file"]:
            from icdcoder.ontology.index_terms import load_index_terms

            index_terms = load_index_terms(p["index_file"])
        whole = p["label_space"] in ("ontology", "billable")
        entries = ontology_entries(rows, sorted(rows) if whole else sorted(space), index_terms, p["rewrites"],
                                   p["synonyms"], cache=whole, index_file=p["index_file"])
        b = _Builder()
        term_tokens_of: dict[str, set[str]] = defaultdict(set)
        for key, code, kind, weight, case in entries:
            if code in space:
                toks = key.split(" ")
                b.add(toks, code, kind, weight, case)
                if kind != "abbreviation":
                    term_tokens_of[code].update(toks)
        t_ont = time.perf_counter()
        if p["spans"]:
            for n in train:
                for sp in n.spans:
                    toks = tuple(t.norm for t in tokenize(n.text[sp.start:sp.end]))
                    if sp.code in space and _acceptable_term(toks) and len(toks) <= 12:
                        b.add(toks, sp.code, "span", specificity(_content_len(toks)) * KIND_WEIGHT["span"])
        self.chapter_of = {c: str(r["chapter"]) for c, r in rows.items() if len(c) == 3 and r["chapter"] is not None}
        blocks = _block_titles({c[:3] for c in space if c[:1] in _CONDITION_CHAPTERS})
        self.family_of, self.personal_of = history_codes(rows, space, term_tokens_of, blocks)
        t_hist = time.perf_counter()
        self.prior = dict(Counter(c for n in train for c in n.codes))
        self._freeze(b)
        train_tokens = [tokenize(n.text) for n in train]
        if p["calibrate"]:
            self._calibrate(train, train_tokens)
        t_cal = time.perf_counter()
        mined = 0
        if p["mine"]:
            mined = self._mine(train, train_tokens, space)
        self._automaton = None
        self.build_info = {"codes": len(self.codes), "terms": len(self.terms), "postings": int(len(self.post_code)),
                           "mined_postings": mined, "label_space": len(space),
                           "family_codes_mapped": len(self.family_of), "personal_codes_mapped": len(self.personal_of),
                           "seconds": {"ontology_terms": round(t_ont - t0, 2), "history": round(t_hist - t_ont, 2),
                                       "calibrate": round(t_cal - t_hist, 2),
                                       "mine": round(time.perf_counter() - t_cal, 2)}}
        self.label_systems = {**{c: "icd10cm" for c in self.codes}, **self.label_systems}
        if val:
            self.tune_threshold(val)
        return self

    def _freeze(self, b: _Builder) -> None:
        """Builder -> arrays: ancestors of another code of the same term dropped, shared terms discounted."""
        code_ids: dict[str, int] = {}
        ptr = [0]
        pc: list[int] = []
        pk: list[int] = []
        pw: list[float] = []
        pcase: list[int] = []
        terms = [""] * len(b.terms)
        for key, tid in b.terms.items():
            terms[tid] = key
        for tid, post in enumerate(b.post):
            codes = set(post)
            drop = {a for c in codes for a in prefix_ancestors(c, codes)}
            kept = [c for c in sorted(codes) if c not in drop]
            k = len(kept)
            for c in kept:
                kind, w, case = post[c]
                if kind in _ONTOLOGY_KINDS or kind == KIND_ID["span"]:
                    w = w / (1.0 + 0.5 * math.log(k))
                pc.append(code_ids.setdefault(c, len(code_ids)))
                pk.append(kind)
                pw.append(w)
                pcase.append(case)
            ptr.append(len(pc))
        self.codes = list(code_ids)
        self.terms = terms
        self.cases = [c for c, _ in sorted(b.cases.items(), key=lambda kv: kv[1])]
        self._set_postings(ptr, pc, pk, pw, pcase)

    def _set_postings(self, ptr: list[int], pc: list[int], pk: list[int], pw: list[float], pcase: list[int]) -> None:
        """The posting arrays (CSR by term: codes, kinds, weights, case patterns); the automaton is stale."""
        self.term_ptr = np.asarray(ptr, dtype=np.int64)
        self.post_code = np.asarray(pc, dtype=np.int32)
        self.post_kind = np.asarray(pk, dtype=np.int8)
        self.post_weight = np.asarray(pw, dtype=np.float32)
        self.post_case = np.asarray(pcase, dtype=np.int32)
        self._automaton = None

    def _calibrate(self, train: Sequence[Note], train_tokens: list[list[Token]]) -> None:
        """Ontology postings' weights -> their smoothed precision on the training notes."""
        fires = np.zeros(len(self.post_code), dtype=np.int32)
        hits = np.zeros(len(self.post_code), dtype=np.int32)
        for note, toks in zip(train, train_tokens):
            gold = set(note.codes)
            cands = self._candidates(note.text, toks)
            seen: set[int] = set()
            for code, support in cands.items():
                for _, _, post, direct, _ in support:
                    if not direct or post in seen:
                        continue
                    seen.add(post)
                    fires[post] += 1
                    hits[post] += code in gold
        ontology = np.isin(self.post_kind, list(_ONTOLOGY_KINDS))
        fired = ontology & (fires > 0)
        w0 = self.post_weight[fired]
        self.post_weight[fired] = ((hits[fired] + 2.0 * w0) / (fires[fired] + 2.0)).astype(np.float32)

    def _mine(self, train: Sequence[Note], train_tokens: list[list[Token]], space: set[str]) -> int:
        """Add n-grams that predict a code in the training notes (see the module docstring)."""
        p = self.params
        n_max, min_count, min_prec = p["max_ngram"], p["min_count"], p["min_precision"]
        df: Counter = Counter()
        grams_of: list[dict[tuple[str, ...], list[tuple[int, int]]]] = []  # per note: n-gram -> char spans
        for note, toks in zip(train, train_tokens):
            norms = [t.norm for t in toks]
            breaks = boundaries(note.text, toks)
            grams: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
            for i in range(len(norms)):
                if norms[i] in STOPWORDS or norms[i].isdigit():
                    continue
                for n in range(1, n_max + 1):
                    j = i + n - 1
                    if j >= len(norms) or (n > 1 and (breaks[j] or "," in note.text[toks[j - 1].end:toks[j].start])):
                        break
                    last = norms[j]
                    if last.isdigit() and (n == 1 or norms[j - 1] not in _GRADES):
                        break  # a measurement ("heart rate 63"), not a grade ("stage 4")
                    if last in STOPWORDS or len(last) < 2:
                        continue
                    grams[tuple(norms[i:i + n])].append((toks[i].start, toks[j].end))
            grams_of.append(grams)
            df.update(grams.keys())
        spans_of: list[dict[str, list[tuple[int, int]]]] = []
        for n in train:
            by_code: dict[str, list[tuple[int, int]]] = defaultdict(list)
            for sp in n.spans:
                by_code[sp.code].append((sp.start, sp.end))
            spans_of.append(by_code)
        with_spans = {c for by_code in spans_of for c in by_code}
        code_notes: dict[str, int] = defaultdict(int)  # code -> bitset of notes
        code_count: Counter = Counter()
        for i, n in enumerate(train):
            for c in n.codes:
                if c in space:
                    code_notes[c] |= 1 << i
                    code_count[c] += 1
        gram_notes: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, grams in enumerate(grams_of):
            for g in grams:
                if df[g] >= min_count:
                    gram_notes[g].append(i)
        by_count = sorted(code_count.items(), key=lambda kv: -kv[1])
        mined: list[tuple[tuple[str, ...], str, float]] = []
        for g, notes in gram_notes.items():
            d = len(notes)
            need = max(min_count, math.ceil(min_prec * d))
            if d <= 40:
                cnt: Counter = Counter()
                for i in notes:
                    cnt.update(c for c in train[i].codes if c in space)
                found = [(c, k) for c, k in cnt.items() if k >= need]
            else:
                mask = 0
                for i in notes:
                    mask |= 1 << i
                found = []
                for c, total in by_count:
                    if total < need:
                        break
                    k = (code_notes[c] & mask).bit_count()
                    if k >= need:
                        found.append((c, k))
            for c, k in sorted(found, key=lambda ck: -ck[1])[:3]:
                if c in with_spans:  # where gold evidence exists, a mined n-gram must lie inside it
                    inside = sum(1 for i in notes if any(s0 <= a and b <= e0 for a, b in grams_of[i][g]
                                                         for s0, e0 in spans_of[i].get(c, ())))
                    if inside < max(1, k / 2):
                        continue
                mined.append((g, c, k / (d + 1.0)))
        if not mined:
            return 0
        self._add_postings(mined)
        return len(mined)

    def _add_postings(self, mined: list[tuple[tuple[str, ...], str, float]]) -> None:
        """Merge mined (tokens, code, weight) into the frozen arrays (a mined posting never lowers an
        existing one of the same term and code)."""
        term_ids = {t: i for i, t in enumerate(self.terms)}
        code_ids = {c: i for i, c in enumerate(self.codes)}
        per_term: dict[int, list[tuple[int, int, float, int]]] = defaultdict(list)
        for tid in range(len(self.terms)):
            a, z = self.term_ptr[tid], self.term_ptr[tid + 1]
            per_term[tid] = [(int(self.post_code[j]), int(self.post_kind[j]), float(self.post_weight[j]),
                              int(self.post_case[j])) for j in range(a, z)]
        for toks, code, w in mined:
            key = _key(toks)
            tid = term_ids.get(key)
            if tid is None:
                tid = term_ids[key] = len(self.terms)
                self.terms.append(key)
            cid = code_ids.get(code)
            if cid is None:
                cid = code_ids[code] = len(self.codes)
                self.codes.append(code)
            entries = per_term[tid]
            for j, (c, k, old, case) in enumerate(entries):
                if c == cid:
                    if w > old:
                        entries[j] = (c, KIND_ID["mined"], w, -1)
                    break
            else:
                entries.append((cid, KIND_ID["mined"], w, -1))
        ptr = [0]
        pc, pk, pw, pcase = [], [], [], []
        for tid in range(len(self.terms)):
            for c, k, w, case in per_term.get(tid, []):
                pc.append(c)
                pk.append(k)
                pw.append(w)
                pcase.append(case)
            ptr.append(len(pc))
        self._set_postings(ptr, pc, pk, pw, pcase)

    # -------------------------------------------------------------------------------- matching
    def _build_automaton(self) -> None:
        import ahocorasick

        auto = ahocorasick.Automaton()
        entries: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for tid, key in enumerate(self.terms):
            if self.term_ptr[tid] == self.term_ptr[tid + 1]:
                continue
            entries[key].append((tid, 1.0))
        if self.params["word_order"]:
            real = set(entries)
            for tid, key in enumerate(self.terms):
                toks = key.split(" ")
                if 2 <= len(toks) <= 3 and self.term_ptr[tid] < self.term_ptr[tid + 1]:
                    for perm in set(permutations(toks)):
                        alt = " ".join(perm)
                        if alt not in real:
                            entries[alt].append((tid, 0.9))
        for key, vals in entries.items():
            padded = f" {key} "
            auto.add_word(padded, (len(padded), key.count(" ") + 1, tuple(vals)))
        auto.make_automaton()
        self._automaton = auto
        self._vocab = None

    def _fuzzy(self, norms: list[str]) -> tuple[list[str], list[bool]]:
        from rapidfuzz import fuzz, process

        if self._vocab is None:
            self._vocab = sorted({t for key in self.terms for t in key.split(" ")})
            self._vocab_set = set(self._vocab)
        out, changed = [], []
        for n in norms:
            if n in self._vocab_set or len(n) < 6 or not n.isalpha():
                out.append(n)
                changed.append(False)
                continue
            if n not in self._fuzzy_cache:
                hit = process.extractOne(n, self._vocab, scorer=fuzz.ratio, score_cutoff=88)
                self._fuzzy_cache[n] = hit[0] if hit else None
            rep = self._fuzzy_cache[n]
            out.append(rep or n)
            changed.append(rep is not None)
        return out, changed

    def _matches(self, text: str, toks: list[Token]) -> list[tuple[int, int, int, float]]:
        """(first token, end token, term id, factor) of every term occurrence."""
        if self._automaton is None:
            self._build_automaton()
        norms = [t.norm for t in toks]
        fuzzed = [False] * len(norms)
        if self.params["fuzzy"]:
            norms, fuzzed = self._fuzzy(norms)
        breaks = boundaries(text, toks)
        parts = []
        start_of: dict[int, int] = {}
        pos = 0
        for i, n in enumerate(norms):
            if breaks[i]:
                parts.append("|")  # no key has "|": nothing matches across a break
                pos += 2
            start_of[pos] = i
            parts.append(n)
            pos += len(n) + 1
        hay = " " + " ".join(parts) + " "
        out = []
        for end, (klen, ntok, vals) in self._automaton.iter(hay):
            i = start_of.get(end - klen + 1)
            if i is None:
                continue
            j = i + ntok
            factor = 0.9 if any(fuzzed[i:j]) else 1.0
            for tid, f in vals:
                out.append((i, j, tid, f * factor))
        return out

    def _case_ok(self, case_id: int, text: str, toks: list[Token], i: int, j: int) -> bool:
        pattern = self.cases[case_id].split(" ")
        if len(pattern) != j - i:
            return False
        for w, t in zip(pattern, toks[i:j]):
            if w != "*" and text[t.start:t.end] != w:
                return False
        return True

    def _chapter(self, code: str) -> str:
        return self.chapter_of.get(code[:3], code[:1])

    def mentions(self, note: Note, toks: list[Token] | None = None) -> dict[str, list[Mention]]:
        """Every code the note's terms point at, with each mention and its assertion status, negated
        and possible ones included (the reranker weighs them; :meth:`predict` drops them). ``toks``:
        the note already tokenised."""
        return self._candidates(note.text, tokenize(note.text) if toks is None else toks, keep_all=True)

    def _candidates(self, text: str, toks: list[Token], keep_all: bool = False) -> dict[str, list[Mention]]:
        """code -> mentions after the assertion and specificity rules. With ``keep_all`` (and assertion
        on) a negated, possible, family or historical mention also stays with the condition's own code,
        marked by its status, beside any family/personal history code it maps to."""
        p = self.params
        raw = self._matches(text, toks)
        if not raw:
            return {}
        # postings of each match, after the capitals check of abbreviations
        spans: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)  # (i, j) -> [(post, factor)]
        for i, j, tid, factor in raw:
            for post in range(int(self.term_ptr[tid]), int(self.term_ptr[tid + 1])):
                case = int(self.post_case[post])
                if case >= 0 and not self._case_ok(case, text, toks, i, j):
                    continue
                spans[(i, j)].append((post, factor))
        spans = {k: v for k, v in spans.items() if v}
        if p["nested"] != "keep" and len(spans) > 1:
            chapters = {k: {self._chapter(self.codes[self.post_code[post]]) for post, _ in v} for k, v in spans.items()}
            keys = sorted(spans, key=lambda k: (k[0], -(k[1] - k[0])))
            out: dict[tuple[int, int], list[tuple[int, float]]] = {}
            for k in keys:
                inside = [o for o in keys if o != k and o[0] <= k[0] and k[1] <= o[1]]
                if not inside:
                    out[k] = spans[k]
                    continue
                if p["nested"] == "drop":
                    continue
                outer = set().union(*(chapters[o] for o in inside))
                kept = [(post, f) for post, f in spans[k] if self._chapter(self.codes[self.post_code[post]]) not in outer]
                if kept:
                    out[k] = kept
            spans = out
        keys = list(spans)
        char_spans = [(toks[i].start, toks[j - 1].end) for i, j in keys]
        if p["assertion"]:
            from icdcoder.text.assertion import assertions

            status = assertions(text, char_spans)
        else:
            status = [None] * len(keys)
        cands: dict[str, list[Mention]] = defaultdict(list)
        for key, cs, st in zip(keys, char_spans, status):
            for post, factor in spans[key]:
                code = self.codes[self.post_code[post]]
                w = float(self.post_weight[post]) * factor
                value = "present" if st is None else st.value
                if value == "present":
                    cands[code].append(Mention(w, cs, post, True, value))
                    continue
                if value in ("negated", "possible"):
                    if keep_all:
                        cands[code].append(Mention(w, cs, post, True, value))
                    continue
                if code[:3] in ("Z80", "Z81", "Z82", "Z83", "Z84", "Z85", "Z86", "Z87"):
                    cands[code].append(Mention(w, cs, post, True, value))  # a history code's own term
                elif value == "family":
                    z = self.family_of.get(code)
                    if z:
                        cands[z].append(Mention(w * p["family_weight"], cs, post, False, value))
                    if keep_all:
                        cands[code].append(Mention(w, cs, post, True, value))
                else:  # historical
                    z = self.personal_of.get(code)
                    if z:
                        cands[z].append(Mention(w, cs, post, False, value))
                        if keep_all:
                            cands[code].append(Mention(w, cs, post, True, value))
                    else:
                        cands[code].append(Mention(w * p["historical_weight"], cs, post, True, value))
        found = set(cands)
        for code in list(cands):
            for anc in prefix_ancestors(code, found):
                cands.pop(anc, None)
        return cands

    # ------------------------------------------------------------------------------------ predict
    def _score(self, code: str, support: list[Mention]) -> float:
        miss = 1.0
        seen: dict[tuple[int, int], float] = {}
        for w, cs, *_ in support:  # one weight per mention: its best posting
            seen[cs] = max(seen.get(cs, 0.0), w)
        for w in seen.values():
            miss *= 1.0 - min(max(w, 0.0), 0.999)
        f = self.prior.get(code, 0)
        beta = self.params["prior_weight"]
        return (1.0 - miss) * ((1.0 - beta) + beta * f / (f + 1.0))

    def predict(self, notes: Sequence[Note]) -> list[Prediction]:
        if not self.terms:
            raise RuntimeError("MatcherCoder is not fitted")
        out = []
        for note in notes:
            cands = self._candidates(note.text, tokenize(note.text))
            scores = {c: self._score(c, s) for c, s in cands.items()}
            evidence = {}
            for c, s in cands.items():
                spans = sorted({m.span for m in s})[:5]
                evidence[c] = [Evidence(start=a, end=z, text=note.text[a:z]) for a, z in spans]
            out.append(Prediction.from_scores(note.id, scores, evidence, top_k=self.params["top_k"]))
        return out

    # ----------------------------------------------------------------------------------- explain
    def terms_of(self, code: str, kinds: Iterable[str] | None = None) -> list[str]:
        """The dictionary terms (normalised) that point at ``code``; only those of ``kinds`` when given."""
        if code not in self.codes:
            return []
        cid = self.codes.index(code)
        want = {KIND_ID[k] for k in kinds} if kinds is not None else None
        out = []
        for tid in range(len(self.terms)):
            for j in range(int(self.term_ptr[tid]), int(self.term_ptr[tid + 1])):
                if self.post_code[j] == cid and (want is None or int(self.post_kind[j]) in want):
                    out.append(self.terms[tid])
        return out

    # -------------------------------------------------------------------------------- persistence
    def _save_state(self, folder: Path) -> None:
        state = {"format": FORMAT, "codes": self.codes, "terms": self.terms, "cases": self.cases,
                 "family_of": self.family_of, "personal_of": self.personal_of, "chapter_of": self.chapter_of,
                 "prior": self.prior, "build": self.build_info}
        data = json.dumps(state, ensure_ascii=False, separators=(",", ":"))
        (folder / STATE_FILE).write_text(data, encoding="utf-8")
        np.savez_compressed(folder / POSTINGS_FILE, term_ptr=self.term_ptr, code=self.post_code, kind=self.post_kind,
                            weight=self.post_weight, case=self.post_case)

    def _load_state(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise ValueError(f"{folder / STATE_FILE}: unknown matcher format {state.get('format')!r}")
        self.codes, self.terms, self.cases = state["codes"], state["terms"], state["cases"]
        self.family_of, self.personal_of = state["family_of"], state["personal_of"]
        self.chapter_of, self.prior = state["chapter_of"], {k: int(v) for k, v in state["prior"].items()}
        self.build_info = state.get("build", {})
        with np.load(folder / POSTINGS_FILE, allow_pickle=False) as z:
            self.term_ptr, self.post_code, self.post_kind = z["term_ptr"], z["code"], z["kind"]
            self.post_weight, self.post_case = z["weight"].astype(np.float32), z["case"]
        self._build_automaton()

