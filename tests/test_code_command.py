"""``icdcoder code`` and the CodingPipeline behind it, on a TF-IDF coder trained on hand-made notes
whose words make the rule engine fire: a category code (I50) and an Excludes1 pair (E10.9 / E11.9)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from icdcoder.cli import app
from icdcoder.coders.tfidf import TfidfCoder
from icdcoder.data.note import Note
from icdcoder.pipeline import CodingPipeline
from icdcoder.rules import RuleConfig
from tests.test_tfidf import _notes as toy_notes

WORDS = {"I10": "hypertension", "E11.9": "dmtwo", "E10.9": "dmone", "I50": "heartfailure", "J18.9": "pneumonia"}
NOTE = "patient admitted with hypertension dmtwo dmone and heartfailure discharged home"

runner = CliRunner()


def _notes(n: int, seed: int) -> list[Note]:
    return toy_notes(n, seed, WORDS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    coder = TfidfCoder(word_ngrams=(1, 1), C=10.0).fit(_notes(120, 0))
    coder.tune_threshold(_notes(40, 1))
    return coder.save(tmp_path_factory.mktemp("model") / "model")


def test_the_model_remembers_its_label_space(model_dir):
    pipeline = CodingPipeline.from_dir(model_dir)
    assert pipeline.coder.label_systems == {c: "icd10cm" for c in WORDS}
    assert pipeline.info()["systems"] == ["icd10cm"] and pipeline.info()["labels"] == len(WORDS)


def test_pipeline_applies_the_rules_and_describes_codes(model_dir):
    coded = CodingPipeline.from_dir(model_dir).code_text(NOTE, id="n1")
    suggested = coded.suggested()
    assert "I10" in suggested and "I50.9" in suggested and "I50" not in suggested
    assert len({"E10.9", "E11.9"} & set(suggested)) == 1  # Excludes1: one of the two diabetes codes
    rules = {e.rule for e in coded.edits}
    assert {"billable", "excludes1"} <= rules
    i10 = next(c for c in coded.codes if c.code == "I10")
    assert i10.description == "Essential (primary) hypertension" and i10.system == "icd10cm"
    assert all(NOTE[e.start:e.end] == e.text for c in coded.codes for e in c.evidence)
    raw = CodingPipeline.from_dir(model_dir, rules=RuleConfig.none()).code_text(NOTE)
    assert {"I50", "E10.9", "E11.9"} <= set(raw.suggested()) and not raw.edits


def test_code_a_text_file_prints_a_table(model_dir, tmp_path):
    note = tmp_path / "discharge.txt"
    note.write_text(NOTE, encoding="utf-8")
    result = runner.invoke(app, ["code", "--model", str(model_dir), str(note)])
    assert result.exit_code == 0, result.output
    assert "note discharge" in result.output and "I50.9" in result.output and "hypertension" in result.output
    assert "excludes1" in result.output  # the edit is reported under the table


def test_code_jsonl_file_to_jsonl(model_dir, tmp_path):
    src = tmp_path / "notes.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"n{i}", "text": t}) for i, t in
                             # the filler words raise other codes a little: candidates below the threshold
                             enumerate([NOTE, "pneumonia patient admitted stable discharged home follow up "
                                              "clinic vitals normal"])) + "\n")
    out = tmp_path / "coded.jsonl"
    result = runner.invoke(app, ["code", "--model", str(model_dir), str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["n0", "n1"]
    assert [c["code"] for c in rows[1]["codes"]][:1] == ["J18.9"]
    # JSONL keeps every candidate the coder returns (the table's --top-k does not cut it), marked suggested
    n_all = len(CodingPipeline.from_dir(model_dir).code_text(NOTE).codes)
    assert len(rows[0]["codes"]) == n_all >= 4 and not all(c["suggested"] for c in rows[1]["codes"])
    cut = runner.invoke(app, ["code", "--model", str(model_dir), str(src), "--jsonl", "--top-k", "1"])
    assert [len(json.loads(line)["codes"]) for line in cut.stdout.splitlines()] == [len(r["codes"]) for r in rows]
    more = runner.invoke(app, ["code", "--model", str(model_dir), str(src), "--jsonl", "--limit", "3"])
    rows = [json.loads(line) for line in more.stdout.splitlines()]
    assert all(len(r["codes"]) == 3 for r in rows) and not all(c["suggested"] for c in rows[1]["codes"])
    only = runner.invoke(app, ["code", "--model", str(model_dir), str(src), "--jsonl", "--suggested-only"])
    rows = [json.loads(line) for line in only.stdout.splitlines()]
    assert all(c["suggested"] for r in rows for c in r["codes"]) and rows[1]["codes"]


def test_evaluate_scores_code_output_at_the_threshold_it_carries(model_dir, tmp_path):
    """`code --out` writes the model's threshold on each line; evaluate applies it (and says so) instead
    of 0.5, and refuses a file that carries none."""
    from icdcoder.data.store import write_dataset
    from icdcoder.evaluation import evaluate_files

    notes = _notes(30, 7)
    write_dataset([("test", n) for n in notes], tmp_path / "data", name="toy", source="test")
    src = tmp_path / "notes.jsonl"
    src.write_text("".join(json.dumps({"id": n.id, "text": n.text}) + "\n" for n in notes))
    out = tmp_path / "coded" / "coded.jsonl"
    out.parent.mkdir()
    assert runner.invoke(app, ["code", "--model", str(model_dir), str(src), "--out", str(out),
                               "--no-rules"]).exit_code == 0
    threshold = json.loads(out.read_text().splitlines()[0])["threshold"]
    assert threshold != 0.5
    m = evaluate_files(tmp_path / "data", "test", out)
    assert m["threshold"] == threshold and "per-line threshold" in m["threshold_source"]
    assert m["micro_f1"] == evaluate_files(tmp_path / "data", "test", out, threshold=threshold)["micro_f1"]
    shown = runner.invoke(app, ["evaluate", "--gold", str(tmp_path / "data"), "--pred", str(out)],
                          env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and f"threshold {threshold:.4g}" in shown.output and "per-line" in shown.output
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"id": r["id"], "codes": [{"code": c["code"], "score": c["score"]}
                                                                  for c in r["codes"]]}) + "\n"
                            for r in map(json.loads, out.read_text().splitlines())))
    refused = runner.invoke(app, ["evaluate", "--gold", str(tmp_path / "data"), "--pred", str(bare)])
    assert refused.exit_code != 0 and "no threshold" in (refused.output + str(refused.exception))


def test_code_from_stdin_text_and_jsonl(model_dir):
    plain = runner.invoke(app, ["code", "--model", str(model_dir), "-", "--jsonl", "--no-rules"], input=NOTE)
    (row,) = [json.loads(line) for line in plain.stdout.splitlines()]
    assert row["id"] == "stdin" and "I50" in [c["code"] for c in row["codes"]] and row["edits"] == []
    lines = json.dumps({"id": "a", "text": NOTE}) + "\n" + json.dumps({"id": "b", "text": "pneumonia"}) + "\n"
    both = runner.invoke(app, ["code", "--model", str(model_dir), "-", "--jsonl"], input=lines)
    assert [json.loads(x)["id"] for x in both.stdout.splitlines()] == ["a", "b"]


def test_code_translates_to_icd9(model_dir):
    result = runner.invoke(app, ["code", "--model", str(model_dir), "-", "--jsonl", "--to", "9"], input=NOTE)
    row = json.loads(result.stdout)
    codes = [c["code"] for c in row["codes"]]
    assert "401.9" in codes and all(c["system"] == "icd9cm" for c in row["codes"])
    assert any(e["rule"] == "gem" and e["codes"][:2] == ["I10", "401.9"] for e in row["edits"])


def test_code_bad_input_names_the_line_and_field(model_dir, tmp_path):
    bad = runner.invoke(app, ["code", "--model", str(model_dir), "-"], input='{"id": "x"}\n')
    assert bad.exit_code != 0 and "<stdin>:1, field 'text'" in str(bad.exception)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "empty" in str(runner.invoke(app, ["code", "--model", str(model_dir), str(empty)]).exception)
    missing = runner.invoke(app, ["code", "--model", str(tmp_path / "nope"), "-"], input=NOTE)
    assert missing.exit_code != 0 and "no saved coder" in str(missing.exception)
