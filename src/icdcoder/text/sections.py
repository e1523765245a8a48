"""Sentences and section headers of a note, as ``(start, end)`` offsets into the original text.

Sentences (:func:`split_sentences`): a line break always ends one (notes put list items, headers
and CodiEsp's sentences on their own lines); inside a line, ".", "!" or "?" followed by blanks and
an upper-case letter, a digit or an opening quote/bracket ends one, unless the word before the
period is a known abbreviation ("Dr.", "e.g.", "vs.") or a single letter ("T.A."); a number like
"40.2" never splits, having no blank after its period. A section header ("Family history:") is its
own sentence, so a trigger in a header never reaches into the text after it. Leading and trailing
blanks are not part of a sentence; empty lines give none.

Sections (:func:`find_sections`): a header is a line start with a known title followed by ":"
("Past medical history: ...", "FAMILY HISTORY:"), or a known title alone on its line. Titles are
matched case-insensitively against :data:`SECTION_KINDS` (title -> kind, e.g. "fh" and "family
history" -> ``family_history``). A section runs from its header to the next header - known, or any
short capitalised "Title:" at a line start, which gets kind ``other`` - or to the end of the text.
Notes without headers (CodiEsp) have no sections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SECTION_KINDS", "Section", "find_sections", "section_at", "split_sentences"]

#: Lower-case header title -> section kind.
SECTION_KINDS: dict[str, str] = {}
for _kind, _titles in {
    "family_history": "family history|family medical history|family hx|fh|fhx|family",
    "past_medical_history": "past medical history|medical history|pmh|pmhx|past history|past medical and surgical "
                            "history|history|medical background|background|personal history|antecedents",
    "past_surgical_history": "past surgical history|surgical history|psh|pshx",
    "social_history": "social history|sh|social hx|social",
    "history_present_illness": "history of present illness|hpi|present illness|history of the present illness",
    "chief_complaint": "chief complaint|cc|reason for admission|reason for visit|presenting complaint",
    "medications": "medications|medications on admission|admission medications|discharge medications|"
                   "home medications|current medications|meds",
    "allergies": "allergies|allergy",
    "diagnoses": "diagnosis|diagnoses|discharge diagnosis|discharge diagnoses|admission diagnosis|"
                 "final diagnosis|principal diagnosis|secondary diagnoses|problem list|problems",
    "assessment_plan": "assessment|plan|assessment and plan|impression|a/p|impression and plan",
    "hospital_course": "hospital course|brief hospital course|clinical course|course|evolution",
    "physical_exam": "physical exam|physical examination|exam|examination|pe",
    "results": "labs|laboratory|laboratory data|results|pertinent results|imaging|studies",
    "disposition": "disposition|discharge disposition|discharge condition|condition at discharge",
}.items():
    for _t in _titles.split("|"):
        SECTION_KINDS[_t] = _kind

_ABBREV = frozenset("dr mr mrs ms prof st vs etc approx fig no nr e.g i.e eg ie cf al resp inc dept".split())
_SENT_END = re.compile(r"[.!?]+[\"')\]]*(?=[ \t]+[\"'(\[]?[A-Z0-9\u00C0-\u00DD])")
_HEADER = re.compile(r"^[ \t]*(?:[-*#]+[ \t]*)?([A-Za-z][A-Za-z/&() -]{0,48}?)[ \t]*(:|$)", re.M)
_GENERIC_HEADER = re.compile(r"^[A-Z][A-Za-z/&() -]{1,40}$")
#: "Mother: breast cancer" inside a family history is a line of it, not a new section.
_NOT_HEADERS = frozenset("mother father sister brother son daughter parents parent sibling siblings grandmother "
                         "grandfather aunt uncle cousin wife husband spouse relative relatives maternal paternal "
                         "note notes comment comments".split())


@dataclass(frozen=True, slots=True)
class Section:
    """``text[start:end]`` is the section, header included; ``body_start`` is where its text begins."""

    kind: str
    title: str
    start: int
    body_start: int
    end: int


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _header(text: str, line_start: int, line_end: int) -> tuple[int, str, str] | None:
    """``(body start, kind, title)`` of a header line, or None. A known title gives its kind; any
    other short capitalised "Title:" without a list bullet gives kind ``other``."""
    m = _HEADER.match(text, line_start, line_end)
    if not m:
        return None
    raw = re.sub(r"\s+", " ", m.group(1)).strip()
    title = raw.lower()
    if title in SECTION_KINDS:
        return m.end(), SECTION_KINDS[title], raw
    bulleted = text[line_start:m.start(1)].strip() != ""
    if (m.group(2) == ":" and not bulleted and _GENERIC_HEADER.match(raw) and len(title.split()) <= 4
            and title not in _NOT_HEADERS):
        return m.end(), "other", raw
    return None


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence, in order (rules in the module docstring)."""
    out: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        line_start, line_end = pos, pos + len(line)
        pos = line_end
        cut = line_start
        head = _header(text, line_start, line_end)
        if head is not None and head[1] != "other" and text[head[0] - 1] == ":":
            body = head[0]
            s, e = _strip(text, line_start, body)
            if e > s:
                out.append((s, e))
            cut = body
        for m in _SENT_END.finditer(text, cut, line_end):
            before = text[cut:m.start()].rsplit(None, 1)
            word = before[-1].lower().rstrip(".") if before else ""
            if word in _ABBREV or (len(word) == 1 and word.isalpha()) or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
                continue
            s, e = _strip(text, cut, m.end())
            if e > s:
                out.append((s, e))
            cut = m.end()
        s, e = _strip(text, cut, line_end)
        if e > s:
            out.append((s, e))
    return out


def find_sections(text: str) -> list[Section]:
    """The note's sections in order (rules in the module docstring); [] when it has no headers."""
    heads: list[tuple[int, int, str, str]] = []  # (line start, body start, kind, title)
    pos = 0
    for line in text.splitlines(keepends=True):
        line_start, line_end = pos, pos + len(line)
        pos = line_end
        head = _header(text, line_start, line_end)
        if head is None:
            continue
        body, kind, title = head
        heads.append((line_start + len(line) - len(line.lstrip()), body, kind, title))
    out = []
    for i, (start, body, kind, title) in enumerate(heads):
        end = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        _, end = _strip(text, start, end)
        out.append(Section(kind, title, start, body, max(end, body)))
    return out


def section_at(sections: list[Section], offset: int) -> Section | None:
    """The section holding character ``offset`` (in its body or header), or None."""
    for s in sections:
        if s.start <= offset < s.end:
            return s
    return None
