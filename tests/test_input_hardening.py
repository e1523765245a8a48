"""Hostile and careless input to the data layer and the CLI (issue 16): names from data that would
become paths, broken Unicode, BOMs, missing files, deep nesting, odd ids, and writers that are
killed or race each other. Every case ends in a clear IcdcoderError (exit 2 in the CLI) or a
complete output, never a traceback or a file outside ``--out``."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from icdcoder import cli
from icdcoder.cli import app
from icdcoder.data import DatasetWriter, Note, iter_notes, load_dataset, read_manifest, write_dataset
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.codiesp import iter_codiesp
from icdcoder.data.mimic import read_split_file
from icdcoder.data.userfile import iter_user_notes
from icdcoder.errors import DataError, IcdcoderError
from icdcoder.io import iter_jsonl, read_text_utf8
from tests.test_codiesp import _mini as codiesp_tree

runner = CliRunner()
BOM = "\ufeff"


def _load(path, **kw):
    kw.setdefault("resolver", CodeResolver(check_ontology=False))
    return list(iter_user_notes(path, **kw))


def _jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _prepare(src, out, *extra):
    kind = "csv" if src.suffix == ".csv" else "jsonl"
    return runner.invoke(app, ["data", "prepare", kind, "--path", str(src), "--out", str(out), "--no-check-codes",
                               *extra])


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------ split names become file names
@pytest.mark.parametrize("split", ["../../escaped", "ABSOLUTE", "tr\x00ain", "a/b", "..", ".hidden",
                                   "x" * 65, "trén", "a b"])
def test_split_names_from_data_are_checked_before_they_become_paths(tmp_path, split):
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    split = str(tmp_path / "escaped") if split == "ABSOLUTE" else split
    src = _jsonl(work / "notes.jsonl", {"id": "a", "text": "Hypertension.", "split": "train"},
                 {"id": "b", "text": "Fever.", "split": split})
    before = _files_under(tmp_path)
    r = _prepare(src, work / "out", "--split-field", "split")
    assert isinstance(r.exception, DataError), r.output  # main() prints it and exits 2
    assert "notes.jsonl:2, field 'split': split name" in str(r.exception)
    # nothing was written anywhere: no escaped file, no output folder, only the writer's lock file
    assert _files_under(tmp_path) == sorted(before + ["deep/er/.out.write.lock"])


def test_split_names_are_checked_in_csv_mimic_split_files_and_the_writer(tmp_path):
    src = tmp_path / "notes.csv"
    src.write_text("id,text,part\n1,Fever.,../up\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes.csv:2, field 'part': split name '../up'"):
        _load(src, split_field="part")
    with pytest.raises(DataError, match=r"split must be a string, got dict"):
        _load(_jsonl(tmp_path / "n.jsonl", {"id": 1, "text": "x", "split": {"a": 1}}), split_field="split")
    splits = tmp_path / "splits.csv"
    splits.write_text("_id,split\n1,train\n2,../../x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"splits.csv:2, field 'split': split name '../../x'"):
        read_split_file(splits)
    with pytest.raises(DataError, match=r"split name '../x' is not allowed"):  # e.g. --split ../x
        write_dataset([("../x", Note(id="a", text="x"))], tmp_path / "ds", name="t", source="test")
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "ds").exists()
    ok = _load(_jsonl(tmp_path / "ok.jsonl", {"id": 1, "text": "x", "split": "Dev"}, {"id": 2, "text": "y", "split": 7}),
               split_field="split")
    assert [s for s, _ in ok] == ["val", "7"]


@pytest.mark.parametrize("file", ["../../secret.jsonl", "/etc/passwd", "sub/train.jsonl", ".x.jsonl", 5])
def test_a_manifest_cannot_point_outside_its_folder(tmp_path, file):
    write_dataset([("train", Note(id="a", text="x"))], tmp_path / "ds", name="t", source="test")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["splits"]["train"]["file"] = file
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json, field 'splits.train.file': split 'train' names no plain"):
        load_dataset(tmp_path / "ds")
    manifest["splits"] = {"../x": {"file": "x.jsonl"}}
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"split name '../x'"):
        read_manifest(tmp_path / "ds")


# ------------------------------------------------------------------------------------------------ broken text
def test_a_lone_surrogate_is_an_error_with_file_line_and_field(tmp_path):
    src = tmp_path / "notes.jsonl"
    src.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "essential\\ud800hypertension"}\n',
                   encoding="utf-8")
    r = _prepare(src, tmp_path / "out")
    assert isinstance(r.exception, DataError)
    assert "notes.jsonl:2, field 'text': invalid Unicode: lone surrogate U+D800" in str(r.exception)
    assert not (tmp_path / "out").exists()
    # in any other field too (it would fail when the note is written), and in prepared data
    for record, field in (('{"id": "\\udc80", "text": "x"}', "id"), ('{"id": "a", "text": "x", "ward": ["\\uDFFF"]}', "ward")):
        src.write_text(record + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=rf"notes.jsonl:1, field '{field}': invalid Unicode"):
            list(iter_jsonl(src))
    # a surrogate pair written as escapes is one valid character
    src.write_text('{"id": "a", "text": "smile \\ud83d\\ude00"}\n', encoding="utf-8")
    assert [n.text for _, n in _load(src)] == ["smile \U0001F600"]


def test_a_lone_surrogate_in_a_note_to_code_is_an_error(tmp_path):
    src = tmp_path / "notes.jsonl"
    src.write_text('{"id": "b", "text": "essential\\ud800hypertension"}\n', encoding="utf-8")
    r = runner.invoke(app, ["code", "--model", str(tmp_path / "no-model"), str(src)])
    assert isinstance(r.exception, DataError) and "notes.jsonl:1, field 'text': invalid Unicode" in str(r.exception)
    with pytest.raises(ValidationError, match="lone surrogate"):
        Note(id="a", text="essential\ud800hypertension")


@pytest.mark.parametrize("blank", ["\u200b", "\ufeff\u200b \u2060", "\u00ad\n\t"])
def test_invisible_only_text_counts_as_empty(tmp_path, blank, monkeypatch):
    with pytest.raises(DataError, match=r"notes.jsonl:1, field 'text': note text is empty"):
        _load(_jsonl(tmp_path / "notes.jsonl", {"id": "a", "text": blank}))
    csv_file = tmp_path / "notes.csv"
    csv_file.write_text(f"id,text\n1,{blank.strip()}\n", encoding="utf-8")  # one CSV line
    with pytest.raises(DataError, match=r"notes.csv:2, field 'text': note text is empty"):
        _load(csv_file)
    with pytest.raises(ValidationError, match="note text is empty"):
        Note(id="a", text=blank)
    txt = tmp_path / "note.txt"
    txt.write_text(blank, encoding="utf-8")
    with pytest.raises(IcdcoderError, match="the note is empty"):
        cli._notes_to_code(str(txt))
    _stdin(monkeypatch, blank.encode())
    with pytest.raises(IcdcoderError, match="the note is empty"):
        cli._notes_to_code("-")
    with pytest.raises(DataError, match=r"a1.txt: note text is empty"):
        list(iter_codiesp(codiesp_tree(tmp_path, text=blank), lang="es", resolver=CodeResolver(check_ontology=False)))
    with pytest.raises(DataError, match=r"field 'id': missing or empty id"):
        _load(_jsonl(tmp_path / "notes.jsonl", {"id": blank, "text": "x"}))


# ------------------------------------------------------------------------------------------------------- BOM
def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_a_bom_is_stripped_from_jsonl_csv_tsv_and_stdin(tmp_path, monkeypatch):
    lines = json.dumps({"id": "a", "text": "Hypertension."}) + "\n" + json.dumps({"id": "b", "text": "Fever."}) + "\n"
    src = tmp_path / "notes.jsonl"
    src.write_text(BOM + lines, encoding="utf-8")
    assert [n.id for _, n in _load(src)] == ["a", "b"]
    csv_file = tmp_path / "notes.csv"
    csv_file.write_text(BOM + "id,text,codes\nx1,Fever.,R50.9\n", encoding="utf-8")
    [(_, note)] = _load(csv_file)
    assert note.id == "x1" and note.codes == ["R50.9"] and "\ufeffid" not in note.metadata
    root = codiesp_tree(tmp_path, d=BOM + "a1\tI10\n", x=BOM + "a1\tDIAGNOSTICO\ti10\tHyper\t0 5\n")
    [(_, note)] = iter_codiesp(root, lang="es", resolver=CodeResolver(check_ontology=False))
    assert note.id == "a1" and note.codes == ["I10"] and note.evidence_text(note.spans[0]) == "Hyper"
    _stdin(monkeypatch, BOM.encode() + lines.encode())  # JSONL on stdin, not one plain-text note
    assert [(n.id, n.text) for n in cli._notes_to_code("-")] == [("a", "Hypertension."), ("b", "Fever.")]
    _stdin(monkeypatch, (BOM + "Chest pain.").encode())
    assert [(n.id, n.text) for n in cli._notes_to_code("-")] == [("stdin", "Chest pain.")]
    txt = tmp_path / "note.txt"
    txt.write_text(BOM + "Chest pain.", encoding="utf-8")
    assert cli._notes_to_code(str(txt))[0].text == "Chest pain."
    assert read_text_utf8(txt) == BOM + "Chest pain."  # CodiEsp's offsets count every character: kept by default


def test_codiesp_lines_end_at_newline_only(tmp_path):
    # U+2028 and U+0085 are line breaks to str.splitlines, not to the TSV (or to the line numbers an editor shows)
    root = codiesp_tree(tmp_path, d="a1\tI10\n", x="a1\tDIAGNOSTICO\ti10\tHyper\u2028ten\x85sion\t0 5\r\nzz\tOTRO\ti10\tx\t0 1\n")
    with pytest.raises(DataError, match=r"trainX.tsv:2, field 'type'"):
        list(iter_codiesp(root, lang="es", resolver=CodeResolver(check_ontology=False)))
    with pytest.raises(DataError, match=r"offsets must be"):  # "²".isdigit() is True, int("²") fails
        list(iter_codiesp(codiesp_tree(tmp_path / "b", x="a1\tDIAGNOSTICO\ti10\tHyper\t0 ²\n"), lang="es",
                          resolver=CodeResolver(check_ontology=False)))


# ----------------------------------------------------------------------------- missing files, nesting, ids
def test_code_on_a_missing_file_exits_2_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "icdcoder.cli", "code", "--model", str(tmp_path),
                        str(tmp_path / "nonexistent.txt")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "nonexistent.txt: file not found" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["missing.txt", "missing.jsonl", "missing.csv", "folder", "folder.jsonl", "folder.csv"])
def test_missing_files_and_folders_are_clear_errors(tmp_path, name):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "folder.csv").mkdir()
    expected = "is a folder, not a file" if name.startswith("folder") else "file not found"
    r = runner.invoke(app, ["code", "--model", str(tmp_path), str(tmp_path / name)])
    assert isinstance(r.exception, DataError) and str(r.exception).endswith(f"{name}: {expected}")
    if name.endswith((".jsonl", ".csv")):
        assert isinstance(_prepare(tmp_path / name, tmp_path / "out").exception, DataError)
        with pytest.raises(DataError, match=expected):
            list(iter_notes(tmp_path / name))


def test_deeply_nested_json_is_an_error_not_a_recursion_error(tmp_path, monkeypatch):
    src = tmp_path / "deep.jsonl"
    src.write_text('{"id": "a", "text": "x"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep.jsonl:2: JSON nested more than 100 levels deep"):
        _load(src)
    # nesting json can parse but a writer's deeper stack might not: refused too, naming the field
    src.write_text(json.dumps({"id": "a", "text": "x", "extra": json.loads("[" * 150 + "]" * 150)}) + "\n")
    r = _prepare(src, tmp_path / "out")
    assert isinstance(r.exception, DataError) and "deep.jsonl:1, field 'extra': JSON nested" in str(r.exception)
    _stdin(monkeypatch, b'{"id": 1, "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    with pytest.raises(DataError, match=r"<stdin>:1: JSON nested"):
        cli._notes_to_code("-")
    ok = {"id": "a", "text": "x", "extra": json.loads("[" * 90 + "]" * 90)}
    assert [n.id for _, n in _load(_jsonl(src, ok))] == ["a"]


@pytest.mark.parametrize("value,kind", [({"a": 1}, "dict"), ([1], "list"), (True, "bool"), (1.5, "float")])
def test_a_note_id_must_be_a_string_or_an_integer(tmp_path, value, kind):
    with pytest.raises(DataError, match=rf"notes.jsonl:1, field 'id': id must be a string or an integer, got {kind}"):
        _load(_jsonl(tmp_path / "notes.jsonl", {"id": value, "text": "x"}))
    with pytest.raises(DataError, match=rf"field 'patient_id': patient_id must be a string or an integer"):
        _load(_jsonl(tmp_path / "notes.jsonl", {"id": 1, "text": "x", "patient_id": value}))
    with pytest.raises(ValidationError):
        Note(id=value, text="x")
    assert [n.id for _, n in _load(_jsonl(tmp_path / "ok.jsonl", {"id": 7, "text": "x"}, {"id": "b", "text": "y"}))] \
        == ["7", "b"]


@pytest.mark.parametrize("record,match", [
    ({"id": "a", "text": "x", "codes": ["I10"], "code_systems": ["I10"]}, r"field 'code_systems': code_systems must be an object"),
    ({"id": "a", "text": "x", "spans": 5}, r"field 'spans': spans must be a list"),
])
def test_wrongly_typed_fields_are_clear_errors(tmp_path, record, match):
    with pytest.raises(DataError, match=match):
        _load(_jsonl(tmp_path / "notes.jsonl", record))


# ------------------------------------------------------------------------------- staging under signals and races
WRITER = textwrap.dedent("""
    import sys
    from icdcoder.data import Note, write_dataset

    def notes():
        yield "train", Note(id="n0", text="first note")
        print("staged", flush=True)  # inside the staging folder; wait for the test to say go
        sys.stdin.readline()
        for i in range(1, 50):
            yield "train", Note(id=f"n{i}", text=f"note {i}")

    write_dataset(notes(), sys.argv[1], name=sys.argv[2], source="test")
