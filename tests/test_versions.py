"""ICD-9 <-> ICD-10 through the GEMs: one code, predictions, gold notes, the CLI, and MIMIC-IV end to end."""

import json

import pytest
from typer.testing import CliRunner

from icdcoder.cli import app
from icdcoder.codes import CodeSystem
from icdcoder.data.note import Note, Span
from icdcoder.data.store import load_dataset, write_dataset
from icdcoder.ontology import get_ontology
from icdcoder.ontology.gem import load_gem
from icdcoder.prediction import Evidence, Prediction, RuleEdit, ScoredCode, read_predictions, write_predictions
from icdcoder.rules.versions import (GemMapper, infer_system_of, map_code, recode_dataset, recode_note,
                                     translate_prediction)

runner = CliRunner()
CM9, CM10 = CodeSystem.ICD9CM, CodeSystem.ICD10CM
SYSTEMS = {"250.00": CM9, "401.9": CM9, "428.0": CM9, "715.90": CM9, "365.70": CM9, "073.0": CM9,
           "I10": CM10, "E11.9": CM10, "0DTJ4ZZ": CodeSystem.ICD10PCS}


def codes(m):
    return m.codes


def test_known_pairs_both_ways():
    for policy in ("all", "first", "prior"):
        assert codes(map_code("250.00", "icd9cm", policy=policy)) == ["E11.9"]
        assert codes(map_code("401.9", "icd9cm", policy=policy)) == ["I10"]
        assert codes(map_code("E11.9", "icd10cm", policy=policy)) == ["250.00"]
    m = map_code("4019", "icd9cm")  # any spelling in, canonical out
    assert m.source == "401.9" and m.targets == (("I10", CM10),) and m.approximate and not m.combination
    exact = map_code("V45.81", "icd9cm")
    assert codes(exact) == ["Z95.1"] and not exact.approximate and exact.n_alternatives == 1


def test_one_to_many_under_each_policy():
    assert codes(map_code("715.90", "icd9cm", policy="all")) == ["M15.9", "M19.90"]
    first = map_code("715.90", "icd9cm", policy="first")
    assert codes(first) == ["M15.9"] and first.n_alternatives == 2 and "1 of 2" in first.reason
    assert codes(map_code("715.90", "icd9cm", policy="prior", prior={"M19.90": 3, "M15.9": 1})) == ["M19.90"]
    assert codes(map_code("715.90", "icd9cm", policy="prior", prior={"M19.90": 2, "M15.9": 2})) == ["M15.9"]  # tie
    # closest: "Osteoarthrosis, unspecified whether generalized or localized, site unspecified" shares
    # more words with "Unspecified osteoarthritis, unspecified site" than with "Polyosteoarthritis, unspecified"
    assert codes(map_code("715.90", "icd9cm", policy="closest")) == ["M19.90"]
    assert codes(map_code("715.90", "icd9cm", policy="prior", prior={})) == ["M19.90"]  # no counts: closest
    # I10 -> 401.0 / 401.1 / 401.9, all approximate: first in file order, the unspecified one, or the most frequent
    assert codes(map_code("I10", "icd10cm", policy="first")) == ["401.0"]
    assert codes(map_code("I10", "icd10cm", policy="closest")) == ["401.9"]
    assert codes(map_code("I10", "icd10cm", policy="prior", prior={"401.1": 40, "401.9": 2})) == ["401.1"]


def test_first_prefers_an_exact_row():
    gem = load_gem(CM10, CM9)  # the ICD-9 -> ICD-10 GEM never mixes exact and approximate rows
    src = next(s for s, rows in gem.items()
               if len(rows) > 1 and not any(r.combination or r.no_map for r in rows)
               and rows[0].approximate and any(not r.approximate for r in rows))
    exact = next(r.target for r in gem[src] if not r.approximate)
    m = map_code(src, CM10, policy="first")
    assert codes(m) == [exact] and not m.approximate


