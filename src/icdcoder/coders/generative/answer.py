"""The answer format of the generative coders: writing it, reading it back, and fitting notes into a budget.

A model answers with one block ``<code>E11.9, I10, I50.9</code>``. :func:`format_answer` writes the
targets for fine-tuning; :func:`parse_answer` reads whatever a model actually produced. Sampled output
(GRPO especially) is noisy, so the parser never raises, salvages what codes it can, and says what was
wrong in ``problems`` so that a format reward can punish it.

Parsing rules, in order:

* only the first 20,000 characters are read (``too_long`` when there were more);
* blank output gives ``empty_output``;
* the first ``<code>`` opens the block (tags case-insensitive, blanks inside the brackets allowed); the
  first ``</code>`` after it closes it, or the end of the text does (``unclosed``); another block after it
  is ignored (``multiple_blocks``); tags inside the block are dropped (``nested_tags``);
* without an opening tag the whole text is scanned for code-shaped tokens (``no_open_tag``); words are
  then not junk, since the text is prose;
* inside the block, items are split at newlines, commas and semicolons (not inside double quotes), list
  bullets and ``1.`` / ``2)`` numbers are skipped, and surrounding quotes, brackets, markdown stars and
  trailing periods are stripped. What follows a ``|`` in an item is the quoted evidence of the code
  before it (``I10 | "history of hypertension"``, kept in ``evidence``), unless it is made of
  code-shaped tokens only (``I10|E11.9`` lists two codes);
* a token with a digit and only letters, digits and dots is code-like: it is normalised
  (``i509`` -> ``I50.9``) and checked; one that fails either goes to ``invalid``. Any other word in the
  block is junk (``junk_tokens``);
* repeated codes are kept once (``duplicates``).

HTML-escaped tags (``&lt;code&gt;``) are not tags: such output falls back to the prose scan.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterable, Mapping, Sequence

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, normalize_code, parse_system

OPEN = "<code>"
CLOSE = "</code>"
MAX_CHARS = 20_000

# Problems that make an answer malformed; the others ("duplicates", "too_long") leave a usable block.
MALFORMED_PROBLEMS = frozenset({"empty_output", "no_open_tag", "unclosed", "multiple_blocks", "nested_tags",
                                "junk_tokens"})

_OPEN_RE = re.compile(r"<\s*code\s*>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"<\s*/\s*code\s*>", re.IGNORECASE)
_ANY_TAG_RE = re.compile(r"<\s*/?\s*code\s*>", re.IGNORECASE)

# Strict shapes: what counts as a code in prose and after a "|". Matched against the upper-cased token.
_SHAPES = {
    CodeSystem.ICD10CM: r"[A-TV-Z][0-9][0-9AB](?:\.?[0-9A-Z]{1,4})?",
    CodeSystem.ICD9CM: r"[0-9]{3}(?:\.?[0-9]{1,2})?|V[0-9]{2}(?:\.?[0-9]{1,2})?|E[0-9]{3}(?:\.?[0-9])?",
    CodeSystem.ICD9PCS: r"[0-9]{2}(?:\.?[0-9]{1,2})?",
    CodeSystem.ICD10PCS: r"(?=[A-Z]*[0-9])[0-9A-HJ-NP-Z]{3,7}",  # 3-6 characters: partial codes (CodiEsp)
}
_SHAPE_RE = {system: re.compile(pattern, re.ASCII) for system, pattern in _SHAPES.items()}
_SHAPE_RE[None] = re.compile("|".join(f"(?:{p})" for p in _SHAPES.values()), re.ASCII)

# Loose shape inside the block: a digit, only letters, digits and dots. Such a token was meant as a code,
# so when it fails it is reported as invalid rather than as junk.
_CODE_LIKE = re.compile(r"(?=[A-Z.]*[0-9])[A-Z0-9][A-Z0-9.]{1,11}", re.ASCII)
_PROSE_TOKEN = re.compile(r"[A-Za-z0-9.]+", re.ASCII)
_LIST_PREFIX = re.compile(r"^\s*(?:[-*•·‣▪●+]+|\(?[0-9]{1,2}[.)])\s+")
_LIST_MARKER = re.compile(r"[-*•·‣▪●+]+|[(\[]?[0-9]{1,2}[.)\]:]")
_STRIP = "\"'`“”‘’«»()[]{}<>*_.:!?-•·,;"
_QUOTES = frozenset('"“”')


@dataclass
class ParsedAnswer:
    """What a model's answer said: the usable codes, the rejected ones, and what was wrong with its form."""

    codes: list[str] = field(default_factory=list)  # valid, canonical, first appearance first
    invalid: list[str] = field(default_factory=list)  # canonical when it normalised, else as written
    malformed: bool = False
    problems: list[str] = field(default_factory=list)
    evidence: dict[str, list[str]] = field(default_factory=dict)  # valid code -> quotes written after "|"


