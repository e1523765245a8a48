"""Assertion status of a mention: present, negated, possible (hypothetical), family history or historical.

The ConText idea (Harkema et al. 2009; NegEx before it): a trigger phrase modifies the mentions
after it ("no", "mother", "history of") or before it ("was ruled out") up to the end of its
sentence or a termination word ("but", "however", "which"). It runs here on negspacy's NegEx
component (negspacy 1.1, spaCy 3.8), once per category with its own trigger list, on a blank
English tokenizer - no model, no download. (medspaCy's ConText was the first choice; its release
for Python < 3.12 pins spaCy < 3.8 and so numpy < 2, which the project cannot take, and its
PyRuSH sentencizer logs every token of a note at DEBUG.) Sentences come from
:func:`icdcoder.text.sections.split_sentences`, so no sentencizer logs anything either; nothing in
this module logs or keeps note text.

Categories and what wins when several fire on one mention (first wins):

1. ``negated`` - "no", "denies", "without", "negative for", "no evidence of", "free of", "... was
   ruled out", "... was excluded"; ruled-out findings count as negated.
2. ``family`` - a relative or "family history" before the mention ("Mother had breast cancer"),
   "in his father" after it; or any mention in a family-history section (``find_sections``).
3. ``possible`` - uncertain or hypothetical: "possible", "probable", "suspected", "questionable",
   "cannot exclude", "concern for", "rule out", "differential", "risk of", "if", "... was suspected".
   ("compatible with" / "consistent with" state a diagnosis and are not triggers.)
4. ``historical`` - "history of", "h/o", "previous", "prior", "former", "status post", "... years ago",
   "... resolved" (a resolved condition is historical, not negated).
5. ``present`` - none of the above.

A trigger inside the mention itself does not count: "family history of breast cancer" as one
mention (the term of Z80.3) is present.
"""

from __future__ import annotations

import bisect
import re
import threading
from enum import Enum
from typing import Any, Sequence

import numpy as np

from icdcoder.text.sections import Section, find_sections, section_at, split_sentences

__all__ = ["Assertion", "TRIGGERS", "assertions"]


class Assertion(str, Enum):
    PRESENT = "present"
    NEGATED = "negated"
    POSSIBLE = "possible"
    FAMILY = "family"
    HISTORICAL = "historical"


_TERMINATION = [";", "although", "apart from", "aside from", "as there are", "but", "except", "however", "nevertheless",
                "still", "though", "which", "yet", "whereas", "while"]
_RELATIVES = ["mother", "father", "sister", "brother", "sibling", "siblings", "parent", "parents", "grandmother",
              "grandfather", "grandparent", "grandparents", "aunt", "uncle", "cousin", "niece", "nephew", "mom", "dad",
              "son", "daughter", "maternal", "paternal", "relative", "relatives", "twin"]

