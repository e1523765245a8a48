"""The user's own notes as JSONL or CSV: one note per line/row with an id, a text and its codes.

Codes may be a JSON list or one string split on ``codes_sep``; their system comes from a
``code_systems`` field (icdcoder's own format), from ``system=`` for the whole file, or is inferred
from each code's shape. Fields other than the known ones go to ``metadata``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, parse_system
from icdcoder.data.codecheck import CodeResolver
from pydantic import ValidationError

from icdcoder.data.note import Note, Span, check_split, first_error
from icdcoder.errors import DataError
from icdcoder.io import BOM, iter_jsonl, iter_jsonl_lines, open_input
from icdcoder.text.validate import check_note_text, is_blank

_KNOWN = {"code_systems", "spans", "admission_time", "patient_id", "metadata"}


def _utf8_lines(path: Path) -> Iterator[str]:
    """Decode line by line so a bad byte is reported on its own physical line; a BOM is dropped so
    that it never sticks to the first column's name."""
    with open_input(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path=path, line=lineno) from None
            yield line.removeprefix(BOM) if lineno == 1 else line


def _csv_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(_utf8_lines(path), dialect="excel-tab" if path.suffix.lower() == ".tsv" else "excel")
    try:
        for field in required:
            if field not in (reader.fieldnames or []):
                raise DataError(f"missing column (header has {reader.fieldnames})", path=path, line=1, field=field)
        for row in reader:
            if None in row:
                raise DataError(f"row has more fields than the header ({len(reader.fieldnames)})",
                                path=path, line=reader.line_num)
            missing = [k for k, v in row.items() if v is None]
            if missing:
                raise DataError("row has fewer fields than the header", path=path, line=reader.line_num,
                                field=missing[0])
            yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path=path, line=reader.line_num) from None


def iter_user_notes(path: str | Path, *, split: str | None = "test", split_field: str | None = None,
                    id_field: str = "id", text_field: str = "text", codes_field: str = "codes",
                    system: str | CodeSystem | None = None, codes_sep: str = ";",
                    resolver: CodeResolver | None = None,
                    lines: Iterable[bytes] | None = None) -> Iterator[tuple[str, Note]]:
    """Yield ``(split, Note)``: every note goes to ``split``, or to the value of its ``split_field``.

    ``lines``: read JSONL from these byte lines (e.g. stdin) instead of the file; ``path`` names them."""
    path = Path(path)
    resolver = resolver or CodeResolver()
    default_system = parse_system(system) if system is not None else None
    is_csv = path.suffix.lower() in (".csv", ".tsv")
    required = [id_field, text_field] + ([split_field] if split_field else [])
    if lines is not None:
        rows = iter_jsonl_lines(lines, path)
    else:
        rows = _csv_rows(path, required) if is_csv else iter_jsonl(path)
    seen = 0
    for lineno, rec in rows:
        seen += 1
        note = _note(rec, path, lineno, id_field, text_field, codes_field, default_system, codes_sep, resolver)
        if split_field:
            value = rec.get(split_field)
            if value in (None, ""):
                raise DataError("empty split", path=path, line=lineno, field=split_field)
            yield check_split(value, path=path, line=lineno, field=split_field), note
        else:
            yield check_split(split or "test"), note
    if seen == 0:
        raise DataError("no notes in file", path=path)


def parse_note_record(rec: dict[str, Any], path: str | Path, lineno: int, *, id_field: str = "id",
                      text_field: str = "text", codes_field: str = "codes", system: str | CodeSystem | None = None,
                      codes_sep: str = ";", resolver: CodeResolver | None = None) -> Note:
    """One record (a JSON object or a CSV row as a dict) as a Note; DataError names the file, line and
    field of what is wrong. Batch jobs call it row by row and turn the error into an error row."""
    return _note(rec, Path(path), lineno, id_field, text_field, codes_field,
                 parse_system(system) if system is not None else None, codes_sep, resolver or CodeResolver())


def _note(rec: dict[str, Any], path: Path, lineno: int, id_field: str, text_field: str, codes_field: str,
          default_system: CodeSystem | None, sep: str, resolver: CodeResolver) -> Note:
    def err(msg: str, field: str) -> DataError:
        return DataError(msg, path=path, line=lineno, field=field)

    note_id = rec.get(id_field)
    if note_id is None or (isinstance(note_id, str) and is_blank(note_id)):
        raise err("missing or empty id", id_field)
    if not _is_id(note_id):
        raise err(f"id must be a string or an integer, got {type(note_id).__name__}", id_field)
    text = rec.get(text_field)
    if not isinstance(text, str):
        raise err(f"text must be a string, got {type(text).__name__}", text_field)
    if is_blank(text):
        raise err("note text is empty", text_field)
    check_note_text(text, text_field, path=path, line=lineno)

    raw_codes = rec.get(codes_field) or []
    if isinstance(raw_codes, str):
        raw_codes = [c for c in (p.strip() for p in raw_codes.split(sep)) if c]
    if not isinstance(raw_codes, list) or not all(isinstance(c, str) for c in raw_codes):
        raise err("codes must be a list of strings or a separated string", codes_field)
    given = rec.get("code_systems") or {}
    if not isinstance(given, dict):
        raise err("code_systems must be an object {code: system}", "code_systems")
    pairs = []
    for raw in raw_codes:
        try:
            sys_ = parse_system(given[raw]) if raw in given else default_system or infer_system(raw)
        except (CodeFormatError, ValueError) as e:
            if resolver.strict:
                raise err(str(e), codes_field) from None
            resolver.count("code_without_system", raw)
            continue
        code = resolver.resolve(raw, sys_, path=path, line=lineno, field=codes_field)
        if code is not None:
            pairs.append((code, sys_))

    extra: dict[str, Any] = {}
    if not isinstance(rec.get("metadata", {}), dict):
        raise err("metadata must be an object", "metadata")
    extra["metadata"] = dict(rec.get("metadata") or {})
    extra["metadata"].update({k: v for k, v in rec.items()
                              if k not in _KNOWN | {id_field, text_field, codes_field} and v not in (None, "")})
    for key in ("admission_time", "patient_id"):
        if rec.get(key) not in (None, ""):
            if not _is_id(rec[key]):
                raise err(f"{key} must be a string or an integer, got {type(rec[key]).__name__}", key)
            extra[key] = str(rec[key])
    if not isinstance(rec.get("spans") or [], list):
        raise err("spans must be a list of {code, start, end}", "spans")
    try:
        spans = [Span.model_validate(s) for s in rec.get("spans") or []]
        return Note.build(str(note_id), text, pairs, spans=spans, **extra)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise err(msg, "spans" if "span" in msg or loc.startswith("spans") else codes_field) from None


def _is_id(value: Any) -> bool:
    """Ids are strings or integers; an object, list, bool or float would become a made-up string."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
