"""Our own train/val/test splits, for any dataset: patient-level stratified, or time-ordered.

Both work on lightweight :class:`SplitRecord` s (id, patient, admission time, codes), never on note
texts, so a loader can compute a split in a first pass over its metadata and stream the texts later.
Both are deterministic: the same records (in any order) and seed give the same assignment.

* :func:`stratified_split` groups notes by patient (a note without a patient is its own group), takes
  the union of each patient's codes as that group's label set, and assigns whole patients to splits
  with the iterative stratification of Sechidis et al. (2011) from the ``iterative-stratification``
  package, so label proportions match the ratios and no patient crosses splits. The algorithm costs
  about ``n_patients * n_labels`` per label, so only the ``max_labels`` most frequent codes (default
  300) are stratified on; rarer codes follow their patients.
* :func:`time_split` orders notes by admission time (ties by id): the oldest go to train, the newest
  to test, by the ratios. With ``by_patient=True`` a patient's notes all go to the split of their
  first admission (no leakage, ratios then approximate).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import numpy as np

from icdcoder.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
Method = Literal["stratified", "time"]


@dataclass(frozen=True)
class SplitRecord:
    """What a split needs to know about one note."""

    id: str
    patient_id: str | None = None
    admission_time: str | None = None  # ISO 8601; compared as strings, so keep one format
    codes: tuple[str, ...] = field(default_factory=tuple)


def _check_ratios(ratios: Sequence[float], names: Sequence[str]) -> np.ndarray:
    if len(ratios) != len(names):
        raise ValueError(f"{len(ratios)} ratios for {len(names)} split names {list(names)}")
    r = np.asarray(ratios, dtype=float)
    if np.any(r < 0) or r.sum() <= 0:
        raise ValueError(f"split ratios must be non-negative and not all zero, got {list(ratios)}")
    return r / r.sum()


def _counts(n: int, r: np.ndarray) -> list[int]:
    """Split ``n`` items into integer counts proportional to ``r`` (largest remainders)."""
    raw = r * n
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: n - int(out.sum())]:
        out[i] += 1
    return out.tolist()


def stratified_split(records: Iterable[SplitRecord], ratios: Sequence[float] = (0.8, 0.1, 0.1), *,
                     seed: int = 13, names: Sequence[str] = SPLIT_NAMES,
                     max_labels: int | None = 300) -> dict[str, str]:
    """Patient-level multi-label stratified split: ``{note id: split name}``."""
    from iterstrat.ml_stratifiers import IterativeStratification

    r = _check_ratios(ratios, names)
    groups: dict[str, list[str]] = {}
    labels: dict[str, set[str]] = {}
    for rec in records:
        key = f"p:{rec.patient_id}" if rec.patient_id not in (None, "") else f"n:{rec.id}"
        groups.setdefault(key, []).append(rec.id)
        labels.setdefault(key, set()).update(rec.codes)
    if not groups:
        return {}
    keys = sorted(groups)
    freq = Counter(c for k in keys for c in labels[k])
    vocab = sorted(freq, key=lambda c: (-freq[c], c))
    if max_labels is not None:
        vocab = vocab[:max_labels]
    col = {c: i for i, c in enumerate(vocab)}
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(keys))  # shuffled like MultilabelStratifiedShuffleSplit does
    y = np.zeros((len(keys), max(len(vocab), 1)), dtype=bool)
    for row, idx in enumerate(order):
        for c in labels[keys[idx]]:
            j = col.get(c)
            if j is not None:
                y[row, j] = True
    folds = IterativeStratification(labels=y, r=r.copy(), random_state=rng)
    out: dict[str, str] = {}
    for row, idx in enumerate(order):
        split = names[int(folds[row])]
        for nid in groups[keys[idx]]:
            out[nid] = split
    return out


def time_split(records: Iterable[SplitRecord], ratios: Sequence[float] = (0.8, 0.1, 0.1), *,
               names: Sequence[str] = SPLIT_NAMES, by_patient: bool = False) -> dict[str, str]:
    """Time-ordered split: oldest admissions to the first name, newest to the last."""
    r = _check_ratios(ratios, names)
    recs = list(records)
    missing = [x.id for x in recs if not x.admission_time]
    if missing:
        raise DataError(f"time split needs an admission time for every note; {len(missing)} have none "
                        f"(e.g. {missing[:3]})", field="admission_time")
    if by_patient:
        first: dict[str, tuple[str, str]] = {}
        members: dict[str, list[str]] = {}
        for x in recs:
            key = f"p:{x.patient_id}" if x.patient_id not in (None, "") else f"n:{x.id}"
            t = (x.admission_time, x.id)
            if key not in first or t < first[key]:
                first[key] = t
            members.setdefault(key, []).append(x.id)
        ordered_keys = sorted(first, key=lambda k: first[k])
        # assign patients in time order, cutting when the cumulative note count passes each boundary
        bounds = np.cumsum(_counts(len(recs), r))
        out: dict[str, str] = {}
        done, s = 0, 0
        for k in ordered_keys:
            while s < len(names) - 1 and done >= bounds[s]:
                s += 1
            for nid in members[k]:
                out[nid] = names[s]
            done += len(members[k])
        return out
    recs.sort(key=lambda x: (x.admission_time, x.id))
    out = {}
    i = 0
    for name, n in zip(names, _counts(len(recs), r)):
        for x in recs[i:i + n]:
            out[x.id] = name
        i += n
    return out


def split_records(records: Iterable[SplitRecord], method: Method, ratios: Sequence[float] = (0.8, 0.1, 0.1), *,
                  seed: int = 13, names: Sequence[str] = SPLIT_NAMES) -> dict[str, str]:
    """Dispatch on ``method`` (``stratified`` or ``time``)."""
    if method == "stratified":
        return stratified_split(records, ratios, seed=seed, names=names)
    if method == "time":
        return time_split(records, ratios, names=names)
    raise ValueError(f"unknown split method {method!r}; expected 'stratified' or 'time'")


def kfold_of(n: int, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each of ``n`` items: shuffled, as even as possible (cross-fitting and
    cross-validated thresholds share it)."""
    folds = np.arange(n) % k
    np.random.default_rng(seed).shuffle(folds)
    return folds
