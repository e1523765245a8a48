"""Prepared datasets on disk: one file per split (JSONL or Parquet) plus ``manifest.json``.

Writing streams (a note at a time), so a 200k-note MIMIC-IV preparation never holds the corpus in
memory, and the whole folder appears atomically when the loader finishes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import ValidationError

from icdcoder import __version__
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.note import Dataset, Note, canonical_split, check_split, first_error, split_order
from icdcoder.errors import DataError
from icdcoder.io import atomic_dir, file_sha256, iter_jsonl, write_json

Format = Literal["jsonl", "parquet"]
MANIFEST = "manifest.json"
_PARQUET_BATCH = 2000


def note_from_record(obj: dict[str, Any], *, path: str | Path | None = None, line: int | None = None) -> Note:
    """Validate one record into a Note; the error names file, line and the first bad field."""
    try:
        return Note.model_validate(obj)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(msg, path=path, line=line, field=loc or None) from None


class _ParquetSink:
    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.schema = pa.schema([
            ("id", pa.string()), ("text", pa.large_string()), ("codes", pa.list_(pa.string())),
            ("code_systems", pa.string()), ("spans", pa.string()), ("admission_time", pa.string()),
            ("patient_id", pa.string()), ("metadata", pa.string()),
        ])
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows: list[dict[str, Any]] = []

    def write(self, note: Note) -> None:
        rec = note.to_record()
        self.rows.append({
            "id": rec["id"], "text": rec["text"], "codes": rec["codes"],
            "code_systems": json.dumps(rec["code_systems"]), "spans": json.dumps(rec.get("spans", [])),
            "admission_time": rec.get("admission_time"), "patient_id": rec.get("patient_id"),
            "metadata": json.dumps(rec.get("metadata", {}), ensure_ascii=False),
        })
        if len(self.rows) >= _PARQUET_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(self._pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


class _JsonlSink:
    def __init__(self, path: Path):
        self.fh = open(path, "w", encoding="utf-8")

    def write(self, note: Note) -> None:
        self.fh.write(json.dumps(note.to_record(), ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.fh.close()


class DatasetWriter:
    """Context manager that streams notes into split files and writes the manifest on success.

    >>> with DatasetWriter("out", name="demo", source="synth") as w:   # doctest: +SKIP
    ...     w.add("train", note)
    """

    def __init__(self, out_dir: str | Path, *, name: str, source: str, fmt: Format = "jsonl",
                 options: dict[str, Any] | None = None, resolver: CodeResolver | None = None):
        if fmt not in ("jsonl", "parquet"):
            raise ValueError(f"format must be jsonl or parquet, not {fmt!r}")
        self.out_dir = Path(out_dir)
        self.name, self.source, self.fmt = name, source, fmt
        self.options = options or {}
        self.resolver = resolver  # its counted code problems go into the manifest
        self.warnings: Counter = Counter()
        self.notes_per_split: Counter = Counter()
        self.code_freq: dict[str, Counter] = {}
        self.code_systems: dict[str, str] = {}
        self._sinks: dict[str, Any] = {}
        self._seen_ids: dict[str, str] = {}
        self._ctx = None
        self._stage: Path | None = None

    def __enter__(self) -> "DatasetWriter":
        self._ctx = atomic_dir(self.out_dir, marker=MANIFEST)
        self._stage = self._ctx.__enter__()
        return self

    def add(self, split: str, note: Note) -> None:
        split = check_split(split)  # it names a file: nothing may lead out of the folder
        if note.id in self._seen_ids:
            raise DataError(f"duplicate note id {note.id!r} (in split {self._seen_ids[note.id]!r} and {split!r})")
        self._seen_ids[note.id] = split
        sink = self._sinks.get(split)
        if sink is None:
            path = self._stage / f"{split}.{self.fmt}"
            sink = self._sinks[split] = _ParquetSink(path) if self.fmt == "parquet" else _JsonlSink(path)
            self.code_freq[split] = Counter()
        sink.write(note)
        self.notes_per_split[split] += 1
        self.code_freq[split].update(note.codes)
        for c, s in note.code_systems.items():
            self.code_systems.setdefault(c, s.value)

    def warn(self, kind: str, n: int = 1) -> None:
        """Count a non-fatal problem (unknown code, dropped note ...) to report in the manifest."""
        self.warnings[kind] += n

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            for sink in self._sinks.values():
                sink.close()
            if exc_type is None:
                if not self._sinks:
                    raise DataError("no notes were produced; nothing to write", path=self.out_dir)
                self.manifest = self._manifest()
                write_json(self._stage / MANIFEST, self.manifest)
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._ctx.__exit__(exc_type, exc, tb)
        return False

    def _manifest(self) -> dict[str, Any]:
        splits = {}
        h = hashlib.sha256()
        for split in sorted(self._sinks, key=split_order):
            fname = f"{split}.{self.fmt}"
            digest = file_sha256(self._stage / fname)
            h.update(f"{fname}:{digest}\n".encode())
            freq = self.code_freq[split]
            splits[split] = {"file": fname, "n_notes": self.notes_per_split[split], "n_labels": sum(freq.values()),
                             "n_codes": len(freq), "sha256": digest}
        total = Counter()
        for freq in self.code_freq.values():
            total.update(freq)
        return {
            "name": self.name, "source": self.source, "format": self.fmt, "options": self.options,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "icdcoder_version": __version__, "content_hash": h.hexdigest(),
            "splits": splits, "n_codes": len(total),
            "code_systems": dict(sorted(Counter(self.code_systems.values()).items())),
            "warnings": self._warnings(),
            "code_frequencies": {s: dict(self.code_freq[s].most_common()) for s in sorted(self.code_freq, key=split_order)},
            "code_system_of": dict(sorted(self.code_systems.items())),
        }


    def _warnings(self) -> dict[str, dict[str, Any]]:
        out = {k: {"count": n} for k, n in self.warnings.items()}
        if self.resolver is not None:
            out.update(self.resolver.report())
        return dict(sorted(out.items()))


def write_dataset(items: Iterable[tuple[str, Note]], out_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """Stream ``(split, note)`` pairs into a prepared folder; returns the manifest."""
    with DatasetWriter(out_dir, **kw) as w:
        for split, note in items:
            w.add(split, note)
    return w.manifest


def iter_notes(path: str | Path) -> Iterator[Note]:
    """Read notes one at a time from a ``.jsonl`` or ``.parquet`` file."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.exists():
            raise DataError("file not found", path=path)
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
            for rec in batch.to_pylist():
                row += 1
                for key in ("code_systems", "spans", "metadata"):
                    rec[key] = json.loads(rec[key]) if rec.get(key) else None
                rec = {k: v for k, v in rec.items() if v is not None}
                yield note_from_record(rec, path=path, line=row)
    else:
        for lineno, obj in iter_jsonl(path):
            yield note_from_record(obj, path=path, line=lineno)