def test_combination_takes_one_target_per_choice_list():
    gem = load_gem(CM9, CM10)
    src = next(s for s, rows in gem.items() if all(r.combination for r in rows) and len({r.scenario for r in rows}) == 1
               and any(sum(r.choice_list == c for r in rows) > 1 for c in {r.choice_list for r in rows}))
    lists = {}
    for r in gem[src]:
        lists.setdefault(r.choice_list, []).append(r.target)
    for policy in ("first", "prior"):
        m = map_code(src, CM9, policy=policy)
        assert m.combination and len(m.targets) == len(lists)
        assert [t for t in m.codes] == [targets[0] for targets in lists.values()]
    everything = map_code(src, CM9, policy="all")
    assert set(everything.codes) == {t for targets in lists.values() for t in targets}
    assert codes(map_code("073.0", "icd9cm")) == ["A70", "J17"]  # ornithosis with pneumonia


def test_no_map_and_unknown_codes_give_no_target():
    m = map_code("365.70", "icd9cm")  # glaucoma stage unspecified: NoDx
    assert m.no_map and m.targets == () and "no equivalent" in m.reason
    assert map_code("999.99", "icd9cm").no_map  # not a code at all
    # a source the (older) GEM lacks goes through its nearest ancestor the GEM has
    via = map_code("C43.121", "icd10cm")  # newer than the GEM
    assert via.codes == ["172.1"] and via.approximate and "via C43.12" in via.reason


def pred(*items, edits=()):
    return Prediction(id="n1", codes=[ScoredCode(code=c, score=s, evidence=ev, flags=fl) for c, s, ev, fl in items],
                      edits=list(edits))


def test_translate_carries_scores_evidence_and_records_edits():
    ev_a, ev_b = Evidence(start=0, end=4, text="htn."), Evidence(start=10, end=20, text="hypertense")
    old = RuleEdit(rule="exists", action="drop", codes=["999.99"], reason="earlier")
    p = pred(("401.9", 0.9, [ev_a], []), ("401.1", 0.6, [ev_b, ev_a], ["x"]), ("250.00", 0.4, [], []),
             ("365.70", 0.8, [], []), ("E11.9", 0.3, [], []), ("0DTJ4ZZ", 0.2, [], []), ("zzz", 0.1, [], []),
             edits=[old])
    systems = dict(SYSTEMS, **{"401.1": CM9})
    out = translate_prediction(p, systems.get, 10, approximate_weight=0.5)
    got = {c.code: c for c in out.codes}
    assert list(got) == ["I10", "E11.9", "0DTJ4ZZ"]  # 401.9 and 401.1 merge into I10; E11.9 from both sides
    assert got["I10"].score == pytest.approx(0.45) and got["I10"].evidence == [ev_a, ev_b]
    assert got["I10"].flags == ["gem_approximate", "x"]
    assert got["E11.9"].score == pytest.approx(0.3)  # max(0.4 * 0.5, 0.3)
    assert out.edits[0] == old and out.scored
    replaces = [e.codes for e in out.edits if e.action == "replace"]
    drops = {e.codes[0]: e.reason for e in out.edits if e.action == "drop" and e.rule == "gem"}
    assert replaces == [["401.9", "I10"], ["401.1", "I10"], ["250.00", "E11.9"]]
    assert set(drops) == {"365.70", "zzz"} and drops["zzz"] == "code system unknown"
    assert got["0DTJ4ZZ"] == p.codes[-2] and "0DTJ4ZZ" not in drops  # already ICD-10: passes unchanged
    back = translate_prediction(p, systems.get, 9)
    assert "icd9pcs" in {e.reason for e in back.edits if e.codes == ["0DTJ4ZZ"]}.pop()  # no packaged GEM
    assert all(get_ontology().exists(c.code, CM9) for c in back.codes)


def test_translate_policy_and_unscored():
    p = Prediction.from_code_set("n2", ["715.90"])
    out = translate_prediction(p, SYSTEMS.get, 10, policy="first")
    assert [c.code for c in out.codes] == ["M15.9"] and not out.scored
    out = translate_prediction(p, SYSTEMS.get, 10, policy="all")
    assert [c.code for c in out.codes] == ["M15.9", "M19.90"]
    assert out.edits == [RuleEdit(rule="gem", action="replace", codes=["715.90", "M15.9", "M19.90"],
                                  reason=out.edits[0].reason)]


