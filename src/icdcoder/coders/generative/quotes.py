"""Find a generative coder's quoted evidence in the note: the quote as character offsets into the text.

A model that answers ``<code>I10 | "history of hypertension"</code>`` is asked to copy its evidence, but
models paraphrase, change case, re-flow line breaks and make typos, so a plain ``str.find`` loses much
of it. :func:`locate_quote` tries, in order:

1. the cleaned quote literally (``kind="exact"``);
2. the quote up to case and whitespace: any run of blanks in the quote matches any run of blanks in
   the note, newlines included (``kind="exact"``, offsets into the original note);
3. a fuzzy match (``rapidfuzz.fuzz.partial_ratio_alignment`` of the lower-cased quote against the
   lower-cased note, at least ``min_score``), whose region is snapped to whole words, loses the lines
   at its ends that share no word with the quote, and is checked for a plausible length
   (``kind="fuzzy"``, with its score). Quotes over :data:`MAX_FUZZY_CHARS` characters are not tried.

Exact comes first so that a true copy of the quote is never replaced by a fuzzy neighbour that happens
to score as well. Nothing here raises on any string input.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

from rapidfuzz import fuzz

__all__ = ["MAX_FUZZY_CHARS", "QuoteMatch", "clean_quote", "locate_all", "locate_quote"]

# What surrounds a quote and is not part of it: blanks, quote marks of every kind, backticks.
_WRAPPERS = " \t\r\n\f\v\u00a0\"'`\u201c\u201d\u201e\u201f\u2018\u2019\u201a\u201b\u00ab\u00bb"
_TRAILING = ".,;:\u2026"  # sentence punctuation a model adds after a quote
# Longer quotes are only matched exactly: fuzzy alignment costs in proportion to quote x note length,
# and evidence that long is not a quote of a finding anyway.
MAX_FUZZY_CHARS = 500


@dataclass(frozen=True)
class QuoteMatch:
    """``text[start:end]`` is the evidence that was located for a quote."""

    start: int
    end: int
    kind: str     # "exact" (literal, or equal up to case and whitespace) or "fuzzy"
    score: float  # 100.0 for exact; the rapidfuzz similarity (0-100) for fuzzy


def clean_quote(quote: str) -> str:
    """The quote without what wraps it (blanks, straight and curly quote marks, backticks, trailing
    ``.``, ``,``, ``;``, ``:``), inner runs of whitespace collapsed to one space."""
    if not isinstance(quote, str):
        return ""
    q = quote
    while True:
        stripped = q.strip(_WRAPPERS).rstrip(_TRAILING)
        if stripped == q:
            break
        q = stripped
    return " ".join(q.split())


def locate_quote(text: str, quote: str, *, min_score: float = 85.0, min_chars: int = 3) -> QuoteMatch | None:
    """Where ``quote`` is in ``text`` (see the module docstring for the rules), or None.

    None when the cleaned quote has fewer than ``min_chars`` non-blank characters, or when no rule finds
    it. A fuzzy match is rejected when its snapped span is empty, or shorter than half or longer than
    twice the cleaned quote.
    """
    return _Note(text).locate(quote, min_score=min_score, min_chars=min_chars)


def locate_all(text: str, quotes: Sequence[str], **kw: Any) -> list[QuoteMatch | None]:
    """:func:`locate_quote` for each quote (same keywords), the note prepared once."""
    note = _Note(text)
    return [note.locate(q, **kw) for q in quotes]


class _Note:
    """A note's text, with its fuzzy-matching form (lower case, blanks as spaces) made on first use."""

    def __init__(self, text: str) -> None:
        self.text = text if isinstance(text, str) else ""
        self._folded: str | None = None

    @property
    def folded(self) -> str:
        if self._folded is None:
            self._folded = _fold(self.text)
        return self._folded

    def locate(self, quote: str, *, min_score: float = 85.0, min_chars: int = 3) -> QuoteMatch | None:
        q = clean_quote(quote)
        if len(q.replace(" ", "")) < max(min_chars, 1) or not self.text:
            return None
        text = self.text
        i = text.find(q)
        if i >= 0:
            return QuoteMatch(i, i + len(q), "exact", 100.0)
        m = _loose_pattern(q).search(text)
        if m is not None:
            return QuoteMatch(m.start(), m.end(), "exact", 100.0)
        return self._fuzzy(q, min_score)

    def _fuzzy(self, q: str, min_score: float) -> QuoteMatch | None:
        text = self.text
        if len(q) > MAX_FUZZY_CHARS or len(text) * 2 < len(q):  # (whole note < half the quote)
            return None
        al = fuzz.partial_ratio_alignment(_fold(q), self.folded, score_cutoff=min_score)
        if al is None or al.score < min_score or al.dest_end <= al.dest_start:
            return None
        start, end = _snap(text, al.dest_start, al.dest_end, q)
        start, end = _trim_lines(text, start, end, q, min_score)
        if end <= start or not (len(q) / 2 <= end - start <= 2 * len(q)):
            return None
        return QuoteMatch(start, end, "fuzzy", float(al.score))


