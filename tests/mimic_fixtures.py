"""Tiny invented MIMIC-III / MIMIC-IV folders in the exact PhysioNet column layout (no real MIMIC text).

Admissions are plain dicts::

    {"hadm": 100001, "subject": 1, "admittime": "2150-01-01 10:00:00",
     "notes": [("Report", "2150-01-05", "text ..."), ("Addendum", "2150-01-06", "more")],
     "dx": ["4280", "4019"], "px": ["3893"]}

MIMIC-IV admissions use ``"dx": [("I509", 10), ("4280", 9)]`` (code, icd_version) and notes are just
texts (joined by note_seq). Notes are written so that MIMIC-III addenda come *before* their reports
and far from them (all addenda first, in reverse order, then reports, then noise rows), and code rows
in reverse SEQ_NUM order, so the loader has to reorder both.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any, Sequence

NOTE3_COLS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
              "DESCRIPTION", "CGID", "ISERROR", "TEXT"]
CODE3_COLS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]
ADM3_COLS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME"]
NOTE4_COLS = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
CODE4_COLS = ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]
ADM4_COLS = ["subject_id", "hadm_id", "admittime", "dischtime"]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]], *, gz: bool = False) -> Path:
    """PhysioNet style: strings quoted (TEXT spans lines), numbers bare, empty = nothing."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def report(hadm: int) -> str:
    return (f"Admission Date:  [**2150-1-1**]\nDischarge Date:   [**2150-1-9**]\n\n"
            f"Service: MEDICINE\n\nHISTORY: Invented patient {hadm} with 2 episodes of dyspnea, "
            f"\"quoted\" words, a comma, and 3 pills.\n")


def mimic3_admissions() -> list[dict]:
    """Four hand-checkable admissions (see tests/test_mimic.py for the expected output)."""
    return [
        {"hadm": 100001, "subject": 1, "admittime": "2150-01-01 10:00:00",
         "notes": [("Report", "2150-01-09", "REPORT ONE\nline two"),
                   ("Addendum", "2150-01-12", "ADDENDUM B"),
                   ("Addendum", "2150-01-10", "ADDENDUM A")],
         "dx": ["4019", "4280"], "px": ["3893"]},
        {"hadm": 100002, "subject": 2, "admittime": "2151-03-01 08:00:00",
         "notes": [("Report", "2151-03-04", "REPORT TWO: fall from car, E-code")],
         "dx": ["E8120", "V4581"], "px": ["9604"]},
        {"hadm": 100003, "subject": 2, "admittime": "2152-05-01 08:00:00",
         "notes": [("Report", "2152-05-03", "REPORT THREE has no codes")], "dx": [], "px": []},
        {"hadm": 100004, "subject": 3, "admittime": "2149-07-01 08:00:00",
         "notes": [("Report", "2149-07-02", "REPORT FOUR")], "dx": ["25000", "5849"], "px": []},
    ]


def write_mimic3(root: Path, adms: list[dict] | None = None, *, gz: bool = False, noise: bool = True,
                 admissions_table: bool = True) -> Path:
    adms = mimic3_admissions() if adms is None else adms
    root.mkdir(parents=True, exist_ok=True)
    rows, row_id = [], 0

    def add(a, desc, date, text, *, category="Discharge summary", iserror=None):
        nonlocal row_id
        row_id += 1
        rows.append([row_id, a["subject"], a["hadm"], date, None, None, category, desc, None, iserror, text])

    addenda = [(a, n) for a in adms for n in a["notes"] if n[0] != "Report"]
    for a, (desc, date, text) in reversed(addenda):
        add(a, desc, date, text)
    for a in adms:
        for desc, date, text in a["notes"]:
            if desc == "Report":
                add(a, desc, date, text)
    if noise and adms:
        a = adms[0]
        add(a, "Report", "2150-01-09", "ERRONEOUS SUMMARY", iserror=1)
        add(a, "Nursing Progress Note", "2150-01-03", "NURSING NOTE", category="Nursing/other")
        rows.append([row_id + 1, a["subject"], None, "2150-01-03", None, None, "Discharge summary", "Report",
                     None, None, "SUMMARY WITHOUT HADM_ID"])
    write_csv(root / "NOTEEVENTS.csv", NOTE3_COLS, rows, gz=gz)
    for table, key in (("DIAGNOSES_ICD", "dx"), ("PROCEDURES_ICD", "px")):
        crow = []
        for a in adms:
            for seq, code in reversed(list(enumerate(a[key], start=1))):
                crow.append([len(crow) + 1, a["subject"], a["hadm"], seq, code])
        crow.append([len(crow) + 1, 99, 999999, 1, "4019"])  # admission without notes
        write_csv(root / f"{table}.csv", CODE3_COLS, crow, gz=gz)
    if admissions_table:
        write_csv(root / "ADMISSIONS.csv", ADM3_COLS,
                  [[i, a["subject"], a["hadm"], a.get("admittime"), None] for i, a in enumerate(adms, 1)], gz=gz)
    return root