#: Category -> negspacy termset (pseudo triggers, preceding, following, termination).
TRIGGERS: dict[str, dict[str, list[str]]] = {
    "negated": {
        "pseudo_negations": ["no further", "not able to be", "not certain if", "not certain whether",
                             "not necessarily", "without any further", "without difficulty", "without further",
                             "might not", "not only", "no increase", "no significant change", "no change",
                             "no definite change", "not extend", "not cause", "gram negative", "not rule out",
                             "not ruled out", "not been ruled out", "not excluded", "not be excluded",
                             "no interval change", "no suspicious change", "cannot exclude", "can not exclude",
                             "cannot rule out", "can not rule out", "not drain"],
        "preceding_negations": ["absence of", "absent", "declined", "denied", "denies", "denying", "no sign of",
                                "no signs of", "not", "not demonstrate", "negative for", "no", "without", "doesn't",
                                "didn't", "wasn't", "weren't", "isn't", "aren't", "cannot", "can't", "never",
                                "patient was not", "without indication of", "without sign of", "without signs of",
                                "no complaints of", "no evidence of", "no history of", "no hx of", "no h/o",
                                "no findings of", "no suggestion of", "free of", "never developed", "never had",
                                "did not exhibit", "fails to reveal", "ruled out", "excluded", "nor", "neither",
                                "no longer"],
        "following_negations": ["was ruled out", "were ruled out", "has been ruled out", "have been ruled out",
                                "is ruled out", "are ruled out", "ruled out", "was excluded", "were excluded",
                                "has been excluded", "was discarded", "were discarded", "was negative",
                                "were negative", "is negative", "are negative", "is absent", "was absent",
                                "were absent", "declined", "unlikely", "was not", "were not", "wasn't", "weren't"],
        "termination": _TERMINATION,
    },
    "family": {
        "pseudo_negations": ["family history of present illness"],
        "preceding_negations": ["family history", "family history of", "family medical history", "family hx",
                                "fh", "fhx", "family member", "family members", "in the family", *_RELATIVES],
        "following_negations": [*(f"{pre} {rel}" for pre in ("in", "in his", "in her", "in their", "in a", "in the",
                                                             "in patient's") for rel in _RELATIVES),
                                "in the family", "in family", "runs in the family", "runs in family",
                                "in family members", "in a family member"],
        "termination": [*_TERMINATION, "patient", "the patient", "pt", "he", "she", "patient's"],
    },
    "possible": {
        "pseudo_negations": ["not possible", "possible to", "if needed", "if necessary", "as possible",
                             "possible that", "no risk", "risk factor", "risk factors"],
        "preceding_negations": ["possible", "possibly", "probable", "probably", "suspected", "suspect",
                                "suspicion of", "suspicion for", "suspicious for", "questionable", "question of",
                                "cannot exclude", "can not exclude", "cannot be excluded", "cannot rule out",
                                "can not rule out", "can't rule out", "could not exclude", "concern for",
                                "concerning for", "worrisome for", "rule out", "rule him out", "rule her out",
                                "r/o", "to exclude", "to rule out", "evaluate for", "evaluation for",
                                "workup for", "differential", "differential diagnosis", "differential includes",
                                "versus", "vs", "presumed", "presumptive", "may have", "might have", "could have",
                                "may be", "might be", "could be", "risk of", "at risk for", "at risk of",
                                "if", "in case of", "should", "prevention of", "prophylaxis for",
                                "prophylaxis of", "screening for", "doubt", "unclear"],
        "following_negations": ["was suspected", "is suspected", "were suspected", "suspected", "was considered",
                                "were considered", "is possible", "was possible", "is probable",
                                "cannot be excluded", "can not be excluded", "could not be excluded",
                                "not excluded", "not ruled out", "not been ruled out", "to be ruled out",
                                "to be excluded", "was questioned", "is questionable", "prophylaxis"],
        "termination": _TERMINATION,
    },
    "historical": {
        "pseudo_negations": ["history of present illness", "history of the present illness", "history and physical",
                             "history taking", "social history", "family history", "clinical history",
                             "history was taken", "prior to admission", "prior to", "previous day",
                             "the previous"],
        "preceding_negations": ["history of", "hx of", "h/o", "past history of", "past medical history of",
                                "prior history of", "remote history of", "personal history of", "previous",
                                "previously", "prior", "former", "status post", "s/p", "resolved", "healed",
                                "in remission"],
        "following_negations": ["in the past", "years ago", "year ago", "months ago", "in childhood",
                                "as a child", "previously", "in remission", "resolved", "healed",
                                "in his youth", "in her youth", "in youth"],
        "termination": _TERMINATION,
    },
}
_ORDER = (Assertion.NEGATED, Assertion.FAMILY, Assertion.POSSIBLE, Assertion.HISTORICAL)
_KEY = "icdcoder_mentions"
_lock = threading.Lock()
_nlp: Any = None


