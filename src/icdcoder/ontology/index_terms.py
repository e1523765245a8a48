"""The ICD-10-CM Alphabetic Index (CMS ``icd10cm_index_YYYY.xml``), read into note-like phrases.

Optional: no package ships the Index, so it is read from a file the user fetched from CMS ("Code
Descriptions / Tables and Index" zip). The file looks like::

    <ICD10CM.index>
      <version>2026</version>
      <title>ICD-10-CM INDEX TO DISEASES and INJURIES</title>
      <letter>
        <title>P</title>
        <mainTerm>
          <title>Pneumonia<nemod>(acute) (double) (migratory)</nemod></title>
          <code>J18.9</code>
          <term level="1">
            <title>viral</title>
            <code>J12.9</code>
            <term level="2"><title>congenital</title><code>P23.0</code></term>
          </term>
          <term level="1"><title>lobar</title><see>Pneumonia, lobar</see></term>
        </mainTerm>
      </letter>
    </ICD10CM.index>

How a path of titles becomes a phrase (:func:`_path_phrase`): the main term is the head noun; a
subterm that opens with a connecting word ("with", "without", "in", "due to", "of", "from",
"following", "during", "complicating", ...) starts a clause after the head ("pneumonia due to
Streptococcus pneumoniae"); any other subterm is a modifier, written in front of the head
("Pneumonia" > "viral" -> "viral pneumonia"), or in front of the last clause's object once a clause
has started ("Pneumonia" > "due to" > "Streptococcus" > "group B" -> "pneumonia due to group B
Streptococcus"). Titles listing alternatives ("Diabetes, diabetic"; "myocardium, myocardial")
give one: the first for the main term, for a modifier the first that reads as an adjective
("myocardial"), else the first. ``<nemod>`` text (non-essential modifiers), other parenthetical
text, NOS and NEC are dropped; the main term's first word is lower-cased unless it is an acronym or
a possessive eponym ("Parkinson's").

Only ``<code>`` elements give codes; ``<see>``/``<seeAlso>`` cross-references, ``<subcat>``
and ``<manif>`` (the manifestation code written in brackets in the printed Index) give none, and
codes ending in "-" (more characters needed) or not valid ICD-10-CM are skipped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from icdcoder.codes import CodeFormatError, normalize_code
from icdcoder.errors import DataError

__all__ = ["load_index_terms"]

_ROOT_TAG = "ICD10CM.index"

#: Subterms opening with these start a clause after the head instead of modifying it.
_CONNECTORS = (
    "with", "without", "in", "due to", "of", "from", "following", "after", "during", "complicating",
    "complicated by", "associated with", "caused by", "resulting from", "secondary to", "by", "on",
    "at", "affecting", "involving", "as", "for", "to", "and", "or", "not", "except", "induced by",
)
_CONNECTOR_RE = re.compile(
    r"^(?:" + "|".join(re.escape(c) for c in sorted(_CONNECTORS, key=len, reverse=True)) + r")(?:\s|$)",
    re.I)
_ADJECTIVE_SUFFIXES = ("al", "ic", "ous", "ive", "ary", "ar", "ant", "ent", "ed", "ile", "oid")


def _title_text(title: ET.Element | None) -> str:
    """The title's own words: its text and the tails of its children, ``<nemod>`` text left out,
    parentheses, NOS and NEC dropped, whitespace collapsed."""
    if title is None:
        return ""
    parts = [title.text or ""]
    for child in title:
        if child.tag != "nemod":
            parts.append("".join(child.itertext()))
        parts.append(child.tail or "")
    text = " ".join(parts)
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", text)
    text = re.sub(r"[()\[\]]|\b(?:NOS|NEC)\b", " ", text)
    return re.sub(r"\s+", " ", text).strip(" ,;")


def _pick(title: str, *, head: bool) -> str:
    """One alternative of "A, B" titles: the first for a head, for a modifier the first adjective."""
    alternatives = [a.strip() for a in title.split(",") if a.strip()]
    if not alternatives:
        return ""
    if not head:
        for alt in alternatives:
            last = alt.split()[-1].lower()
            if len(last) > 4 and last.endswith(_ADJECTIVE_SUFFIXES):
                return alt
    return alternatives[0]


def _keep_case(word: str) -> bool:
    caps = sum(c.isupper() for c in word)
    return (caps >= 2 or (caps > 0 and any(c.isdigit() for c in word))
            or (len(word) == 1 and word.isupper()) or bool(re.fullmatch(r"[A-Z][a-z]+['\u2019]s", word)))


def _head_case(text: str) -> str:
    first, sep, rest = text.partition(" ")
    parts = re.split(r"([-/])", first)
    return "".join(p if p in "-/" or _keep_case(p) else p.lower() for p in parts) + sep + rest


def _path_phrase(titles: list[str]) -> str:
    """The note-order phrase for a path of (cleaned) titles, main term first (rule in the module
    docstring)."""
    if not titles or not titles[0]:
        return ""
    modifiers: list[str] = []                      # in front of the head, outermost first
    clauses: list[tuple[str, list[str]]] = []      # (connector, object words in order)
    for title in titles[1:]:
        if not title:
            continue
        m = _CONNECTOR_RE.match(title)
        if m:
            rest = title[m.end():].strip()
            clauses.append((m.group(0).strip(), [rest] if rest else []))
        elif clauses:
            clauses[-1][1].insert(0, _pick(title, head=False))
        else:
            modifiers.insert(0, _pick(title, head=False))
    words = modifiers + [_head_case(_pick(titles[0], head=True))]
    for connector, obj in clauses:
        words += [connector, *obj]
    return re.sub(r"\s+", " ", " ".join(words)).strip()


def _codes_of(elem: ET.Element) -> list[str]:
    out = []
    for child in elem:
        if child.tag != "code" or not child.text:
            continue
        raw = child.text.strip()
        if not raw or raw.endswith("-"):
            continue
        try:
            out.append(normalize_code(raw, "icd10cm"))
        except CodeFormatError:
            continue
    return out


def _walk(elem: ET.Element, titles: list[str], out: dict[str, list[str]], seen: set[tuple[str, str]]) -> None:
    titles = titles + [_title_text(elem.find("title"))]
    codes = _codes_of(elem)
    if codes:
        phrase = _path_phrase(titles)
        if phrase:
            for code in codes:
                if (code, phrase.lower()) not in seen:
                    seen.add((code, phrase.lower()))
                    out.setdefault(code, []).append(phrase)
    for child in elem:
        if child.tag == "term":
            _walk(child, titles, out, seen)


def load_index_terms(path: str | Path) -> dict[str, list[str]]:
    """canonical ICD-10-CM code -> index phrases (deduplicated, in file order).

    Reads with ``iterparse``: each ``<mainTerm>`` is turned into phrases when it closes and then
    cleared, so the ~20 MB CMS file never sits whole in memory. A file that is missing, not XML,
    or not an ``<ICD10CM.index>`` raises :class:`~icdcoder.errors.DataError` naming the path (and
    the line, for malformed XML).
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    depth = 0           # depth inside <mainTerm> elements
    root = None
    try:
        for event, elem in ET.iterparse(str(path), events=("start", "end")):
            if root is None:
                root = elem
                if elem.tag != _ROOT_TAG:
                    raise DataError(f"not an ICD-10-CM index: the root element is <{elem.tag}>, "
                                    f"expected <{_ROOT_TAG}>", path=path, line=1)
                continue
            if elem.tag == "mainTerm":
                if event == "start":
                    depth += 1
                    continue
                depth -= 1
                if depth == 0:
                    _walk(elem, [], out, seen)
                    elem.clear()
            elif event == "end" and elem.tag == "letter":
                elem.clear()
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        raise DataError(f"malformed ICD-10-CM index XML: {exc}", path=path, line=line) from None
    except OSError as exc:
        raise DataError(f"cannot read the ICD-10-CM index: {exc.strerror or exc}", path=path) from None
    if root is None:
        raise DataError("empty ICD-10-CM index file", path=path)
    return out