def mimic4_admissions() -> list[dict]:
    return [
        {"hadm": 20000001, "subject": 10, "admittime": "2180-01-01 10:00:00",
         "notes": ["DISCHARGE ONE\nName: ___ Unit No: ___\n"],
         "dx": [("I509", 10), ("E119", 10), ("4280", 9)], "px": [("0DTJ4ZZ", 10)]},
        {"hadm": 20000002, "subject": 10, "admittime": "2181-01-01 10:00:00",
         "notes": ["DISCHARGE TWO (ICD-9 era)"], "dx": [("4280", 9), ("E8120", 9)], "px": [("3893", 9)]},
        {"hadm": 20000003, "subject": 11, "admittime": "2179-01-01 10:00:00",
         "notes": ["DISCHARGE THREE part 1", "DISCHARGE THREE part 2"], "dx": [("I509", 10)], "px": []},
        {"hadm": 20000004, "subject": 12, "admittime": "2182-01-01 10:00:00",
         "notes": ["DISCHARGE FOUR"], "dx": [], "px": []},
    ]


def write_mimic4(root: Path, adms: list[dict] | None = None, *, gz: bool = False,
                 admissions_table: bool = True) -> Path:
    adms = mimic4_admissions() if adms is None else adms
    rows = []
    for a in adms:
        for seq, text in reversed(list(enumerate(a["notes"], start=1))):
            rows.append([f"{a['subject']}-DS-{seq}", a["subject"], a["hadm"], "DS", seq,
                         "2180-01-05 00:00:00", None, text])
    write_csv(root / "note" / "discharge.csv", NOTE4_COLS, rows, gz=gz)
    for table, key in (("diagnoses_icd", "dx"), ("procedures_icd", "px")):
        crow = []
        for a in adms:
            for seq, (code, ver) in reversed(list(enumerate(a[key], start=1))):
                crow.append([a["subject"], a["hadm"], seq, code, ver])
        write_csv(root / "hosp" / f"{table}.csv", CODE4_COLS, crow, gz=gz)
    if admissions_table:
        write_csv(root / "hosp" / "admissions.csv", ADM4_COLS,
                  [[a["subject"], a["hadm"], a.get("admittime"), None] for a in adms], gz=gz)
    return root


def split_ids(feather: Path, per_split: int = 4) -> dict[str, list[int]]:
    """The first ``per_split`` hadm ids of each split of a real (IDs-only) split file."""
    import pyarrow.feather as f

    t = f.read_table(feather)
    out: dict[str, list[int]] = {}
    for i, s in zip(t.column("_id").to_pylist(), t.column("split").to_pylist()):
        lst = out.setdefault(s, [])
        if len(lst) < per_split:
            lst.append(int(i))
    return out


def write_mimic4_patients(root: Path, rows: Sequence[tuple[int, int, str]], *, gz: bool = False) -> Path:
    """``hosp/patients``: (subject_id, anchor_year, anchor_year_group)."""
    return write_csv(root / "hosp" / "patients.csv", ["subject_id", "gender", "anchor_age", "anchor_year",
                                                       "anchor_year_group", "dod"],
                     [[s, "F", 60, y, g, None] for s, y, g in rows], gz=gz)
