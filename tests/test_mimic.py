"""MIMIC-III / MIMIC-IV loaders on tiny invented fixtures in the PhysioNet layout (tests/mimic_fixtures.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pytest

from icdcoder.codes import CodeSystem
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.mimic import (PRESETS, TOP_50_MULLENBACH_CODES, MimicStats, clean_text, iter_mimic,
                                 prepare_mimic, read_split_file)
from icdcoder.data.store import load_dataset
from icdcoder.errors import DataError
from tests.mimic_fixtures import (NOTE3_COLS, mimic3_admissions, split_ids, write_csv, write_mimic3, write_mimic4,
                            write_mimic4_patients)


def _ontology_ready() -> bool:
    try:
        from icdcoder.ontology import get_ontology  # noqa: F401
        return True
    except Exception:
        return False


def res(strict: bool = False) -> CodeResolver:
    return CodeResolver(strict=strict, check_ontology=False)


def run(root, stats=None, **kw):
    kw.setdefault("resolver", res())
    return {n.id: (s, n) for s, n in iter_mimic(root, stats=stats, **kw)}


# ------------------------------------------------------------------------------------------- MIMIC-III


@pytest.mark.parametrize("gz", [False, True])
def test_mimic3_basic(tmp_path, gz):
    root = write_mimic3(tmp_path / "m3", gz=gz)
    assert (root / ("NOTEEVENTS.csv.gz" if gz else "NOTEEVENTS.csv")).exists()
    st = MimicStats()
    out = run(root, st, version=3, clean_text=False)
    assert sorted(out) == ["100001", "100002", "100004"]  # 100003 has no codes
    s, n = out["100001"]
    assert s == "all"
    # report first, then addenda by CHARTDATE although the file has them before the report, in reverse
    assert n.text == "REPORT ONE\nline two\n\nADDENDUM A\n\nADDENDUM B"
    assert "ERRONEOUS" not in n.text and "NURSING" not in n.text
    assert n.codes == ["401.9", "428.0", "38.93"]
    assert n.code_systems == {"401.9": CodeSystem.ICD9CM, "428.0": CodeSystem.ICD9CM, "38.93": CodeSystem.ICD9PCS}
    assert n.patient_id == "1" and n.admission_time == "2150-01-01T10:00:00"
    assert n.metadata["hadm_id"] == 100001 and n.metadata["n_parts"] == 3
    n2 = out["100002"][1]
    assert n2.codes == ["E812.0", "V45.81", "96.04"]
    assert out["100004"][1].codes == ["250.00", "584.9"]
    assert st.notes_dropped == {"iserror_rows": 1, "rows_without_hadm_id": 1, "without_codes": 1}
    assert st.notes_written == {"all": 3}
    assert st.admissions == 4 and st.parts_selected == 6
    assert st.max_pending == 1  # only 100001's parts waited in memory


def test_mimic3_clean_text_and_preset(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    out = run(root, preset="mimiciii_full")  # presets clean the text like Edin et al.
    assert out["100001"][1].text == "report one line two addendum a addendum b"
    assert out["100002"][1].text == "report two fall from car e code"
    assert clean_text("Pt [**2150-1-1**] had 2 x-rays, BP 120/80 and 3rd dose.") == \
        "pt had x rays bp and 3rd dose"


def test_clean_text_matches_edin_regexes():
    import random
    import re

    def edin(t):  # the regexes of Edin et al.'s TextPreprocessor, in their order
        t = re.sub("[^A-Za-z0-9]+", " ", t.lower())
        t = re.sub(r"(\s\d+)+\s", " ", t)
        return re.sub(r"\s+", " ", t).strip()

    rnd = random.Random(3)
    alphabet = ["a", "B", "7", "42", " ", "\n", "-", "/", "[**", "**]", ".", "é", "\t", "x1"]
    cases = ["", " ", "12", " 12 ", "a 1 2", "1 2 a", " 1 2 a", "a 1 2 ", "a 12 b 34 c", "3rd 4 th", "__9__"]
    cases += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30))) for _ in range(3000)]
    for c in cases:
        assert clean_text(c) == edin(c), c


def test_mimic3_without_admissions_table(tmp_path):
    root = write_mimic3(tmp_path / "m3", admissions_table=False)
    out = run(root, version=3)
    assert out["100001"][1].admission_time is None
    # the time split falls back on the note date
    out = run(root, version=3, own_split="time", ratios=(1, 1, 1))
    assert {k: v[0] for k, v in out.items()} == {"100004": "train", "100001": "val", "100002": "test"}


def test_mimic3_codes_selection(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    out = run(root, version=3, codes=("px",), progress=True)  # rich progress bars must not break anything
    assert sorted(out) == ["100001", "100002"]
    assert out["100001"][1].codes == ["38.93"]


def test_min_count_and_top_k(tmp_path):
    adms = mimic3_admissions()
    adms[3]["dx"] = ["4019"]  # 401.9 now in 2 admissions; everything else in 1
    root = write_mimic3(tmp_path / "m3", adms)
    st = MimicStats()
    out = run(root, st, version=3, min_code_count=2)
    assert sorted(out) == ["100001", "100004"]
    assert all(n.codes == ["401.9"] for _, n in out.values())
    assert st.notes_dropped["without_codes_after_filter"] == 1  # 100002 lost all its codes
    assert st.codes_dropped == {"seen_fewer_than_2_times": 5}  # 428.0 38.93 E812.0 V45.81 96.04
    assert st.labels_dropped == {"seen_fewer_than_2_times": 5}
    out = run(root, version=3, top_k=1)
    assert sorted(out) == ["100001", "100004"]


def test_top50_preset(tmp_path):
    adms = mimic3_admissions()
    adms[1]["dx"] = ["E8120", "V4581", "0010"]  # V45.81 is a top-50 code; E812.0 and 001.0 are not
    adms[3]["dx"] = ["0010"]                    # nothing of the top 50 -> dropped
    root = write_mimic3(tmp_path / "m3", adms)
    assert len(TOP_50_MULLENBACH_CODES) == 50
    st = MimicStats()
    out = run(root, st, preset="mimiciii_50")
    assert sorted(out) == ["100001", "100002"]
    assert out["100001"][1].codes == ["401.9", "428.0", "38.93"]
    assert out["100002"][1].codes == ["V45.81", "96.04"]
    assert st.notes_dropped["without_codes_after_filter"] == 1
    assert st.codes_dropped == {"not_in_top50": 2}  # E812.0 and 001.0


# ------------------------------------------------------------------------------------------- MIMIC-IV


@pytest.mark.parametrize("gz", [False, True])
def test_mimic4_icd10_and_icd9(tmp_path, gz):
    root = write_mimic4(tmp_path / "m4", gz=gz)
    st = MimicStats()
    out = run(root, st, version=4, icd_version=10, clean_text=False)
    assert sorted(out) == ["20000001", "20000003"]
    n = out["20000001"][1]
    assert n.codes == ["I50.9", "E11.9", "0DTJ4ZZ"]
    assert n.code_systems["I50.9"] is CodeSystem.ICD10CM and n.code_systems["0DTJ4ZZ"] is CodeSystem.ICD10PCS
    assert n.text == "DISCHARGE ONE\nName: ___ Unit No: ___\n"
    assert out["20000003"][1].text == "DISCHARGE THREE part 1\n\nDISCHARGE THREE part 2"  # by note_seq
    assert n.patient_id == "10" and n.admission_time == "2180-01-01T10:00:00"
    assert st.notes_dropped == {"without_codes": 2}
    out9 = run(root, version=4, icd_version=9, clean_text=False)
    assert sorted(out9) == ["20000001", "20000002"]
    assert out9["20000002"][1].codes == ["428.0", "E812.0", "38.93"]
    assert out9["20000002"][1].code_systems["38.93"] is CodeSystem.ICD9PCS
    assert out9["20000001"][1].codes == ["428.0"]


def test_mimic4_min_count(tmp_path):
    root = write_mimic4(tmp_path / "m4")
    st = MimicStats()
    out = run(root, st, version=4, icd_version=10, min_code_count=2)
    assert {k: n.codes for k, (_, n) in out.items()} == {"20000001": ["I50.9"], "20000003": ["I50.9"]}
    assert st.codes_dropped == {"seen_fewer_than_2_times": 2}


def test_mimic4_preset_drops_rare_codes(tmp_path):
    # the real preset: codes in fewer than 10 admissions go, and then admissions without codes
    adms = [{"hadm": 21000000 + i, "subject": 30 + i, "admittime": f"2180-01-{i + 1:02d} 00:00:00",
             "notes": [f"Note {i}"], "dx": [("I509", 10), ("K219", 10)] if i < 10 else [("K219", 10)],
             "px": [("0DTJ4ZZ", 10)] if i == 0 else []} for i in range(12)]
    root = write_mimic4(tmp_path / "m4", adms)
    st = MimicStats()
    out = run(root, st, preset="mimiciv_icd10")
    assert len(out) == 12
    assert out["21000000"][1].codes == ["I50.9", "K21.9"] and out["21000000"][1].text == "note 0"  # Edin: a trailing number stays
    assert out["21000011"][1].codes == ["K21.9"]
    assert st.codes_dropped == {"seen_fewer_than_10_times": 1}


def test_mimic4_time_split_and_anchor_years(tmp_path):
    adms = [{"hadm": 22000000 + i, "subject": 40 + i, "admittime": t, "notes": [f"Note {i}"],
             "dx": [("I10", 10)], "px": []}
            for i, t in enumerate(["2150-05-01 00:00:00", "2120-01-01 00:00:00", "2199-01-01 00:00:00"])]
    root = write_mimic4(tmp_path / "m4", adms)
    out = run(root, version=4, own_split="time", ratios=(1, 1, 1))
    assert {k: s for k, (s, _) in out.items()} == {"22000001": "train", "22000000": "val", "22000002": "test"}
    assert out["22000000"][1].admission_time == "2150-05-01T00:00:00"  # the note keeps the (shifted) date
    # with patients: real time ~ admit year - anchor_year + start of anchor_year_group
    write_mimic4_patients(root, [(40, 2150, "2017 - 2019"), (41, 2120, "2014 - 2016"), (42, 2199, "2008 - 2010")])
    out = run(root, version=4, own_split="time", ratios=(1, 1, 1))
    assert {k: s for k, (s, _) in out.items()} == {"22000002": "train", "22000001": "val", "22000000": "test"}


def test_note_root(tmp_path):
    root = write_mimic4(tmp_path / "m4")
    notes = tmp_path / "mimic-iv-note" / "2.2"
    (notes / "note").mkdir(parents=True)
    (root / "note" / "discharge.csv").rename(notes / "note" / "discharge.csv")
    with pytest.raises(DataError, match="discharge"):
        run(root, version=4)
    assert sorted(run(root, version=4, note_root=notes)) == ["20000001", "20000003"]


def test_prepare_writes_parquet_and_manifest(tmp_path):
    root = write_mimic4(tmp_path / "m4", gz=True)
    r = res()
    m = prepare_mimic(root, tmp_path / "out", fmt="parquet", version=4, icd_version=10, resolver=r,
                      own_split="stratified", ratios=(1, 0, 0))
    w = m["warnings"]["notes_dropped_without_codes"]
    assert (w["count"] if isinstance(w, dict) else w) == 2
    assert m["options"]["mimic_stats"]["notes_written"] == {"train": 2}
    ds = load_dataset(tmp_path / "out")
    assert sorted(n.id for n in ds["train"]) == ["20000001", "20000003"]
    assert not list(root.rglob("*.tmp")) and sorted(p.name for p in root.rglob("*") if p.is_file()) == \
        ["admissions.csv.gz", "diagnoses_icd.csv.gz", "discharge.csv.gz", "procedures_icd.csv.gz"]


# ------------------------------------------------------------------------------------------- split files


def _write_split(path: Path, rows: dict[int, str]) -> Path:
    feather.write_feather(pa.table({"_id": pa.array(list(rows), pa.int64()), "split": list(rows.values())}), path)
    return path


def test_split_file_applied(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    sf = _write_split(tmp_path / "s.feather", {100001: "train", 100002: "test"})
    st = MimicStats()
    out = run(root, st, version=3, split_file=sf)
    assert {k: s for k, (s, _) in out.items()} == {"100001": "train", "100002": "test"}
    assert st.notes_dropped["not_in_split_file"] == 1
    assert read_split_file(sf) == {100001: "train", 100002: "test"}


def test_split_file_missing_ids(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    sf = _write_split(tmp_path / "s.feather", {100001: "train", 100002: "dev", 555: "test", 556: "test"})
    st = MimicStats()
    out = run(root, st, version=3, split_file=sf)
    assert {k: s for k, (s, _) in out.items()} == {"100001": "train", "100002": "val"}
    assert st.warnings == {"split_ids_missing_from_data": 2}
    with pytest.raises(DataError, match="2 of the 4 ids") as e:
        run(root, version=3, split_file=sf, resolver=res(strict=True))
    assert e.value.field == "_id" and e.value.path == str(sf)
    none = _write_split(tmp_path / "none.feather", {1: "train", 2: "test"})
    with pytest.raises(DataError, match="none of the 2 ids"):
        run(root, version=3, split_file=none)


def test_split_file_malformed(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    bad = tmp_path / "bad.feather"
    feather.write_feather(pa.table({"hadm_id": [100001], "split": ["train"]}), bad)
    with pytest.raises(DataError) as e:
        run(root, version=3, split_file=bad)
    assert e.value.field == "_id" and e.value.path == str(bad)
    bad2 = tmp_path / "bad2.feather"
    feather.write_feather(pa.table({"_id": [100001]}), bad2)
    with pytest.raises(DataError) as e:
        run(root, version=3, split_file=bad2)
    assert e.value.field == "split"
    junk = tmp_path / "junk.feather"
    junk.write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match="cannot read split file"):
        run(root, version=3, split_file=junk)
    with pytest.raises(DataError, match="not found"):
        run(root, version=3, split_file=tmp_path / "nope.feather")


REAL_SPLITS = {
    "mimiciii_full": "mimiciii_full_splits.feather",
    "mimiciii_50": "mimiciii_50_splits.feather",
    "mimiciii_clean": "mimiciii_clean_splits.feather",
    "mimiciv_icd9": "mimiciv_icd9_split.feather",
    "mimiciv_icd10": "mimiciv_icd10_split.feather",
}


@pytest.mark.parametrize("preset", sorted(REAL_SPLITS))
def test_real_split_files(tmp_path, mimic_splits_dir, preset):
    """Fixture admissions take their ids from the real split file; every one lands in its split."""
    sf = mimic_splits_dir / REAL_SPLITS[preset]
    assert PRESETS[preset].split_file_name == REAL_SPLITS[preset]
    ids = split_ids(sf, per_split=4)
    assert sorted(ids) == ["test", "train", "val"]
    expected = {str(h): s for s, hs in ids.items() for h in hs}
    outsider = 9 if PRESETS[preset].version == 3 else 19999999  # an admission the split file lacks
    if PRESETS[preset].version == 3:
        adms = [{"hadm": h, "subject": 1000 + i, "admittime": f"2150-01-{i + 1:02d} 00:00:00",
                 "notes": [("Report", "2150-02-01", f"Summary {i} of {h}.")],
                 "dx": ["4019", f"{100 + i:03d}"], "px": ["3893"]}  # 401.9/38.93 common, top-50; 1xx rare
                for i, h in enumerate(list(map(int, expected)) + [outsider])]
        root = write_mimic3(tmp_path / "m3", adms, gz=True)
    else:
        v = 9 if preset == "mimiciv_icd9" else 10
        common = ("4019", 9) if v == 9 else ("I10", 10)

        def rare(i: int) -> tuple[str, int]:
            return (f"{100 + i:03d}", 9) if v == 9 else (f"K{20 + i:02d}", 10)

        adms = [{"hadm": h, "subject": 1000 + i, "admittime": f"2180-01-{i + 1:02d} 00:00:00",
                 "notes": [f"Discharge summary {i}."], "dx": [common, rare(i)], "px": []}
                for i, h in enumerate(list(map(int, expected)) + [outsider])]
        root = write_mimic4(tmp_path / "m4", adms, gz=True)
    st = MimicStats()
    out = run(root, st, preset=preset, split_file=sf)
    assert {k: s for k, (s, _) in out.items()} == expected
    assert st.notes_dropped["not_in_split_file"] == 1
    assert st.warnings["split_ids_missing_from_data"] == len(read_split_file(sf)) - 12
    codes = {tuple(n.codes) for _, n in out.values()}
    if preset in ("mimiciii_full",):
        assert all(len(c) == 3 for c in codes)  # nothing filtered
    elif preset == "mimiciii_50":
        assert codes == {("401.9", "38.93")}
    else:  # min count 10: only the code of all 13 admissions survives
        assert codes == ({("401.9", "38.93")} if preset == "mimiciii_clean" else
                         {("401.9",)} if preset == "mimiciv_icd9" else {("I10",)})


# ------------------------------------------------------------------------------------------- bad input


def test_missing_column(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    write_csv(root / "NOTEEVENTS.csv", [c for c in NOTE3_COLS if c != "TEXT"], [])
    with pytest.raises(DataError) as e:
        run(root, version=3)
    assert e.value.field == "TEXT" and e.value.line == 1 and e.value.path.endswith("NOTEEVENTS.csv")
    root4 = write_mimic4(tmp_path / "m4")
    write_csv(root4 / "hosp" / "diagnoses_icd.csv", ["subject_id", "hadm_id", "seq_num", "icd_code"], [])
    with pytest.raises(DataError) as e:
        run(root4, version=4)
    assert e.value.field == "icd_version" and e.value.path.endswith("diagnoses_icd.csv")


def _notes_bytes(*rows: bytes) -> bytes:
    return (",".join(NOTE3_COLS) + "\n").encode() + b"".join(rows)


def test_malformed_row(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    ok = b'1,1,100001,2150-01-09,,,"Discharge summary","Report",,,"REPORT\nspans\nlines"\n'
    (root / "NOTEEVENTS.csv").write_bytes(_notes_bytes(ok, b'2,1,100001,2150-01-09,,,"Discharge summary"\n'))
    with pytest.raises(DataError, match="malformed row: 7 fields") as e:
        run(root, version=3)
    assert e.value.line == 5  # header, 3 lines of row 1, then row 2
    (root / "NOTEEVENTS.csv").write_bytes(_notes_bytes(ok, b'2,1,100001,2150-01-09,,,"Discharge summary","Report",,,"never closed\n'))
    with pytest.raises(DataError, match="malformed CSV") as e:
        run(root, version=3)
    assert e.value.line == 5


def test_non_utf8(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    data = _notes_bytes(b'1,1,100001,2150-01-09,,,"Discharge summary","Report",,,"first\nsecond caf\xe9\n"\n')
    (root / "NOTEEVENTS.csv").write_bytes(data)
    with pytest.raises(DataError, match="not valid UTF-8") as e:
        run(root, version=3)
    assert e.value.line == 3
    (root / "NOTEEVENTS.csv").unlink()
    (root / "NOTEEVENTS.csv.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="not valid UTF-8") as e:
        run(root, version=3)
    assert e.value.line == 3 and e.value.path.endswith("NOTEEVENTS.csv.gz")


def test_empty_text(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    (root / "NOTEEVENTS.csv").write_bytes(_notes_bytes(
        b'1,1,100001,2150-01-09,,,"Discharge summary","Report",,,"fine"\n',
        b'2,2,100002,2150-01-09,,,"Discharge summary","Report",,,"  \n "\n'))
    with pytest.raises(DataError, match="empty note text") as e:
        run(root, version=3)
    assert (e.value.line, e.value.field) == (3, "TEXT")


def test_empty_after_cleaning_is_dropped(tmp_path):
    adms = mimic3_admissions()
    adms[1]["notes"] = [("Report", "2151-03-04", "*** 123 ***")]
    root = write_mimic3(tmp_path / "m3", adms)
    st = MimicStats()
    out = run(root, st, version=3, clean_text=True)
    assert sorted(out) == ["100001", "100004"]
    assert st.notes_dropped["empty_after_cleaning"] == 1


def test_bad_and_unknown_codes(tmp_path):
    adms = mimic3_admissions()
    adms[1]["dx"] = ["E8120", "XYZ"]
    root = write_mimic3(tmp_path / "m3", adms)
    r = res()
    out = run(root, version=3, resolver=r)
    assert out["100002"][1].codes == ["E812.0", "96.04"]
    assert r.counts == {"malformed_icd9cm_code": 1}
    with pytest.raises(DataError) as e:
        run(root, version=3, resolver=res(strict=True))
    assert e.value.field == "ICD9_CODE" and e.value.path.endswith("DIAGNOSES_ICD.csv")
    assert e.value.line == 4  # header, 100001's two rows, then 100002's rows in reverse: XYZ first


def test_bad_hadm_id(tmp_path):
    root = write_mimic3(tmp_path / "m3")
    (root / "NOTEEVENTS.csv").write_bytes(_notes_bytes(
        b'1,1,10000x,2150-01-09,,,"Discharge summary","Report",,,"fine"\n'))
    with pytest.raises(DataError) as e:
        run(root, version=3)
    assert (e.value.line, e.value.field) == (2, "HADM_ID")


def test_missing_files_and_args(tmp_path):
    with pytest.raises(DataError, match="NOTEEVENTS"):
        run(tmp_path, version=3)
    with pytest.raises(ValueError, match="preset"):
        run(tmp_path, preset="mimic5")
    with pytest.raises(ValueError, match="either split_file or own_split"):
        run(tmp_path, version=3, split_file="x", own_split="time")


@pytest.mark.skipif(not _ontology_ready(), reason="icdcoder.ontology is not written yet")
def test_with_ontology(tmp_path):
    r = CodeResolver(check_ontology=True)
    out = {n.id: n for _, n in iter_mimic(write_mimic3(tmp_path / "m3"), version=3, resolver=r)}
    assert out["100001"].codes == ["401.9", "428.0", "38.93"] and out["100002"].codes == ["E812.0", "V45.81", "96.04"]
    r4 = CodeResolver(check_ontology=True)
    out4 = {n.id: n for _, n in iter_mimic(write_mimic4(tmp_path / "m4"), version=4, resolver=r4)}
    assert out4["20000001"].codes == ["I50.9", "E11.9", "0DTJ4ZZ"]
    assert r.counts == {} and r4.counts == {}
    # well-formed but not in the ontology: kept and counted, or an error with strict
    adms = mimic3_admissions()
    adms[3]["dx"] = ["25000", "0000"]
    root = write_mimic3(tmp_path / "m3b", adms)
    r = CodeResolver(check_ontology=True)
    out = {n.id: n for _, n in iter_mimic(root, version=3, resolver=r)}
    assert out["100004"].codes == ["250.00", "000.0"] and r.counts == {"unknown_icd9cm_code": 1}
    with pytest.raises(DataError, match="000.0") as e:
        list(iter_mimic(root, version=3, resolver=CodeResolver(check_ontology=True, strict=True)))
    assert e.value.field == "ICD9_CODE"