def format_answer(codes: Iterable[str], system: str | CodeSystem | None = "icd10cm",
                  evidence: Mapping[str, str] | None = None) -> str:
    """The target answer for a code set: canonical, deduplicated and sorted so the target is unique.

    Raises CodeFormatError for a code that does not normalise: targets come from data, not from a model.
    ``system=None`` infers the system of each code from its shape. ``evidence`` (code -> text of the
    note) gives the evidence-grounded form ``<code>E11.9 | "type 2 diabetes"; I10 | "HTN"</code>``; a
    code without evidence is written bare.
    """
    if isinstance(codes, str):
        raise TypeError("format_answer takes a collection of codes, not one string")
    sys_ = parse_system(system) if system is not None else None
    canonical = {normalize_code(code, sys_ or infer_system(code)): code for code in codes}
    if evidence is None:
        return f"{OPEN}{', '.join(sorted(canonical))}{CLOSE}"
    items = []
    for canon in sorted(canonical):
        quote = evidence.get(canonical[canon], evidence.get(canon))
        quote = quote_text(quote) if quote else ""
        items.append(f'{canon} | "{quote}"' if quote else canon)
    return f"{OPEN}{'; '.join(items)}{CLOSE}"


def quote_text(text: str, max_chars: int = 80) -> str:
    """A note's evidence as it goes inside the answer's double quotes: one line, no double quotes,
    at most ``max_chars`` (cut at a word boundary)."""
    q = " ".join(text.replace('"', "'").split())
    if len(q) > max_chars:
        q = q[:max_chars].rsplit(" ", 1)[0] if " " in q[:max_chars] else q[:max_chars]
    return q


def parse_answer(
    text: str,
    *,
    system: str | CodeSystem | None = "icd10cm",
    valid: Callable[[str], bool] | Container[str] | None = None,
) -> ParsedAnswer:
    """Read a model's answer (see the module docstring for the rules); never raises on any text.

    ``valid`` decides which normalised codes are kept: a predicate on the canonical code, or a container
    of canonical codes (the label space). ``None`` asks the packaged ontology (``exists``), loaded only
    when the first code needs checking. ``system=None`` infers the system of each token from its shape.
    An unknown ``system`` name is a caller error and raises ValueError.
    """
    sys_ = parse_system(system) if system is not None else None
    is_valid = _validity(valid)
    text = _as_text(text)
    problems: list[str] = []
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS]
        problems.append("too_long")
    if not text.strip():
        problems.append("empty_output")
        return ParsedAnswer([], [], True, problems)

    opened = _OPEN_RE.search(text)
    if opened is None:
        problems.append("no_open_tag")
        tokens = [(t, None) for t in _scan_prose(_ANY_TAG_RE.sub(" ", text), sys_)]
    else:
        closed = _CLOSE_RE.search(text, opened.end())
        if closed is None:
            body = text[opened.end():]
            problems.append("unclosed")
        else:
            body = text[opened.end():closed.start()]
            if _OPEN_RE.search(text, closed.end()):
                problems.append("multiple_blocks")
        if _ANY_TAG_RE.search(body):
            problems.append("nested_tags")
            body = _ANY_TAG_RE.sub(" ", body)
        tokens, junk = _read_block(body, sys_)
        if junk:
            problems.append("junk_tokens")

    codes, invalid, repeated, evidence = _check(tokens, sys_, is_valid)
    if repeated:
        problems.append("duplicates")
    return ParsedAnswer(codes, invalid, any(p in MALFORMED_PROBLEMS for p in problems), problems, evidence)


