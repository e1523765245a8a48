import json

import pytest

from icdcoder.codes import CodeSystem
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.userfile import iter_user_notes
from icdcoder.errors import DataError


def _load(path, **kw):
    kw.setdefault("resolver", CodeResolver(check_ontology=False))
    return list(iter_user_notes(path, **kw))


def _jsonl(tmp_path, *records, name="notes.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return p


def test_jsonl_with_list_codes_systems_and_extra_fields(tmp_path):
    p = _jsonl(tmp_path,
               {"id": 1, "text": "CHF exacerbation.", "codes": ["i509", "4280"], "code_systems": {"4280": "icd9cm"},
                "patient_id": 7, "ward": "cardio", "spans": [{"code": "I50.9", "start": 0, "end": 3}]},
               {"id": "b", "text": "Appendectomy.", "codes": "0DTJ4ZZ; I10"})
    (s1, n1), (s2, n2) = _load(p, split="train")
    assert s1 == s2 == "train"
    assert n1.id == "1" and n1.codes == ["I50.9", "428.0"] and n1.patient_id == "7"
    assert n1.code_systems == {"I50.9": CodeSystem.ICD10CM, "428.0": CodeSystem.ICD9CM}
    assert n1.metadata == {"ward": "cardio"} and n1.evidence_text(n1.spans[0]) == "CHF"
    assert n2.codes == ["0DTJ4ZZ", "I10"] and n2.code_systems["0DTJ4ZZ"] is CodeSystem.ICD10PCS


def test_csv_with_split_field_and_system(tmp_path):
    p = tmp_path / "notes.csv"
    p.write_text('note_id,body,labels,part\nx1,"Line one,\nline two",4280;25000,dev\nx2,Fever.,,train\n',
                 encoding="utf-8")
    out = _load(p, split_field="part", id_field="note_id", text_field="body", codes_field="labels", system="icd9cm")
    assert [(s, n.id, n.codes) for s, n in out] == [("val", "x1", ["428.0", "250.00"]), ("train", "x2", [])]
    assert out[0][1].text == "Line one,\nline two"


@pytest.mark.parametrize("content,kw,match", [
    ("id,text\n1,hello\n", {"codes_field": "codes", "text_field": "body"}, r"notes.csv:1, field 'body': missing column"),
    ("id,text,codes\n1,hello,I10,extra\n", {}, r"notes.csv:2: row has more fields"),
    ("id,text,codes\n1,hello,I10\n2,,I10\n", {}, r"notes.csv:3, field 'text': note text is empty"),
    ("id,text,codes\n", {}, r"no notes in file"),
    ("id,text,codes\n1,hello,I10\n", {"split_field": "part"}, r"field 'part': missing column"),
])
def test_csv_bad_input(tmp_path, content, kw, match):
    p = tmp_path / "notes.csv"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        _load(p, **kw)


def test_csv_not_utf8(tmp_path):
    p = tmp_path / "notes.csv"
    p.write_bytes(b"id,text,codes\n1,ok,I10\n2,caf\xe9,I10\n")
    with pytest.raises(DataError, match=r"notes.csv:3: not valid UTF-8"):
        _load(p)


@pytest.mark.parametrize("record,match", [
    ({"text": "x"}, r":1, field 'id': missing or empty id"),
    ({"id": "a", "text": 5}, r":1, field 'text': text must be a string"),
    ({"id": "a", "text": "x", "codes": [1, 2]}, r"field 'codes': codes must be a list of strings"),
    ({"id": "a", "text": "abc", "codes": ["I10"], "spans": [{"code": "I10", "start": 0, "end": 50}]},
     r"field 'spans': span 0-50 of I10 runs past"),
    ({"id": "a", "text": "x", "metadata": [1]}, r"field 'metadata': metadata must be an object"),
])
def test_jsonl_bad_records(tmp_path, record, match):
    with pytest.raises(DataError, match=match):
        _load(_jsonl(tmp_path, record))


def test_unknown_and_unguessable_codes_are_counted_or_strict(tmp_path):
    p = _jsonl(tmp_path, {"id": "a", "text": "x", "codes": ["I10", "hello", "I5"]})
    resolver = CodeResolver(check_ontology=False)
    [(_, note)] = _load(p, resolver=resolver)
    assert note.codes == ["I10"]
    assert resolver.counts == {"code_without_system": 2}
    with pytest.raises(DataError, match=r"notes.jsonl:1, field 'codes': cannot tell the code system of 'hello'"):
        _load(p, resolver=CodeResolver(strict=True, check_ontology=False))
    with pytest.raises(DataError, match=r"'I5' is not an ICD-10-CM code"):
        _load(_jsonl(tmp_path, {"id": "a", "text": "x", "codes": ["I5"]}, name="b.jsonl"), system="icd10cm",
              resolver=CodeResolver(strict=True, check_ontology=False))
