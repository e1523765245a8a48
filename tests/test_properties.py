"""Property-based tests (Hypothesis): any text, any Unicode (lone surrogates included), any nesting.

The invariant everywhere: an input gets a result or a clear IcdcoderError (CodeFormatError for a
code), never another exception; and what comes back can be written out (UTF-8, JSON) without
failing later. Example counts stay modest so the file runs in seconds.
"""

from __future__ import annotations

import io
import json
import re
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from icdcoder import cli
from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, normalize_code, parse_code, parse_system, strip_dot
from icdcoder.coders.generative.answer import MALFORMED_PROBLEMS, parse_answer
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.codiesp import iter_codiesp
from icdcoder.data.note import Note
from icdcoder.data.store import iter_notes
from icdcoder.data.userfile import iter_user_notes
from icdcoder.errors import IcdcoderError

PROPS = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FILE_PROPS = settings(PROPS, max_examples=100)  # each example writes a folder of files

ANY_TEXT = st.text(st.characters())  # every code point, lone surrogates included
SYSTEMS = st.sampled_from(list(CodeSystem))
CANONICAL = {  # what normalize_code may return, per system
    CodeSystem.ICD9CM: r"(?:[0-9]{3}|V[0-9]{2})(?:\.[0-9]{1,2})?|E[0-9]{3}(?:\.[0-9])?",
    CodeSystem.ICD9PCS: r"[0-9]{2}(?:\.[0-9]{1,2})?",
    CodeSystem.ICD10CM: r"[A-Z](?:[0-9][0-9A-Z]|A[0-9])(?:\.[0-9A-Z]{1,4})?",
    CodeSystem.ICD10PCS: r"[0-9A-HJ-NP-Z]{3,7}",
}


def _is_canonical(code: str, system: CodeSystem) -> bool:
    return re.fullmatch(CANONICAL[system], code, flags=re.ASCII) is not None


# ------------------------------------------------------------------------------------------ code normalisation
@PROPS
@given(raw=ANY_TEXT, system=SYSTEMS)
@example(raw="٤٢٨٠", system=CodeSystem.ICD9CM)  # Arabic-Indic digits are \d to an un-ASCII regex
@example(raw="ı10", system=CodeSystem.ICD10CM)  # dotless i upper-cases to I
@example(raw="ﬁ", system=CodeSystem.ICD10PCS)  # a ligature upper-cases to two letters
def test_normalize_code_gives_a_canonical_ascii_code_or_a_code_format_error(raw, system):
    try:
        code = normalize_code(raw, system)
    except CodeFormatError:
        return
    assert _is_canonical(code, system), code
    assert normalize_code(code, system) == code  # idempotent
    assert normalize_code(f" {strip_dot(code).lower()} ", system) == code  # every spelling, one form


@PROPS
@given(system=SYSTEMS, data=st.data())
def test_every_canonical_code_survives_its_spellings(system, data):
    code = data.draw(st.from_regex(CANONICAL[system], fullmatch=True).filter(lambda c: "\n" not in c))
    try:
        canonical = normalize_code(code, system)
    except CodeFormatError:
        return  # e.g. an ICD-10-PCS shape with I or O, refused by design
    spelled = data.draw(st.sampled_from([code.lower(), strip_dot(code), f"  {code} ", code.replace(".", ". ")]))
    assert normalize_code(spelled, system) == canonical


@PROPS
@given(raw=ANY_TEXT, version=st.sampled_from([None, 9, 10]), procedure=st.sampled_from([None, True, False]))
def test_infer_system_and_parse_code_answer_or_refuse(raw, version, procedure):
    try:
        system = infer_system(raw, version=version, procedure=procedure)
    except CodeFormatError:
        system = None
    assert system is None or isinstance(system, CodeSystem)
    try:
        code = parse_code(raw)
    except CodeFormatError:
        return
    assert _is_canonical(code.code, code.system)


@PROPS
@given(name=ANY_TEXT)
def test_parse_system_answers_or_raises_value_error(name):
    try:
        assert isinstance(parse_system(name), CodeSystem)
    except ValueError:
        pass


# ------------------------------------------------------------------------------------------------ answer parser
PIECES = ["<code>", "</code>", "< code >", "<CODE>", "</ code>", "&lt;code&gt;", "I10", "i509", "E11.9", "428.0",
          "0DTJ4ZZ", "38.93", "V45.81", "E812.0", "ZZZ", ",", ";", "|", '"', "“", "\n", "\r\n", " ", "1.", "2)",
          "-", "*", "•", "(", ")", "[", "]", ".", "..", "\u2028", "\x85", "\ud800", "İ", "ß", "ﬁ", "\U0001F600"]
