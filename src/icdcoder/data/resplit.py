"""Re-split any prepared dataset with our own splits (patient-level stratified, or time-ordered).

Two passes over the files: the first reads only what a split needs (ids, patients, times, codes),
the second streams the notes into the new folder, so it works at MIMIC-IV scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from icdcoder.data.note import Note
from icdcoder.data.splits import Method, SplitRecord, split_records
from icdcoder.data.store import iter_notes, read_manifest, write_dataset


def _all_notes(src: Path, manifest: dict[str, Any]) -> Iterator[Note]:
    for info in manifest["splits"].values():
        yield from iter_notes(src / info["file"])


def resplit(src_dir: str | Path, out_dir: str | Path, *, method: Method, ratios: Sequence[float] = (0.8, 0.1, 0.1),
            seed: int = 13, fmt: str | None = None) -> dict[str, Any]:
    """Pool every split of ``src_dir`` and write them to ``out_dir`` split by ``method``; returns the manifest."""
    src = Path(src_dir)
    manifest = read_manifest(src)
    records = [SplitRecord(n.id, n.patient_id, n.admission_time, tuple(n.codes)) for n in _all_notes(src, manifest)]
    assignment = split_records(records, method, ratios, seed=seed)
    options = {"resplit_of": str(src), "method": method, "ratios": list(ratios), "seed": seed,
               "source_options": manifest.get("options", {})}
    items = ((assignment[n.id], n) for n in _all_notes(src, manifest))
    return write_dataset(items, out_dir, name=f"{manifest.get('name', src.name)}-{method}",
                         source=manifest.get("source", "unknown"), fmt=fmt or manifest.get("format", "jsonl"),
                         options=options)
