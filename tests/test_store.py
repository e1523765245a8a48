import json

import pytest

from icdcoder.codes import CodeSystem
from icdcoder.data import DatasetWriter, Note, Span, iter_notes, load_dataset, write_dataset
from icdcoder.data.stats import bucket_of, dataset_stats
from icdcoder.errors import DataError


def _note(i, codes=(("I10", "icd10cm"),), **kw):
    text = f"Note {i}: history of hypertension, on lisinopril."
    return Note.build(f"n{i}", text, list(codes), **kw)


def test_note_build_normalises_and_dedupes():
    n = Note.build("a", "text", [("i509", "icd10cm"), ("I50.9", "icd10cm"), ("3893", "icd9pcs")])
    assert n.codes == ["I50.9", "38.93"]
    assert n.code_systems == {"I50.9": CodeSystem.ICD10CM, "38.93": CodeSystem.ICD9PCS}


@pytest.mark.parametrize("record,field", [
    ({"id": "a", "text": "   ", "codes": []}, "text"),
    ({"id": "", "text": "x"}, "id"),
    ({"id": "a", "text": "x", "codes": ["I10"], "code_systems": {}}, None),
    ({"id": "a", "text": "x", "codes": ["I10", "I10"], "code_systems": {"I10": "icd10cm"}}, None),
    ({"id": "a", "text": "x", "codes": ["i10"], "code_systems": {"i10": "icd10cm"}}, None),
    ({"id": "a", "text": "abc", "spans": [{"code": "I10", "start": 0, "end": 9}]}, None),
    ({"id": "a", "text": "abc", "spans": [{"code": "I10", "start": 2, "end": 1}]}, "spans.0"),
    ({"id": "a", "text": "abc", "surprise": 1}, "surprise"),
])
def test_bad_notes_are_rejected_with_field(tmp_path, record, field):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "ok", "text": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        list(iter_notes(path))
    assert e.value.line == 2 and e.value.path == str(path)
    if field:
        assert e.value.field == field


def test_jsonl_syntax_and_encoding_errors_name_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"id": "a", "text": "x"}\n\n{"id": "b", "text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:3: malformed JSON"):
        list(iter_notes(path))
    path.write_bytes(b'{"id": "a", "text": "x"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid UTF-8"):
        list(iter_notes(path))
    path.write_text('[1, 2]\n')
    with pytest.raises(DataError, match="expected a JSON object"):
        list(iter_notes(path))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip_and_manifest(tmp_path, fmt):
    notes = [("train", _note(i, spans=[Span(code="I10", start=19, end=31)], admission_time="2020-01-0%d" % (i + 1),
                              patient_id="p1", metadata={"k": [1, 2]})) for i in range(3)]
    notes.append(("dev", _note(9, codes=[("E11.9", "icd10cm"), ("0DTJ4ZZ", "icd10pcs")])))
    manifest = write_dataset(notes, tmp_path / "ds", name="t", source="test", fmt=fmt)
    assert set(manifest["splits"]) == {"train", "val"}  # dev is called val
    assert manifest["splits"]["train"]["n_notes"] == 3 and manifest["splits"]["train"]["n_labels"] == 3
    assert manifest["code_frequencies"]["train"] == {"I10": 3}
    assert manifest["code_system_of"] == {"0DTJ4ZZ": "icd10pcs", "E11.9": "icd10cm", "I10": "icd10cm"}
    assert len(manifest["content_hash"]) == 64
    ds = load_dataset(tmp_path / "ds")
    assert [n for _, n in notes[:3]] == ds["train"]
    assert ds["dev"][0] == notes[3][1]
    assert ds["train"][0].evidence_text(ds["train"][0].spans[0]) == "hypertension"
    assert ds.label_space() == ["0DTJ4ZZ", "E11.9", "I10"]
    # the same content gives the same hash
    again = write_dataset(notes, tmp_path / "ds2", name="t", source="test", fmt=fmt)
    assert again["content_hash"] == manifest["content_hash"]


def test_interrupted_write_leaves_nothing_and_keeps_old(tmp_path):
    out = tmp_path / "ds"
    write_dataset([("train", _note(1))], out, name="old", source="test")
    before = (out / "train.jsonl").read_text()

    def failing():
        yield "train", _note(2)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_dataset(failing(), out, name="new", source="test")
    assert (out / "train.jsonl").read_text() == before
    # no staging folder left behind; the writer's lock file stays (deleting it would race its waiters)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.write.lock", "ds"]


def test_refuses_to_replace_a_foreign_folder_and_duplicate_ids(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(DataError, match="refusing to replace"):
        write_dataset([("train", _note(1))], foreign, name="x", source="test")
    assert (foreign / "thesis.docx").read_text() == "precious"
    with pytest.raises(DataError, match="duplicate note id 'n1'"):
        write_dataset([("train", _note(1)), ("test", _note(1))], tmp_path / "d", name="x", source="test")
    assert not (tmp_path / "d").exists()
    with pytest.raises(DataError, match="no notes"):
        write_dataset([], tmp_path / "e", name="x", source="test")


def test_writer_warnings_and_stats(tmp_path):
    with DatasetWriter(tmp_path / "ds", name="w", source="test") as w:
        for i in range(12):
            w.add("train", _note(i))
        w.add("test", _note(100, codes=[("I10", "icd10cm"), ("J18.9", "icd10cm")]))
        w.warn("dropped_note", 2)
    assert w.manifest["warnings"] == {"dropped_note": {"count": 2}}
    s = dataset_stats(tmp_path / "ds")
    assert s["splits"]["train"]["notes"] == 12 and s["splits"]["test"]["labels"] == 2
    assert s["labels_by_train_frequency"]["test"] == {"unseen": 1, "1-10": 0, "11-100": 1, ">100": 0}
    assert s["codes_not_in_train"] == 1 and s["top_codes"] == [("I10", 12)]
    assert [bucket_of(n) for n in (0, 1, 10, 11, 100, 101)] == ["unseen", "1-10", "1-10", "11-100", "11-100", ">100"]


def test_resplit_by_time_and_by_patient(tmp_path):
    from icdcoder.data.resplit import resplit

    notes = [("train", _note(i, admission_time=f"2020-01-{i + 1:02d}", patient_id=f"p{i // 2}")) for i in range(20)]
    write_dataset(notes, tmp_path / "src", name="s", source="test")
    m = resplit(tmp_path / "src", tmp_path / "time", method="time", ratios=(0.5, 0.25, 0.25))
    ds = load_dataset(tmp_path / "time")
    assert {k: v["n_notes"] for k, v in m["splits"].items()} == {"train": 10, "val": 5, "test": 5}
    assert max(n.admission_time for n in ds["train"]) < min(n.admission_time for n in ds["val"])
    assert max(n.admission_time for n in ds["val"]) < min(n.admission_time for n in ds["test"])
    resplit(tmp_path / "src", tmp_path / "strat", method="stratified", ratios=(0.6, 0.2, 0.2), seed=1)
    ds = load_dataset(tmp_path / "strat")
    patients = {s: {n.patient_id for n in ds[s]} for s in ds.splits}
    assert sum(len(p) for p in patients.values()) == 10  # every patient in exactly one split
    assert sum(len(v) for v in ds.splits.values()) == 20
