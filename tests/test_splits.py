"""Own splits: patient-level iterative stratification and time-ordered splits."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from icdcoder.data.splits import SplitRecord, split_records, stratified_split, time_split
from icdcoder.errors import DataError


def synth(n_patients: int = 120, seed: int = 0) -> list[SplitRecord]:
    rnd = random.Random(seed)
    codes = [f"C{i}" for i in range(12)]
    recs = []
    k = 0
    for p in range(n_patients):
        for _ in range(rnd.randint(1, 3)):
            k += 1
            cs = {codes[0]} if rnd.random() < 0.5 else set()
            cs |= set(rnd.sample(codes[1:], rnd.randint(1, 3)))
            recs.append(SplitRecord(id=f"n{k}", patient_id=f"p{p}",
                                    admission_time=f"21{rnd.randint(10, 99)}-01-{rnd.randint(1, 28):02d}T00:00:00",
                                    codes=tuple(sorted(cs))))
    return recs


def test_stratified_no_patient_leakage_and_ratios():
    recs = synth()
    out = stratified_split(recs, (0.8, 0.1, 0.1), seed=13)
    assert set(out) == {r.id for r in recs}
    per_patient = defaultdict(set)
    for r in recs:
        per_patient[r.patient_id].add(out[r.id])
    assert all(len(s) == 1 for s in per_patient.values())  # no patient crosses splits
    n_pat = Counter(next(iter(s)) for s in per_patient.values())
    assert n_pat["train"] == pytest.approx(96, abs=4) and n_pat["val"] == pytest.approx(12, abs=3)
    # stratification: the common code C0 is in every split in about the ratio
    c0 = Counter(out[r.id] for r in recs if "C0" in r.codes)
    assert all(c0[s] > 0 for s in ("train", "val", "test"))
    assert c0["train"] / sum(c0.values()) == pytest.approx(0.8, abs=0.08)


def test_stratified_deterministic():
    recs = synth()
    a = stratified_split(recs, seed=13)
    b = stratified_split(list(reversed(recs)), seed=13)  # input order does not matter
    assert a == b
    c = stratified_split(recs, seed=14)
    assert a != c


def test_stratified_hand_checked():
    # two splits of equal size: the two patients with the rare code R must go to different splits
    recs = [SplitRecord("a", "p1", codes=("R",)), SplitRecord("b", "p1", codes=("X",)),
            SplitRecord("c", "p2", codes=("R",)), SplitRecord("d", "p3"), SplitRecord("e", None, codes=("X",))]
    out = stratified_split(recs, (0.5, 0.5), names=("train", "test"), seed=1)
    assert out["a"] == out["b"]  # same patient
    assert out["a"] != out["c"]  # the two R patients are spread over both splits
    assert set(out) == {"a", "b", "c", "d", "e"}
    assert stratified_split([], seed=1) == {}


def test_time_split_ordered():
    recs = [SplitRecord(f"n{i}", f"p{i}", admission_time=f"2150-01-{d:02d}T00:00:00")
            for i, d in enumerate([5, 1, 9, 3, 7, 2, 8, 4, 6, 10])]
    out = time_split(recs, (0.6, 0.2, 0.2))
    by_day = {r.admission_time[8:10]: out[r.id] for r in recs}
    assert [by_day[f"{d:02d}"] for d in range(1, 11)] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    t = {s: [r.admission_time for r in recs if out[r.id] == s] for s in ("train", "val", "test")}
    assert max(t["train"]) < min(t["val"]) and max(t["val"]) < min(t["test"])
    assert split_records(recs, "time", (0.6, 0.2, 0.2)) == out


def test_time_split_by_patient():
    recs = [SplitRecord("a", "p1", "2150-01-01"), SplitRecord("b", "p1", "2160-01-01"),
            SplitRecord("c", "p2", "2155-01-01"), SplitRecord("d", "p3", "2158-01-01")]
    out = time_split(recs, (0.5, 0.25, 0.25), by_patient=True)
    assert out == {"a": "train", "b": "train", "c": "val", "d": "test"}


def test_time_split_needs_times():
    with pytest.raises(DataError, match="admission time"):
        time_split([SplitRecord("a", "p1", None)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="ratios"):
        stratified_split(synth(3), (0.5, 0.5))
    with pytest.raises(ValueError, match="method"):
        split_records(synth(3), "random")
