"""Input shards of a batch job: where each piece of the input starts and stops, and reading one back.

A batch job splits its input (JSONL, CSV/TSV or Parquet; one file or a folder of them) into shards of
at most ``rows_per_shard`` rows, in input order. A shard is a byte range of a JSONL or CSV file (cut
at record boundaries, so a quoted CSV field spanning lines stays whole) or a row range of a Parquet
file: any worker can read its shard without reading the rest. Reading never raises on one bad row: a
row that is not JSON, lacks an id or a text, or has a text icdcoder refuses comes back as an error
with its file, line and reason, and the other rows go on.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.note import Note
from icdcoder.data.userfile import parse_note_record
from icdcoder.errors import DataError, IcdcoderError
from icdcoder.io import BOM

KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one input file: bytes for JSONL and CSV, rows for Parquet.
    ``first_line`` is the physical line (JSONL, CSV) or row number (Parquet, from 1) where it starts."""

    index: int
    path: str
    kind: str
    start: int
    stop: int
    first_line: int
    rows: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShardRow:
    """One input row: a note, or the reason it is not one (``note`` is None)."""

    source: str
    line: int
    note: Note | None = None
    id: str | None = None
    error: str | None = None


def input_files(source: str | Path) -> list[Path]:
    """A file, or every JSONL/CSV/TSV/Parquet file of a folder (sorted by name, hidden files skipped)."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in KINDS:
            raise IcdcoderError(f"{path}: a batch input is .jsonl, .csv, .tsv or .parquet")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in KINDS
                       and not p.name.startswith("."))
        if not files:
            raise IcdcoderError(f"{path}: no .jsonl, .csv, .tsv or .parquet files in the folder")
        return files
    raise IcdcoderError(f"{path}: no such file or folder")


def plan_shards(source: str | Path, rows_per_shard: int) -> list[Shard]:
    """The shards of every input file, in input order."""
    if rows_per_shard < 1:
        raise IcdcoderError("rows_per_shard must be at least 1")
    shards: list[Shard] = []
    for path in input_files(source):
        kind = KINDS[path.suffix.lower()]
        planner = {"jsonl": _plan_jsonl, "csv": _plan_csv, "parquet": _plan_parquet}[kind]
        for start, stop, first_line, rows in planner(path, rows_per_shard):
            shards.append(Shard(len(shards), str(path), kind, start, stop, first_line, rows))
    return shards


def _plan_jsonl(path: Path, n: int) -> Iterator[tuple[int, int, int, int]]:
    """Byte ranges of ``n`` non-blank lines each."""
    start = pos = 0
    first_line, rows = 1, 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if rows == n and raw.strip():
                yield start, pos, first_line, rows
                start, first_line, rows = pos, lineno, 0
            pos += len(raw)
            if raw.strip():
                rows += 1
    if rows:
        yield start, pos, first_line, rows


class _CountingLines:
    """Feeds a csv reader decoded lines while counting the bytes and lines it has taken: the csv module
    pulls exactly the lines of one record, so after each record the position is a record boundary."""

    def __init__(self, fh, path: Path):
        self.fh, self.path, self.pos, self.lines = fh, path, 0, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.fh.readline()
        if not raw:
            raise StopIteration
        self.pos += len(raw)
        self.lines += 1
        text = raw.decode("utf-8", errors="replace")
        return text.removeprefix(BOM) if self.lines == 1 else text


def _dialect(path: Path) -> str:
    return "excel-tab" if path.suffix.lower() == ".tsv" else "excel"


def _plan_csv(path: Path, n: int) -> Iterator[tuple[int, int, int, int]]:
    """Byte ranges of ``n`` records each, after the header. A malformed file (an unclosed quote) is an
    error of the whole file: its record boundaries cannot be known."""
    csv.field_size_limit(sys.maxsize)
    with open(path, "rb") as fh:
        lines = _CountingLines(fh, path)
        reader = csv.reader(lines, dialect=_dialect(path))
        try:
            if next(reader, None) is None:
                return
            start, first_line, rows = lines.pos, lines.lines + 1, 0
            for _ in reader:
                rows += 1
                if rows == n:
                    yield start, lines.pos, first_line, rows
                    start, first_line, rows = lines.pos, lines.lines + 1, 0
        except csv.Error as e:
            raise DataError(f"malformed CSV ({e})", path=path, line=lines.lines) from None
    if rows:
        yield start, lines.pos, first_line, rows


def _plan_parquet(path: Path, n: int) -> Iterator[tuple[int, int, int, int]]:
    import pyarrow.parquet as pq

    total = pq.ParquetFile(path).metadata.num_rows
    for start in range(0, total, n):
        stop = min(total, start + n)
        yield start, stop, start + 1, stop - start


def read_shard(shard: Shard, *, id_field: str = "id", text_field: str = "text") -> Iterator[ShardRow]:
    """Every row of the shard as a note or an error row; never raises on a bad row. Only the id and the
    text are read: coding needs nothing else, and gold codes or metadata in any shape must not turn a
    codable note into an error row."""
    path = Path(shard.path)
    reader = {"jsonl": _records_jsonl, "csv": _records_csv, "parquet": _records_parquet}[shard.kind]
    resolver = CodeResolver(strict=False)
    for line, rec, problem in reader(shard, path):
        row_id = _row_id(rec, id_field)
        if problem is None:
            try:
                note = parse_note_record({id_field: rec.get(id_field), text_field: rec.get(text_field)}, path, line,
                                         id_field=id_field, text_field=text_field, resolver=resolver)
                yield ShardRow(shard.path, line, note=note, id=note.id)
                continue
            except DataError as e:
                problem = e.message + (f" (field {e.field})" if e.field else "")
        yield ShardRow(shard.path, line, id=row_id, error=problem)


def _row_id(rec: Any, id_field: str) -> str | None:
    value = rec.get(id_field) if isinstance(rec, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _records_jsonl(shard: Shard, path: Path) -> Iterator[tuple[int, Any, str | None]]:
    with open(path, "rb") as fh:
        fh.seek(shard.start)
        data = fh.read(shard.stop - shard.start)
    for lineno, raw in enumerate(data.split(b"\n"), start=shard.first_line):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            if lineno == 1:
                text = text.removeprefix(BOM)
            rec = json.loads(text)
        except UnicodeDecodeError as e:
            yield lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start})"
            continue
        except (ValueError, RecursionError) as e:
            yield lineno, None, f"not valid JSON ({str(e).splitlines()[0][:200]})"
            continue
        if not isinstance(rec, dict):
            yield lineno, None, f"a line must be a JSON object, got {type(rec).__name__}"
            continue
        yield lineno, rec, None


def _records_csv(shard: Shard, path: Path) -> Iterator[tuple[int, Any, str | None]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, "rb") as fh:
        header = next(csv.reader(_CountingLines(fh, path), dialect=_dialect(path)))
        fh.seek(shard.start)
        data = fh.read(shard.stop - shard.start)
    # undecodable bytes become lone surrogates, which the note check refuses with this row's line
    lines = io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline="")
    reader = csv.reader(lines, dialect=_dialect(path))
    line = shard.first_line
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # unreachable after planning, unless the file changed under the job
            yield line, None, f"malformed CSV ({e})"
            return
        first, line = line, shard.first_line + reader.line_num
        if len(values) != len(header):
            yield first, None, f"row has {len(values)} fields, the header {len(header)}"
            continue
        yield first, dict(zip(header, values)), None


def _records_parquet(shard: Shard, path: Path) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    groups, offset = [], 0
    for g in range(pf.metadata.num_row_groups):
        rows = pf.metadata.row_group(g).num_rows
        if offset < shard.stop and offset + rows > shard.start:
            groups.append((g, offset))
        offset += rows
    if not groups:
        return
    table = pf.read_row_groups([g for g, _ in groups])
    table = table.slice(shard.start - groups[0][1], shard.stop - shard.start)
    for i, rec in enumerate(table.to_pylist()):
        yield shard.start + i + 1, rec, None