def truncate_middle(
    text: str,
    offsets: Sequence[tuple[int, int]],
    budget: int,
    *,
    head_fraction: float = 0.5,
    marker: str = "\n[...]\n",
) -> str:
    """Fit ``text`` into ``budget`` tokens: keep the start and the end, cut the middle.

    A note opens with the history and closes with the discharge diagnoses, both rich in codes; the middle
    (daily progress, labs) is the cheapest to lose. ``offsets`` are the ``(start, end)`` character spans
    of the tokens of ``text`` (a tokenizer's offset mapping, without special tokens; empty spans are
    skipped). When there are at most ``budget`` tokens the text is returned unchanged. Otherwise the
    first ``head = ceil(budget * head_fraction)`` tokens and the last ``budget - head`` tokens are kept:
    the text up to the end of token ``head`` and the text from the start of the first tail token to the
    end, joined by ``marker``. The marker costs tokens of its own; leave room for it in ``budget``.
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1 token, got {budget}")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be within [0, 1], got {head_fraction}")
    if len(offsets) <= budget:
        return text
    head = math.ceil(budget * head_fraction)
    tail = budget - head
    head_end = max((end for start, end in offsets[:head] if end > start), default=0)
    tail_spans = offsets[len(offsets) - tail:] if tail else []
    tail_start = min((start for start, end in tail_spans if end > start), default=len(text))
    tail_start = max(tail_start, head_end)
    return text[:head_end] + marker + text[tail_start:]


# --- helpers ------------------------------------------------------------------------------------------
def _as_text(text: Any) -> str:
    """Whatever a back-end handed over, as a string ("" when it cannot be one)."""
    if isinstance(text, str):
        return text
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    try:
        return str(text)
    except Exception:  # a foreign object with a broken __str__ still must not stop a training step
        return ""


def _validity(valid: Callable[[str], bool] | Container[str] | None) -> Callable[[str, CodeSystem], bool]:
    """One check of (canonical code, its system) for the three ways of saying what is valid."""
    if valid is None:
        def in_ontology(code: str, system: CodeSystem) -> bool:
            from icdcoder.ontology import get_ontology  # lazy: parsing with a label space loads no ontology

            return get_ontology().exists(code, system)

        return in_ontology
    if isinstance(valid, str):
        raise TypeError("valid must be a predicate or a container of codes, not one string")
    if callable(valid):
        return lambda code, system: bool(valid(code))
    return lambda code, system: code in valid


def _clean(token: str) -> str:
    return token.strip().strip(_STRIP)


def _split_items(line: str) -> list[str]:
    """Split at commas and semicolons, except inside double quotes (evidence may contain commas)."""
    if sum(line.count(q) for q in _QUOTES) % 2:  # unbalanced quotes: they cannot protect anything
        return re.split(r"[,;]", line)
    items, start, quoted = [], 0, False
    for i, ch in enumerate(line):
        if ch in _QUOTES:
            quoted = not quoted
        elif ch in ",;" and not quoted:
            items.append(line[start:i])
            start = i + 1
    items.append(line[start:])
    return items


def _read_block(body: str, system: CodeSystem | None) -> tuple[list[tuple[str, str | None]], bool]:
    """Code-like tokens of the block in order, each with the evidence quoted after it (or None), and
    whether any other word was there."""
    shape = _SHAPE_RE[system]
    tokens: list[tuple[str, str | None]] = []
    junk = False
    for line in body.splitlines():
        line = _LIST_PREFIX.sub("", line, count=1)
        for item in _split_items(line):
            head, *after_bar = item.split("|")
            for raw in head.split():
                if _LIST_MARKER.fullmatch(raw):
                    continue
                token = _clean(raw)
                if not token:
                    continue
                if _CODE_LIKE.fullmatch(token.upper()):
                    tokens.append((token, None))
                else:
                    junk = True
            for k, part in enumerate(after_bar):
                words = [w for w in (_clean(raw) for raw in part.split()) if w]
                if not words or not all(shape.fullmatch(w.upper()) for w in words):
                    # evidence text: it and anything after it in this item quote the last code
                    quote = "|".join(after_bar[k:]).strip().strip('"“”').strip()
                    if quote and tokens and tokens[-1][1] is None:
                        tokens[-1] = (tokens[-1][0], quote)
                    break
                tokens.extend((w, None) for w in words)
    return tokens, junk


def _scan_prose(text: str, system: CodeSystem | None) -> list[str]:
    """Code-shaped tokens of free text, for output that never opened a block."""
    shape = _SHAPE_RE[system]
    found = (token.strip(".") for token in _PROSE_TOKEN.findall(text))
    return [token for token in found if token and shape.fullmatch(token.upper())]


def _normalise(token: str, system: CodeSystem | None) -> tuple[str, CodeSystem] | None:
    try:
        sys_ = system or infer_system(token)
        return normalize_code(token, sys_), sys_
    except (CodeFormatError, ValueError, IndexError):
        return None


def _check(
    tokens: list[tuple[str, str | None]], system: CodeSystem | None, is_valid: Callable[[str, CodeSystem], bool]
) -> tuple[list[str], list[str], bool, dict[str, list[str]]]:
    """Split tokens into valid codes and invalid ones, each kept once; say whether any repeated; collect
    the quotes of valid codes (a repeated code may bring another quote)."""
    codes: list[str] = []
    invalid: list[str] = []
    evidence: dict[str, list[str]] = {}
    seen: set[str] = set()
    repeated = False
    for token, quote in tokens:
        hit = _normalise(token, system)
        key = hit[0] if hit else token.upper()
        if key in seen:
            repeated = True
        else:
            seen.add(key)
            if hit is not None and is_valid(*hit):
                codes.append(hit[0])
            else:
                invalid.append(key if hit else token)
        if quote and key in codes and quote not in evidence.get(key, []):
            evidence.setdefault(key, []).append(quote)
    return codes, invalid, repeated, evidence