ANSWERS = st.one_of(ANY_TEXT, st.lists(st.sampled_from(PIECES) | ANY_TEXT.filter(lambda t: len(t) < 4),
                                       max_size=40).map("".join))


@PROPS
@given(text=ANSWERS, system=st.sampled_from([None, *CodeSystem]))
def test_parse_answer_never_raises_and_keeps_only_canonical_codes(text, system):
    parsed = parse_answer(text, system=system, valid=lambda code: True)
    assert parsed.malformed == any(p in MALFORMED_PROBLEMS for p in parsed.problems)
    assert len(set(parsed.codes)) == len(parsed.codes)
    for code in parsed.codes:
        systems = [system] if system is not None else list(CodeSystem)
        assert any(_is_canonical(code, s) for s in systems), code
    assert set(parsed.evidence) <= set(parsed.codes)


@PROPS
@given(value=st.one_of(st.none(), st.binary(), st.integers(), st.floats(), st.lists(st.integers())))
def test_parse_answer_takes_whatever_a_backend_hands_over(value):
    assert parse_answer(value, valid=set()).codes == []


# --------------------------------------------------------------------------------------------------- readers
FIELDS = ["id", "text", "codes", "code_systems", "spans", "metadata", "patient_id", "admission_time", "split"]
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                        ANY_TEXT, st.sampled_from(["I10", "i509", "428.0", "icd10cm", "train", "dev", "../x", ""]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(["code", "start", "end"]) | ANY_TEXT, inner, max_size=4),
                           max_leaves=12)
RECORDS = st.dictionaries(st.sampled_from(FIELDS) | ANY_TEXT, JSON_VALUES, max_size=8)


def _json_line(record: dict, ascii_only: bool) -> bytes:
    """A record as one JSONL line: escapes (``\\ud800``) or raw characters, which UTF-8 may refuse."""
    return json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") + b"\n"


DEEP = st.integers(1, 3000).map(lambda n: b'{"id": 1, "text": ' + b"[" * n + b"]" * n + b"}\n")
JSONL = st.one_of(
    st.lists(st.tuples(RECORDS, st.booleans()).map(lambda r: _json_line(*r)), max_size=4).map(b"".join),
    st.binary(max_size=200), DEEP,
    st.lists(st.sampled_from([b"\xef\xbb\xbf", b"{", b"}", b"[", b'"id"', b":", b"1", b",", b'"text"', b'"x"',
                              b"\n", b"\\ud800", b'"', b" "]), max_size=30).map(b"".join),
)


def _assert_writable(note: Note) -> None:
    """What the writers do with a note must not fail: UTF-8 JSONL and pydantic's JSON."""
    json.dumps(note.to_record(), ensure_ascii=False).encode("utf-8")
    note.model_dump_json()


def _read_all(make_rows):
    """Consume a reader: every note it yields is writable and every split a safe file name, or it
    stops with an IcdcoderError."""
    try:
        for item in make_rows():
            if isinstance(item, tuple):
                split, item = item
                assert re.fullmatch(r"[a-z0-9_-]{1,64}", split), split
            _assert_writable(item)
    except IcdcoderError:
        pass


@PROPS
@given(data=JSONL, split_field=st.sampled_from([None, "split"]))
@example(data=b'{"id": "a", "text": "x", "codes": ["I10"], "code_systems": ["I10"]}\n', split_field=None)
@example(data=b'{"id": "a", "text": "x", "spans": 5}\n', split_field=None)
@example(data=b'{"id": "a", "text": "x", "ward": "\\udc00"}\n', split_field=None)
@example(data=b'{"id": "a", "text": "x", "split": "a\\u0000b"}\n', split_field="split")
def test_jsonl_reader_gives_notes_or_a_clear_error(data, split_field, tmp_path):
    resolver = CodeResolver(check_ontology=False)
    _read_all(lambda: iter_user_notes("<t>.jsonl", lines=data.splitlines(keepends=True), split_field=split_field,
                                      resolver=resolver))
    path = tmp_path / "prepared.jsonl"
    path.write_bytes(data)
    _read_all(lambda: iter_notes(path))  # the prepared-data reader