_SPLIT_FILE = re.compile(r"[a-z0-9_-]{1,64}\.(?:jsonl|parquet)")


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder; its split files must be plain names inside the folder."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"no {MANIFEST} here; prepare the data with `icdcoder data prepare` first", path=data_dir)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path=path, line=e.lineno) from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"not a manifest icdcoder wrote ({type(e).__name__})", path=path) from None
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict):
        raise DataError("no 'splits' object", path=path, field="splits")
    for split, info in splits.items():
        check_split(split, path=path, field="splits")
        file = info.get("file") if isinstance(info, dict) else None
        if not isinstance(file, str) or not _SPLIT_FILE.fullmatch(file):
            raise DataError(f"split {split!r} names no plain file in this folder (e.g. {split}.jsonl)",
                            path=path, field=f"splits.{split}.file")
    return manifest


def split_file(data_dir: str | Path, split: str) -> Path:
    """The file holding one split of a prepared folder."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    split = canonical_split(split)
    if split not in manifest["splits"]:
        raise DataError(f"no split {split!r} (has {sorted(manifest['splits'])})", path=data_dir / MANIFEST)
    return data_dir / manifest["splits"][split]["file"]


def load_dataset(data_dir: str | Path, splits: Iterable[str] | None = None) -> Dataset:
    """Load a prepared folder (or its chosen splits) into memory."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    wanted = [canonical_split(s) for s in splits] if splits is not None else list(manifest["splits"])
    out: dict[str, list[Note]] = {}
    for split in wanted:
        if split not in manifest["splits"]:
            raise DataError(f"no split {split!r} (has {sorted(manifest['splits'])})", path=data_dir / MANIFEST)
        out[split] = list(iter_notes(data_dir / manifest["splits"][split]["file"]))
    return Dataset(splits=out, name=manifest.get("name", data_dir.name), manifest=manifest)
