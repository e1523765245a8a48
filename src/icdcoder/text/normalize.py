"""Normalisation that never loses its way back to the original characters.

One view of a note, with offsets into the original text:

* :func:`tokenize` - word tokens (letters and digits; internal apostrophes kept), each with its
  original ``start``/``end`` and a normalised form (:func:`fold_token`): lower case, accents
  stripped, British spellings of clinical words folded to US ones, simple plural folding
  ("neoplasms" -> "neoplasm", "arteries" -> "artery", "vertebrae" -> "vertebra"), possessive "'s"
  dropped ("Crohn's" -> "crohn"), roman "ii"/"iii" -> "2"/"3" ("type II" -> "type 2"). Articles
  ("the", "a", "an") are skipped by default, so "cancer of the breast" and "cancer of breast" are one
  token sequence. Punctuation and hyphens separate tokens ("non-ST" -> "non", "st").

The folding is the same for note text and for dictionary terms (:func:`term_tokens`), which is all
a matcher needs: "diabetes" folds to "diabete" in both, so they still meet.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ARTICLES", "Token", "fold_token", "term_tokens", "tokenize"]

#: Skipped by :func:`tokenize` and :func:`term_tokens` unless told otherwise.
ARTICLES = frozenset({"the", "a", "an"})

_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

#: Whole-token British -> US spellings (after lower-casing and accent stripping).
_UK_WORDS = {"tumour": "tumor", "tumours": "tumors", "behaviour": "behavior", "haemorrhage": "hemorrhage",
             "diarrhoea": "diarrhea", "gonorrhoea": "gonorrhea", "apnoea": "apnea", "dyspnoea": "dyspnea",
             "oedema": "edema", "oesophagus": "esophagus", "foetus": "fetus", "foetal": "fetal",
             "anaesthesia": "anesthesia", "fibre": "fiber", "centre": "center", "litre": "liter"}
#: Substrings folded inside a token: "ischaemia", "leukaemia", "anaemia", "haematuria", "paediatric".
_UK_PARTS = (("aem", "em"), ("haem", "hem"), ("paed", "ped"), ("oesophag", "esophag"), ("oestr", "estr"),
             ("oedem", "edem"), ("orthopaed", "orthoped"), ("faec", "fec"), ("caec", "cec"), ("aetiol", "etiol"))
_ROMAN = {"ii": "2", "iii": "3"}
#: Plurals no suffix rule gets right.
_IRREGULAR = {"metastases": "metastasis", "diagnoses": "diagnosis", "prostheses": "prosthesis",
              "anastomoses": "anastomosis", "stenoses": "stenosis", "thromboses": "thrombosis",
              "psychoses": "psychosis", "neuroses": "neurosis", "bronchi": "bronchus", "calculi": "calculus",
              "emboli": "embolus", "thrombi": "thrombus", "foci": "focus", "nuclei": "nucleus", "fungi": "fungus",
              "bacilli": "bacillus", "feet": "foot", "teeth": "tooth", "women": "woman", "children": "child",
              "indices": "index", "appendices": "appendix", "cervices": "cervix", "apices": "apex"}
#: Plural "s" is kept after these endings (status, diagnosis, mellitus, illness, nervous).
_KEEP_S = ("ss", "us", "is", "ous")


@dataclass(frozen=True, slots=True)
class Token:
    """One word of the original text: ``text[start:end]``, normalised to ``norm``."""

    norm: str
    start: int
    end: int


def _strip_accents(s: str) -> str:
    if s.isascii():
        return s
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


@lru_cache(maxsize=1 << 17)
def fold_token(raw: str) -> str:
    """The normalised form of one token (see the module docstring); "" when nothing is left."""
    s = _strip_accents(raw.lower())
    if "'" in s or "\u2019" in s:
        s = re.sub(r"['\u2019]s$", "", s).replace("'", "").replace("\u2019", "")
    if s in _UK_WORDS:
        s = _UK_WORDS[s]
    elif not s.isdigit():
        for old, new in _UK_PARTS:
            if old in s:
                s = s.replace(old, new)
    if s in _ROMAN:
        return _ROMAN[s]
    if s in _IRREGULAR:
        return _IRREGULAR[s]
    if len(s) > 3 and s.isalpha():
        if s.endswith("ies") and len(s) > 4:
            s = s[:-3] + "y"
        elif s.endswith(("sses", "xes", "shes")) or (s.endswith("ches") and not s.endswith("aches")):
            s = s[:-2]
        elif s.endswith("s") and not s.endswith(_KEEP_S):
            s = s[:-1]
        elif s.endswith("ae"):
            s = s[:-1]
    return s


def tokenize(text: str, skip: frozenset[str] = ARTICLES) -> list[Token]:
    """Word tokens of ``text`` with original offsets; tokens whose normal form is in ``skip`` are left out."""
    out = []
    for m in _TOKEN.finditer(text):
        norm = fold_token(m.group())
        if norm and norm not in skip:
            out.append(Token(norm, m.start(), m.end()))
    return out


def term_tokens(term: str, skip: frozenset[str] = ARTICLES) -> tuple[str, ...]:
    """The normalised token sequence of a dictionary term, as :func:`tokenize` reads note text."""
    return tuple(t.norm for t in tokenize(term, skip))