@PROPS
@given(data=JSONL)
def test_stdin_gives_notes_or_a_clear_error(data, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    _read_all(lambda: cli._notes_to_code("-"))


CSV_PIECES = [",", '"', "\n", "\r\n", "\t", "id", "text", "codes", "split", "I10;E11.9", "train", "dev", "\ufeff",
              "\u200b", "\x00", "\u2028", "../x"]
CSV_TEXT = st.lists(st.sampled_from(CSV_PIECES) | st.text(max_size=4), max_size=40).map("".join)


@PROPS
@given(header=st.sampled_from(["id,text,codes\n", "\ufeffid,text,codes,split\n", "id\ttext\n", ""]), body=CSV_TEXT,
       suffix=st.sampled_from([".csv", ".tsv"]), split_field=st.sampled_from([None, "split"]))
def test_csv_reader_gives_notes_or_a_clear_error(header, body, suffix, split_field, tmp_path):
    path = tmp_path / f"notes{suffix}"
    path.write_text(header + body, encoding="utf-8", errors="surrogatepass")
    _read_all(lambda: iter_user_notes(path, split_field=split_field, resolver=CodeResolver(check_ontology=False)))


FIELD = st.text(st.characters(exclude_characters="\t\n\r"), max_size=5)  # any field, but still one field


def _mostly(values: list[str]):
    """One of ``values`` three times in four, else any field."""
    known = st.sampled_from(values)
    return st.one_of(known, known, known, FIELD)


ARTICLE = _mostly(["a1", "a1", "a2", "\ufeffa1"])
CODE = _mostly(["I10", "i10", "E11.9", "0DTJ4ZZ", "0DTJ", "J18.9"])
KIND = _mostly(["DIAGNOSTICO", "PROCEDIMIENTO"])
OFFSETS = _mostly(["0 5", "3 1", "0 5;6 8", "2 2", "0 ²", "0 999", "1", "0 5;"])
QUOTE = _mostly(["Hyper", "x\u2028y", "a\x85b"])


def _tsv(*columns):
    """TSV text: often well-formed (to get past the field count to the checks behind it), else with
    rows of any shape."""
    right = st.tuples(*columns).map("\t".join)
    wrong = st.lists(st.text(max_size=4), min_size=1, max_size=6).map("\t".join)
    rows = st.one_of(st.lists(right, max_size=4), st.lists(right | wrong, max_size=4))
    return rows.map(lambda lines: "".join(line + "\n" for line in lines))


def _codiesp(tmp: str, d: str, p: str, x: str, text: str, bom: bool) -> Path:
    root = Path(tmp)
    (root / "train" / "text_files").mkdir(parents=True)
    (root / "train" / "text_files_en").mkdir()
    for letter, content in (("D", d), ("P", p), ("X", x)):
        (root / "train" / f"train{letter}.tsv").write_text(("\ufeff" if bom else "") + content, encoding="utf-8",
                                                          errors="surrogatepass")  # bytes no UTF-8 decoder takes
    for sub in ("text_files", "text_files_en"):
        (root / "train" / sub / "a1.txt").write_text(text, encoding="utf-8", errors="surrogatepass")
    return root


NOTE_TEXT = _mostly(["Hypertension and fever.", "\ufeffHyper", "\u200b", "İİ ß ﬁ e\u0301 \U0001F600"])


@FILE_PROPS
@given(d=_tsv(ARTICLE, CODE), p=_tsv(ARTICLE, CODE), x=_tsv(ARTICLE, KIND, CODE, QUOTE, OFFSETS), text=NOTE_TEXT,
       bom=st.booleans(), lang=st.sampled_from(["es", "en"]), kind=st.sampled_from(["diagnoses", "procedures", "both"]))
def test_codiesp_reader_gives_notes_or_a_clear_error(d, p, x, text, bom, lang, kind):
    with tempfile.TemporaryDirectory() as tmp:
        root = _codiesp(tmp, d, p, x, text, bom)
        _read_all(lambda: iter_codiesp(root, lang=lang, kind=kind, resolver=CodeResolver(check_ontology=False)))


@FILE_PROPS
@given(x=_tsv(ARTICLE, KIND, CODE, QUOTE, OFFSETS), text=NOTE_TEXT, bom=st.booleans())
@example(x="a1\tDIAGNOSTICO\tI10\tHyper\t0 ²\n", text="Hypertension.", bom=False)  # "²".isdigit(), int("²") fails
def test_codiesp_evidence_gives_spans_or_a_clear_error(x, text, bom):
    """Valid code files, so that every evidence row reaches the type, code and offset checks."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _codiesp(tmp, "a1\tI10\na1\tE11.9\n", "a1\t0DTJ4ZZ\n", x, text, bom)
        _read_all(lambda: iter_codiesp(root, lang="es", kind="both", resolver=CodeResolver(check_ontology=False)))


@pytest.mark.parametrize("text", ["x\ud800", "\u200b"])
def test_the_note_model_refuses_what_the_writers_could_not_write(text):
    with pytest.raises(ValueError):
        Note(id="a", text=text)