def note10():
    text = "Hypertension and type 2 diabetes. Osteoarthritis."
    return Note(id="a", text=text, codes=["I10", "E11.9", "M19.90", "Z99.89"],
                code_systems={c: CM10 for c in ["I10", "E11.9", "M19.90", "Z99.89"]},
                spans=[Span(code="I10", start=0, end=12), Span(code="E11.9", start=17, end=32),
                       Span(code="M19.90", start=34, end=48)], patient_id="p1")


def test_recode_note_repoints_spans_and_merges():
    note, edits = recode_note(note10(), 9, policy="all")
    assert note.codes[:3] == ["401.0", "401.1", "401.9"] and "250.00" in note.codes
    assert {s.code for s in note.spans if (s.start, s.end) == (0, 12)} == {"401.0", "401.1", "401.9"}
    assert [s.code for s in note.spans if s.start == 34] == ["715.30", "715.90"]
    assert all(s == CM9 for s in note.code_systems.values()) and note.patient_id == "p1"
    first, _ = recode_note(note10(), 9, policy="first")
    assert [s.code for s in first.spans] == ["401.0", "250.00", "715.30"]
    assert all(e.action == "replace" for e in edits)
    # two ICD-9 sources with one target merge into one code and one span
    n9 = Note.build("b", "Hypertension, malignant and benign.", [("401.0", "icd9cm"), ("401.1", "icd9cm")])
    n9 = n9.model_copy(update={"spans": [Span(code="401.0", start=0, end=12), Span(code="401.1", start=0, end=12)]})
    back, _ = recode_note(n9, 10)
    assert back.codes == ["I10"] and back.spans == [Span(code="I10", start=0, end=12)]


def test_recode_dataset_report_and_drop():
    n = Note.build("c", "Glaucoma, stage unspecified; essential hypertension.",
                   [("365.70", "icd9cm"), ("401.9", "icd9cm"), ("715.90", "icd9cm")])
    items, report = recode_dataset([("train", n)], 10)
    (split, out), = items
    assert split == "train" and out.codes == ["I10", "M19.90"]  # closest, the default
    assert report["codes_in"] == 3 and report["codes_out"] == 2 and report["no_map"] == 1
    assert report["one_to_many"] == 1 and report["approximate"] == 2 and report["no_map_codes"] == {"365.70": 1}
    _, edits = recode_note(n, 10)
    assert edits[0] == RuleEdit(rule="gem", action="drop", codes=["365.70"], reason=edits[0].reason)


def test_infer_system_of():
    s = infer_system_of(10)
    assert (s("401.9"), s("38.93"), s("I10"), s("??")) == (CM9, CodeSystem.ICD9PCS, CM10, None)
    assert infer_system_of(10, "icd9cm")("E812.0") == CM9