def _pipeline() -> Any:
    """A blank English tokenizer and one negspacy NegEx component per category (built once)."""
    global _nlp
    with _lock:
        if _nlp is None:
            import spacy
            import negspacy.negation  # noqa: F401  (registers the "negex" factory)

            nlp = spacy.blank("en")
            for kind in _ORDER:
                nlp.add_pipe("negex", name=f"context_{kind.value}",
                             config={"neg_termset": TRIGGERS[kind.value], "extension_name": f"icd_{kind.value}",
                                     "span_keys": [_KEY]})
            _nlp = nlp
    return _nlp


_trigger_res: dict[str, Any] = {}


def _trigger_re(kind: str) -> Any:
    """Every trigger phrase of ``kind`` (any position), case-insensitive, on word boundaries."""
    got = _trigger_res.get(kind)
    if got is None:
        t = TRIGGERS[kind]
        phrases = sorted({p for key in ("preceding_negations", "following_negations") for p in t[key]},
                         key=len, reverse=True)
        got = _trigger_res[kind] = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in phrases) + r")(?!\w)",
                                              re.IGNORECASE)
    return got


def _sentence_kinds(text: str, sentences: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[list[str]]:
    """Per mention: the categories with a trigger in its sentence (all of them outside any sentence),
    each sentence searched once."""
    starts = [s for s, _ in sentences]
    found: dict[int, list[str]] = {}
    out = []
    for offset, _ in spans:
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or offset >= sentences[i][1]:
            out.append([k.value for k in _ORDER])
            continue
        if i not in found:
            s, e = sentences[i]
            found[i] = [k.value for k in _ORDER if _trigger_re(k.value).search(text, s, e)]
        out.append(found[i])
    return out


def assertions(text: str, spans: Sequence[tuple[int, int]], *, sentences: Sequence[tuple[int, int]] | None = None,
               sections: Sequence[Section] | None = None) -> list[Assertion]:
    """The assertion of each mention ``text[start:end]`` (in the order given). ``sentences`` and
    ``sections`` default to :func:`split_sentences` / :func:`find_sections` of ``text``; pass them
    when they are already known."""
    if not spans:
        return []
    nlp = _pipeline()
    from spacy.attrs import SENT_START

    sentences = split_sentences(text) if sentences is None else sentences
    sections = find_sections(text) if sections is None else sections
    # NegEx scopes end at the sentence, so a mention whose sentence holds no trigger of any category
    # is present: only the others go through spaCy, and only the categories that can fire (the
    # regexes match a superset of what negspacy's phrase matcher finds).
    kinds_of = _sentence_kinds(text, sentences, spans)
    wanted = [i for i, k in enumerate(kinds_of) if k]
    mentions: list[Any] = [None] * len(spans)
    if wanted:
        doc = nlp.make_doc(text)
        starts = {s for s, _ in sentences}
        ends = {e for _, e in sentences}
        flags = np.full((len(doc), 1), -1, dtype=np.int32)  # SENT_START: 1 starts a sentence, -1 does not
        prev_end = True
        for tok in doc:  # a token starts a sentence where a sentence starts, or after one ends
            if tok.i == 0 or tok.idx in starts or prev_end:
                flags[tok.i, 0] = 1
            prev_end = (tok.idx + len(tok)) in ends
        doc.from_array([SENT_START], flags.astype(np.uint64))
        for i in wanted:
            mentions[i] = doc.char_span(spans[i][0], spans[i][1], alignment_mode="expand")
        doc.spans[_KEY] = [m for m in mentions if m is not None]
        active = {f"context_{k}" for i in wanted for k in kinds_of[i]}
        for name, proc in nlp.pipeline:
            if name in active:
                doc = proc(doc)
    out = []
    for (start, _), span in zip(spans, mentions):
        status = Assertion.PRESENT
        if span is not None:
            for kind in _ORDER:
                if span.has_extension(f"icd_{kind.value}") and span._.get(f"icd_{kind.value}"):
                    status = kind
                    break
        section = section_at(list(sections), start)
        if section is not None and section.kind == "family_history" and status is not Assertion.NEGATED:
            status = Assertion.FAMILY
        out.append(status)
    return out