def _fold(s: str) -> str:
    """Lower case and every blank a space, keeping the length (offsets stay valid)."""
    low = s.lower()
    if len(low) != len(s):  # a few characters lower to two (İ): leave those as they are
        low = "".join(c.lower() if len(c.lower()) == 1 else c for c in s)
    return "".join(" " if c.isspace() else c for c in low)


def _loose_pattern(q: str) -> re.Pattern[str]:
    """Matches ``q`` up to case, with any run of whitespace for each of its spaces."""
    return re.compile(r"\s+".join(re.escape(w) for w in q.split(" ")), re.IGNORECASE)


def _is_word(c: str) -> bool:
    """Letters and digits, and the combining marks that accent them."""
    return c.isalnum() or unicodedata.category(c).startswith("M")


def _word_around(text: str, i: int) -> tuple[int, int] | None:
    """``(word start, word end)`` when position ``i`` falls strictly inside a word, else None."""
    n = len(text)
    if not (0 < i < n and _is_word(text[i - 1]) and _is_word(text[i])):
        return None
    ws, we = i, i
    while ws > 0 and _is_word(text[ws - 1]):
        ws -= 1
    while we < n and _is_word(text[we]):
        we += 1
    return ws, we


def _snap(text: str, start: int, end: int, q: str) -> tuple[int, int]:
    """Widen or narrow ``[start, end)`` to whole words: a word cut by an end of the span is taken whole
    when at least half of it is inside, else left out. Then :func:`_strip_edges`."""
    n = len(text)
    start, end = max(0, min(start, n)), max(0, min(end, n))
    word = _word_around(text, start)
    if word is not None:
        ws, we = word
        start = ws if (min(we, end) - start) * 2 >= we - ws else we
    word = _word_around(text, end)
    if word is not None:
        ws, we = word
        end = we if (end - max(ws, start)) * 2 >= we - ws else ws
    return _strip_edges(text, start, end, q)


def _strip_edges(text: str, start: int, end: int, q: str) -> tuple[int, int]:
    """Drop blanks and punctuation at both ends of ``[start, end)``; punctuation is kept where the quote
    itself begins (or ends) with that character."""
    first, last = q[:1], q[-1:]
    while start < end and not _is_word(text[start]) and (text[start].isspace() or text[start] != first):
        start += 1
    while end > start and not _is_word(text[end - 1]) and (text[end - 1].isspace() or text[end - 1] != last):
        end -= 1
    return start, end


_NEWLINE = re.compile(r"[\n\r\v\f\u2028\u2029]")
_WORD = re.compile(r"[^\W_]+")


def _trim_lines(text: str, start: int, end: int, q: str, min_score: float) -> tuple[int, int]:
    """Leave out the lines at either end of the span that share no word with the quote: the aligned
    window is as long as the quote and may run over a line break into the next or previous line."""
    span = text[start:end]
    if _NEWLINE.search(span) is None:
        return start, end
    quote_words = set(_WORD.findall(_fold(q)))

    def shares_a_word(line: tuple[int, int]) -> bool:
        for w in _WORD.findall(_fold(span[line[0]:line[1]])):
            if w in quote_words or any(fuzz.ratio(w, qw, score_cutoff=min_score) for qw in quote_words):
                return True
        return False

    lines, pos = [], 0
    for m in _NEWLINE.finditer(span):
        lines.append((pos, m.start()))
        pos = m.end()
    lines.append((pos, len(span)))
    lo, hi = 0, len(lines) - 1
    while hi > lo and not shares_a_word(lines[hi]):
        hi -= 1
    while lo < hi and not shares_a_word(lines[lo]):
        lo += 1
    if (lo, hi) == (0, len(lines) - 1):
        return start, end
    return _strip_edges(text, start + lines[lo][0], start + lines[hi][1], q)
