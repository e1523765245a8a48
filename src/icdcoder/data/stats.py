"""Statistics of a prepared dataset, computed from its files (not trusted from the manifest)."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from icdcoder.data.store import iter_notes, read_manifest

# Buckets of training frequency used across icdcoder (evaluation reports use the same edges).
BUCKETS = (("unseen", 0, 0), ("1-10", 1, 10), ("11-100", 11, 100), (">100", 101, None))


def bucket_of(train_count: int) -> str:
    for name, lo, hi in BUCKETS:
        if train_count >= lo and (hi is None or train_count <= hi):
            return name
    raise ValueError(train_count)


def dataset_stats(data_dir: str | Path, top: int = 10) -> dict[str, Any]:
    """Per split: notes, labels, distinct codes, labels per note, text length, span counts; overall
    code-frequency buckets (by training frequency) and codes that never occur in train."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    per_split: dict[str, Any] = {}
    freq: dict[str, Counter] = {}
    for split, info in manifest["splits"].items():
        n_labels, lengths, n_spans, c = [], [], 0, Counter()
        for note in iter_notes(data_dir / info["file"]):
            n_labels.append(len(note.codes))
            lengths.append(len(note.text))
            n_spans += len(note.spans)
            c.update(note.codes)
        freq[split] = c
        per_split[split] = {
            "notes": len(lengths), "labels": sum(n_labels), "codes": len(c),
            "labels_per_note": round(statistics.fmean(n_labels), 2) if n_labels else 0.0,
            "chars_mean": round(statistics.fmean(lengths)) if lengths else 0,
            "chars_max": max(lengths, default=0), "spans": n_spans,
        }
    train = freq.get("train", Counter())
    buckets: dict[str, Any] = {}
    for split, c in freq.items():
        b = Counter()
        for code, n in c.items():
            b[bucket_of(train.get(code, 0))] += n
        buckets[split] = {name: b.get(name, 0) for name, _, _ in BUCKETS}
    all_codes = set().union(*freq.values()) if freq else set()
    return {
        "name": manifest.get("name"), "source": manifest.get("source"), "format": manifest.get("format"),
        "content_hash": manifest.get("content_hash"), "splits": per_split,
        "labels_by_train_frequency": buckets,
        "codes_total": len(all_codes), "codes_not_in_train": len(all_codes - set(train)),
        "top_codes": train.most_common(top) if train else [],
        "warnings": manifest.get("warnings", {}),
    }