""")


def _writer(out, name):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(out), name], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p


def _staging(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.") and not p.name.endswith(".lock"))


def test_sigterm_removes_the_staging_folder(tmp_path, writers):
    p = writers(tmp_path / "ds", "a")
    assert p.stdout.readline() == "staged\n"
    assert len(_staging(tmp_path)) == 1
    p.send_signal(signal.SIGTERM)
    p.wait()
    assert p.returncode == 128 + signal.SIGTERM  # exited through SystemExit, so the cleanup ran
    assert _staging(tmp_path) == [] and not (tmp_path / "ds").exists()


def test_the_next_run_removes_what_a_kill_9_left(tmp_path, writers):
    p = writers(tmp_path / "ds", "killed")
    assert p.stdout.readline() == "staged\n"
    p.kill()  # SIGKILL: nothing of the writer runs, its staging folder stays
    p.wait()
    [left] = _staging(tmp_path)
    assert (tmp_path / left / "train.jsonl").exists()
    write_dataset([("train", Note(id="next", text="x"))], tmp_path / "ds", name="t", source="test")
    assert _staging(tmp_path) == [] and [n.id for n in load_dataset(tmp_path / "ds")["train"]] == ["next"]


def test_the_next_writer_removes_stale_staging_folders_of_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    write_dataset([("train", Note(id="old", text="old"))], tmp_path / "ds", name="t", source="test")
    stale = [tmp_path / f".ds.tmp-{dead_pid}-0badc0de", tmp_path / f".ds.old-{dead_pid}-0badc0de"]
    live = tmp_path / f".ds.tmp-{__import__('os').getppid()}-0badc0de"  # a running writer that takes no lock
    foreign = [tmp_path / ".ds.tmp-mine", tmp_path / f".other.tmp-{dead_pid}-0badc0de"]
    for folder in stale + [live] + foreign:
        folder.mkdir()
        (folder / "train.jsonl").write_text('{"id": "half"')  # partial note data left by kill -9
    write_dataset([("train", Note(id="new", text="new"))], tmp_path / "ds", name="t", source="test")
    assert [n.id for n in load_dataset(tmp_path / "ds")["train"]] == ["new"]
    assert not any(p.exists() for p in stale)
    assert live.exists() and all(p.exists() for p in foreign)  # not ours, or not dead: left alone


def test_a_swapped_out_copy_is_kept_while_it_is_the_only_one(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    old = tmp_path / f".ds.old-{dead}-0badc0de"  # killed between the two renames: no ds, only this
    old.mkdir()
    write_dataset([("train", Note(id="a", text="x"))], tmp_path / "ds", name="t", source="test")
    assert old.exists()
    write_dataset([("train", Note(id="a", text="x"))], tmp_path / "ds", name="t", source="test")
    assert not old.exists()  # once ds is there again, it is only a leftover


@pytest.fixture
def writers():
    started = []
    yield lambda out, name: started.append(_writer(out, name)) or started[-1]
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def _stderr_until(p, text):
    """stderr lines up to the first holding ``text`` (all of it when the process ends without one)."""
    seen = []
    while line := p.stderr.readline():
        seen.append(line)
        if text in line:
            break
    return "".join(seen)


def test_two_writers_to_one_folder_take_turns(tmp_path, writers):
    first = writers(tmp_path / "ds", "first")
    assert first.stdout.readline() == "staged\n"
    second = writers(tmp_path / "ds", "second")
    second.stdin.write("\n")
    second.stdin.flush()
    # the second waits for the first's lock before it checks or stages anything
    assert "waiting for another writer of" in _stderr_until(second, "waiting for another writer")
    assert len(_staging(tmp_path)) == 1
    first.stdin.write("\n")
    first.stdin.flush()
    for p in (first, second):
        out, err = p.communicate()
        assert p.returncode == 0, err
    assert _staging(tmp_path) == []
    ds = load_dataset(tmp_path / "ds")
    assert ds.name == "second" and [n.id for n in ds["train"]] == [f"n{i}" for i in range(50)]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["manifest.json", "train.jsonl"]


def test_the_writer_context_reports_no_notes_and_keeps_the_lock_file_only(tmp_path):
    with pytest.raises(DataError, match="no notes"):
        with DatasetWriter(tmp_path / "ds", name="t", source="test"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.write.lock"]