def test_cli_recode(tmp_path):
    src = tmp_path / "icd10"
    write_dataset([("train", note10()), ("test", Note.build("t", "Diabetes.", [("E11.9", "icd10cm")]))], src,
                  name="tiny", source="test")
    out = tmp_path / "icd9"
    r = runner.invoke(app, ["data", "recode", str(src), "--to", "9", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "one to many" in r.output
    ds = load_dataset(out)
    assert ds.manifest["options"]["recode"]["codes_in"] == 5 and ds.manifest["options"]["recode"]["no_map"] == 0
    # the default policy, closest: I10 -> 401.9 (unspecified), M19.90 -> 715.90 (closest description)
    assert ds["test"][0].codes == ["250.00"] and ds["train"][0].codes == ["401.9", "250.00", "715.90", "V46.8"]
    assert ds.manifest["options"]["policy"] == "closest" and ds.manifest["name"] == "tiny-icd9"
    r = runner.invoke(app, ["data", "recode", str(src), "--to", "8", "--out", str(out)])
    assert r.exit_code != 0 and "9 or 10" in r.output


def test_cli_translate_with_from_system(tmp_path):
    src = tmp_path / "in" / "pred.jsonl"
    write_predictions([pred(("715.90", 0.8, [], []), ("365.70", 0.7, [], []))], src)
    (src.parent / "threshold.json").write_text(json.dumps({"threshold": 0.3, "per_code_thresholds": {"715.90": 0.6}}))
    prior = tmp_path / "prior"
    write_dataset([("train", Note.build("p", "OA.", [("M19.90", "icd10cm")]))], prior, name="p", source="test")
    dst = tmp_path / "out" / "pred10.jsonl"
    r = runner.invoke(app, ["translate", str(src), "--to", "10", "--from-system", "icd9cm", "--policy", "prior",
                            "--prior", str(prior), "--approximate-weight", "0.5", "--out", str(dst)])
    assert r.exit_code == 0, r.output
    assert "1 codes mapped, 1 dropped" in " ".join(r.output.split())
    (p,) = read_predictions(dst)
    assert [(c.code, c.score) for c in p.codes] == [("M19.90", 0.4)]
    assert json.loads((dst.parent / "threshold.json").read_text()) == {"threshold": 0.3,
                                                                      "per_code_thresholds": {"M19.90": 0.6}}


@pytest.fixture(scope="module")
def mimic_versions(tmp_path_factory):
    """A MIMIC-IV folder whose ICD-9 era and ICD-10 era admissions describe the same three conditions."""
    from icdcoder.data.mimic import iter_mimic
    from tests.mimic_fixtures import write_mimic4

    words = {"heart failure": [("4280", 9), ("I509", 10)], "type 2 diabetes": [("25000", 9), ("E119", 10)],
             "essential hypertension": [("4019", 9), ("I10", 10)]}
    phrases = list(words)
    adms = []
    for i in range(18):
        era = 9 if i < 12 else 10
        picked = [phrases[i % 3], phrases[(i + 1) % 3]] if i % 2 else [phrases[i % 3]]
        dx = [code for ph in picked for code in words[ph] if code[1] == era]
        adms.append({"hadm": 30000000 + i, "subject": 100 + i, "admittime": f"21{50 + i}-01-01 10:00:00",
                     "notes": [f"Discharge summary. History of {' and '.join(picked)}. Stable at discharge."],
                     "dx": dx, "px": []})
    root = write_mimic4(tmp_path_factory.mktemp("mimic4"), adms)
    notes = {v: [n for _, n in iter_mimic(root, version=4, icd_version=v, codes=("dx",))] for v in (9, 10)}
    return notes


def test_mimic_iv_train_icd9_predict_icd10(mimic_versions, tmp_path):
    from icdcoder.coders.tfidf import TfidfCoder
    from icdcoder.evaluation import evaluate

    icd9, icd10 = mimic_versions[9], mimic_versions[10]
    assert len(icd9) == 12 and len(icd10) == 6
    assert {s for n in icd9 for s in n.code_systems.values()} == {CM9}
    coder = TfidfCoder(word_ngrams=(1, 2), C=10.0, min_df=1).fit(icd9)
    coder.threshold = 0.3
    model = coder.save(tmp_path / "model")
    preds = coder.predict(icd10)
    write_predictions(preds, tmp_path / "pred9.jsonl")
    r = runner.invoke(app, ["translate", str(tmp_path / "pred9.jsonl"), "--to", "10", "--model", str(model),
                            "--out", str(tmp_path / "t" / "pred10.jsonl")])
    assert r.exit_code == 0, r.output
    translated = read_predictions(tmp_path / "t" / "pred10.jsonl")
    assert json.loads((tmp_path / "t" / "threshold.json").read_text())["threshold"] == 0.3
    got = {c.code for p in translated for c in p.codes}
    assert got == {"I50.9", "E11.9", "I10"} and all(get_ontology().exists(c, CM10) for c in got)
    assert all(e.rule == "gem" and e.action == "replace" for p in translated for e in p.edits)
    direct = translate_prediction(preds[0], coder.system_of, 10)
    assert direct == translated[0]
    m = evaluate(icd10, translated, threshold=0.3)
    assert m["micro_f1"] > 0.8  # the words say it all: the mapping is what is tested
    assert evaluate(icd10, preds, threshold=0.3, allow_extra=True)["micro_f1"] == 0.0  # untranslated: no overlap


def test_mapper_caches():
    m = GemMapper("first")
    assert m.map("250.00", "icd9cm") is m.map("250.00", CM9)
