"""Code-centric learning: span data from each source, expansion, the mixing ratio, and the experiment
wiring (mixed training through the ordinary fit, unseen-code F1 and evidence scores in the metrics)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from icdcoder.codes import CodeSystem
from icdcoder.data.note import Dataset, Note, Span
from icdcoder.errors import ConfigError, DataError
from icdcoder.training.mixing import (CodeCentricConfig, build_span_pool, build_training_set, draw_round_robin,
                                      is_span_note, label_provenance, mix, resolve_label_space, span_note,
                                      target_codes)
from icdcoder.training.spans import (SpanExample, coverage, expansion_spans, gold_spans, lm_paraphrases,
                                     ontology_spans, read_spans, write_spans)

CM = CodeSystem.ICD10CM


def _note(id: str, text: str, spans: dict[str, tuple[int, int]], codes: list[str] | None = None) -> Note:
    codes = codes or list(spans)
    return Note(id=id, text=text, codes=codes, code_systems={c: CM for c in codes},
                spans=[Span(code=c, start=s, end=e) for c, (s, e) in spans.items()])


def _ex(code: str, text: str, source: str = "description") -> SpanExample:
    return SpanExample(text=text, code=code, system=CM, source=source)


# ---------------------------------------------------------------- sources
def test_gold_spans_take_the_annotated_text_and_optional_context():
    text = "Past history:\n  essential   hypertension.\nDM2 on metformin."
    s = text.index("essential")
    n = _note("n1", text, {"I10": (s, s + len("essential   hypertension")), "E11.9": (text.index("DM2"),
                                                                                       text.index("DM2") + 3)})
    out = gold_spans([n])
    assert [(e.code, e.text, e.source, e.note_id) for e in out] == [
        ("I10", "essential hypertension", "gold", "n1"), ("E11.9", "DM2", "gold", "n1")]
    assert all(e.context is None for e in out)
    ctx = gold_spans([n], context_chars=5)[1].context
    assert ctx == "ion. DM2 on m"  # "ion.\n" before, " on m" after


def test_gold_spans_from_codiesp_x_files(tmp_path):
    """The CodiEsp loader turns X-file offsets into spans of the Spanish text; gold_spans reads them."""
    from icdcoder.data.codiesp import iter_codiesp

    root = tmp_path / "codiesp"
    (root / "train" / "text_files").mkdir(parents=True)
    (root / "train" / "text_files" / "S1.txt").write_text("Paciente con hipertensión arterial y fiebre.",
                                                          encoding="utf-8")
    (root / "train" / "trainD.tsv").write_text("S1\ti10\nS1\tr50.9\n", encoding="utf-8")
    (root / "train" / "trainX.tsv").write_text("S1\tDIAGNOSTICO\ti10\thipertensión arterial\t13 34\n"
                                               "S1\tDIAGNOSTICO\tr50.9\tfiebre\t37 43\n", encoding="utf-8")
    notes = [n for split, n in iter_codiesp(root, lang="es")]
    out = gold_spans(notes)
    assert {(e.code, e.text) for e in out} == {("I10", "hipertensión arterial"), ("R50.9", "fiebre")}


def test_gold_spans_from_the_synthetic_corpus():
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    notes = [n for split, n in generate_synthetic(SynthConfig(seed=3, n_train=20, n_val=2, n_test=2))
             if split == "train"]
    out = gold_spans(notes)
    assert len(out) == sum(len(n.spans) for n in notes) > 0
    by_note = {n.id: n for n in notes}
    for e in out[:50]:  # each span example is the note's own text for a gold code of that note
        n = by_note[e.note_id]
        assert e.code in n.codes
        assert e.text in " ".join(n.text.split())


def test_ontology_spans_give_descriptions_and_rewrites():
    out = ontology_spans({"I10": CM, "E11.9": "icd10cm"}, max_per_code=6)
    by_code: dict[str, list[SpanExample]] = {}
    for e in out:
        by_code.setdefault(e.code, []).append(e)
    assert set(by_code) == {"I10", "E11.9"}
    assert by_code["I10"][0].source == "description"
    texts = {e.text.lower() for e in by_code["I10"]}
    assert "essential hypertension" in texts and "htn" in texts
    assert all(not e.text.lower().startswith("history of") for e in out)
    assert all(len(v) <= 6 for v in by_code.values())


def test_ontology_spans_skip_codes_the_ontology_does_not_know():
    assert ontology_spans({"Z99.999": CM}) == []


def test_lm_paraphrases_filter_and_cap_what_the_model_writes():
    seen = []

    def fake(prompts):
        seen.extend(prompts)
        return [["- HTN", "essential hypertension", "", "HTN", "elevated BP", "x" * 400, "BP high"]]

    out = lm_paraphrases(fake, [_ex("I10", "essential hypertension")], per_example=2)
    assert [(e.text, e.source, e.code) for e in out] == [("HTN", "lm", "I10"), ("elevated BP", "lm", "I10")]
    assert "essential hypertension" in seen[0]


# ---------------------------------------------------------------- expansion
def test_expansion_covers_rare_and_unseen_codes_only_up_to_the_minimum():
    available = [_ex("A00.0", "cholera"), _ex("B01.9", "varicella"), _ex("B01.9", "chickenpox", "rewrite"),
                 _ex("I10", "hypertension")]
    counts = {"I10": 50, "B01.9": 1}  # A00.0 unseen, B01.9 rare, I10 frequent
    out = expansion_spans({"A00.0": CM, "B01.9": CM, "I10": CM, "C00.0": CM}, counts, available,
                          min_examples=4, max_train_count=2, seed=1)
    per = Counter(e.code for e in out)
    assert per == {"A00.0": 3, "B01.9": 2}  # topped up to 4 with what is available; C00.0 has no phrasing
    assert all(e.source == "expansion" for e in out)
    assert len({e.text for e in out}) == len(out)  # no example repeats
    assert all("cholera" in e.text.lower() for e in out if e.code == "A00.0")
    cov = coverage(["A00.0", "B01.9", "I10", "C00.0"], counts, available + out)
    assert cov["with_documents"] == 2 and cov["with_spans"] == 3 and cov["with_any"] == 3
    assert cov["uncovered"] == ["C00.0"]


def test_expansion_leaves_codes_that_already_have_enough():
    available = [_ex("A00.0", f"cholera {k}") for k in range(5)]
    assert expansion_spans({"A00.0": CM}, {}, available, min_examples=4) == []


# ---------------------------------------------------------------- mixing
def test_round_robin_draws_one_example_per_code_in_turn():
    spans = [_ex("I10", f"htn {k}") for k in range(10)] + [_ex("A00.0", "cholera")]
    out = draw_round_robin(spans, 4, seed=0)
    assert Counter(e.code for e in out) == {"I10": 2, "A00.0": 2}  # the rare code is not crowded out
    assert draw_round_robin(spans, 0) == [] and draw_round_robin([], 5) == []


@pytest.mark.parametrize("ratio, docs, expected_spans", [(0.0, 30, 0), (0.25, 30, 10), (0.5, 30, 30),
                                                         (0.3, 7, 3), (0.9, 10, 90)])
def test_mix_gives_the_configured_ratio_and_keeps_every_document(ratio, docs, expected_spans):
    documents = [Note(id=f"d{k}", text=f"note {k}", codes=[]) for k in range(docs)]
    spans = [_ex("I10", "hypertension"), _ex("A00.0", "cholera")]
    out = mix(documents, spans, ratio, seed=2)
    n_spans = sum(is_span_note(n) for n in out)
    assert n_spans == expected_spans
    assert [n.id for n in out if not is_span_note(n)] == [d.id for d in documents]  # all, once, in order
    if n_spans:
        assert abs(n_spans / len(out) - ratio) < 0.05


def test_mix_interleaves_evenly_so_every_batch_holds_about_the_ratio():
    documents = [Note(id=f"d{k}", text="x", codes=[]) for k in range(300)]
    out = mix(documents, [_ex("I10", "hypertension")], 0.25)
    for start in range(0, len(out), 8):
        batch = out[start:start + 8]
        if len(batch) == 8:
            assert sum(is_span_note(n) for n in batch) in (1, 2, 3)


def test_mix_rejects_a_ratio_of_one():
    with pytest.raises(ValueError, match="span_ratio"):
        mix([], [], 1.0)


def test_span_note_is_a_one_code_note_whose_span_covers_its_text():
    n = span_note(_ex("I10", "HTN", "rewrite"), 7)
    assert n.id == "span:7" and n.codes == ["I10"] and n.text == "HTN"
    assert n.spans == [Span(code="I10", start=0, end=3)] and n.metadata == {"span_source": "rewrite"}


# ---------------------------------------------------------------- configs and storage
def _tiny_dataset() -> Dataset:
    text = "Assessment: essential hypertension and type 2 diabetes."
    tr = [_note(f"t{k}", text, {"I10": (12, 34), "E11.9": (39, 54)}) for k in range(4)]
    te = [Note(id="x1", text="Cholera with dehydration.", codes=["A00.9"], code_systems={"A00.9": CM})]
    return Dataset({"train": tr, "test": te})


def test_target_codes_from_train_by_default_a_file_or_explicit_splits(tmp_path):
    ds = _tiny_dataset()
    assert CodeCentricConfig().label_space == "train"
    assert list(target_codes(CodeCentricConfig(), ds)) == ["E11.9", "I10"]
    assert list(target_codes(CodeCentricConfig(label_space="dataset", evaluation_labels=True), ds)) == \
        ["A00.9", "E11.9", "I10"]
    f = tmp_path / "codes.txt"
    f.write_text("# our hospital's codes\nj449\nI10\n", encoding="utf-8")
    assert target_codes(CodeCentricConfig(label_space=str(f)), ds) == {"J44.9": CM, "I10": CM}
    f.write_text("I10\nnot a code!\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        target_codes(CodeCentricConfig(label_space=str(f)), ds)
    assert "codes.txt:2" in str(e.value)


@pytest.mark.parametrize("space", ["dataset", "train+test", "test", "train+dev"])
def test_a_label_space_read_from_evaluation_gold_is_refused_unless_named(space):
    ds = _tiny_dataset()
    ds.splits["val"] = [Note(id="v1", text="Gout.", codes=["M10.9"], code_systems={"M10.9": CM})]
    with pytest.raises(ConfigError) as e:
        target_codes(CodeCentricConfig(label_space=space), ds)
    assert "evaluation labels" in str(e.value) and "evaluation_labels: true" in str(e.value)
    space_ = resolve_label_space(CodeCentricConfig(label_space=space, evaluation_labels=True), ds)
    assert space_.uses_evaluation_labels and space_.evaluation_only >= 1
    prov = label_provenance(CodeCentricConfig(label_space=space, evaluation_labels=True), space_)
    assert prov["evaluation_labels"] is True and set(prov["code_centric_target"]["splits"]) - {"train"}


def test_no_default_path_puts_a_test_only_code_into_training():
    """The leak this guards against: the old default (every split's codes) wrote span examples for codes
    that only the test gold has. Every default now builds targets, pool and mix from train alone."""
    ds = _tiny_dataset()  # A00.9 occurs only in the test split
    cfg = CodeCentricConfig(span_ratio=0.5, expand={"min_examples": 10, "max_train_count": 5})
    pool, cov = build_span_pool(cfg, ds, log=lambda m: None)
    assert "A00.9" not in {e.code for e in pool} and cov["label_space"]["evaluation_labels"] is False
    mixed, info = build_training_set(cfg, ds, log=lambda m: None)
    assert "A00.9" not in {c for n in mixed for c in n.codes}
    assert info["label_space"]["code_centric_target"]["splits"] == ["train"]
    assert info["label_space"]["code_centric_target"]["codes_only_in_evaluation_gold"] == 0


def test_the_ontology_label_space_reads_no_gold_but_counts_what_it_shares_with_it():
    ds = _tiny_dataset()
    space = resolve_label_space(CodeCentricConfig(label_space="ontology"), ds)
    assert space.source == "ontology" and "A00.9" in space.codes and len(space.codes) > 50_000
    assert space.evaluation_only == 1 and not space.uses_evaluation_labels  # not chosen from the gold


def test_build_training_set_mixes_gold_ontology_and_expansion():
    ds = _tiny_dataset()
    cfg = CodeCentricConfig(span_ratio=0.5, expand={"min_examples": 10, "max_train_count": 0},
                            label_space="dataset", evaluation_labels=True)
    pool, cov = build_span_pool(cfg, ds, log=lambda m: None)
    sources = Counter(e.source for e in pool)
    assert sources["gold"] == 8 and sources["description"] == 3
    per_code = Counter(e.code for e in pool if e.source != "gold")
    assert per_code["A00.9"] == 10 and per_code["I10"] < 10  # only the unseen code is expanded
    assert cov["with_any"] == 3 and cov["uncovered"] == []  # the unseen A00.9 has supervision now
    mixed, info = build_training_set(cfg, ds, log=lambda m: None)
    assert info["documents"] == 4 and info["span_examples"] == 4 and len(mixed) == 8
    # the unseen code (no documents) is drawn first: the small span budget goes to it
    assert info["codes_in_span_examples"] == 1
    assert {n.codes[0] for n in mixed if is_span_note(n)} == {"A00.9"}
    # the coverage of what was drawn, not of the pool: 2 codes have documents, 1 got spans, none lacks both
    assert info["drawn_coverage"] == {"target_codes": 3, "with_documents": 2, "with_span_examples": 1,
                                      "span_only": 1, "without_supervision": 0}
    assert info["label_space"]["evaluation_labels"] is True


def test_spans_file_round_trip_and_errors_name_the_line(tmp_path):
    f = tmp_path / "spans.jsonl"
    examples = [_ex("I10", "HTN", "rewrite"), SpanExample(text="DM2", code="E11.9", system=CM, source="gold",
                                                          note_id="n1", context="pt has DM2 on metformin")]
    assert write_spans(examples, f) == 2
    assert read_spans(f) == examples
    f.write_text(f.read_text() + json.dumps({"text": "x", "code": "I10", "system": "icd10cm", "source": "web"}) + "\n")
    with pytest.raises(DataError) as e:
        read_spans(f)
    assert "spans.jsonl:3" in str(e.value) and "field 'source'" in str(e.value)


def test_experiment_trains_tfidf_on_the_mix_and_reports_unseen_and_evidence(tmp_path):
    """TF-IDF fitted on documents + span examples: the run records the mix and the training size, and
    the metrics carry unseen-code F1 and span-level evidence scores (the synthetic gold has spans)."""
    from icdcoder.experiment import ExperimentConfig, run_experiment

    base = {"seed": 5, "data": {"synth": {"seed": 5, "n_train": 60, "n_val": 15, "n_test": 30}},
            "coder": {"name": "tfidf", "params": {"classifier": "logreg", "C": 10.0}}, "eval_splits": ["test"]}
    doc = run_experiment(ExperimentConfig(name="doc", output=str(tmp_path / "doc"), **base), log=lambda m: None)
    codes = tmp_path / "codes.txt"  # the label space reaches past the training codes through a file
    codes.write_text("A00.0\nQ90.9\n", encoding="utf-8")
    cc = run_experiment(ExperimentConfig(name="cc", output=str(tmp_path / "cc"),
                                         code_centric={"span_ratio": 0.4, "label_space": str(codes)}, **base),
                        log=lambda m: None)
    assert doc["info"]["train_examples"] == 60 and "code_centric_data" not in doc["info"]
    data = cc["info"]["code_centric_data"]
    assert data["documents"] == 60 and data["span_examples"] == 40 and cc["info"]["train_examples"] == 100
    assert cc["info"]["training_tokens"] > doc["info"]["training_tokens"] > 0
    for r in (doc, cc):
        m = r["metrics"]
        assert m["unseen_f1"] == m["by_bucket"]["unseen"]["micro_f1"]
        ev = m["evidence"]
        assert ev["n_gold_spans"] > 0 and ev["n_pred_spans"] > 0 and 0 <= ev["evidence_f1"] <= 1
    # the span examples put codes into TF-IDF's label space that no training document has
    from icdcoder.coders import Coder

    doc_codes = set(Coder.load(tmp_path / "doc" / "model").codes)
    cc_codes = set(Coder.load(tmp_path / "cc" / "model").codes)
    assert doc_codes < cc_codes and {"A00.0", "Q90.9"} <= cc_codes
    # what labels the training saw is recorded in run.json and beside the metrics
    run = json.loads((tmp_path / "cc" / "run.json").read_text())
    assert run["training_labels"]["documents"] == ["train"] and run["training_labels"]["evaluation_labels"] is False
    assert run["training_labels"]["code_centric_target"]["source"] == "file"
    assert cc["metrics"]["training_labels"] == run["training_labels"]
    assert doc["metrics"]["training_labels"]["code_centric_target"] is None
    # a changed code_centric block refits (the old model must not be reused)
    again = run_experiment(ExperimentConfig(name="cc", output=str(tmp_path / "cc"),
                                            code_centric={"span_ratio": 0.2}, **base), log=lambda m: None)
    assert again["info"]["code_centric_data"]["span_examples"] == 15


def test_round_robin_takes_the_codes_asked_for_first():
    spans = [_ex("I10", f"htn {k}") for k in range(10)] + [_ex("A00.0", f"cholera {k}") for k in range(4)]
    out = draw_round_robin(spans, 6, seed=0, first={"A00.0": 4})
    assert [e.code for e in out[:4]] == ["A00.0"] * 4 and len({e.text for e in out[:4]}) == 4
    assert Counter(e.code for e in out) == {"A00.0": 5, "I10": 1}  # then one of each code in turn
    assert len(draw_round_robin(spans, 2, first={"A00.0": 4})) == 2  # n still caps the draw


def test_training_tokens_count_words_for_discriminative_coders_and_trl_tokens_for_lms():
    from types import SimpleNamespace

    from icdcoder.experiment import training_tokens

    notes = [Note(id="a", text="one two three", codes=[]), Note(id="b", text="four five", codes=[])]
    plm = SimpleNamespace(params={"epochs": 3}, history=[{"epoch": 1, "loss": 0.3}])  # PLM-ICD keeps epochs
    assert training_tokens(notes, plm) == 15
    lm = SimpleNamespace(lm_path="x", history=[
        {"stage": "sft", "log": [{"num_tokens": 10.0}, {"num_tokens": 40.0}], "inherited": True},
        {"stage": "grpo", "log": [{"num_tokens": 7.0}, {"loss": 0.1}]},
        {"stage": "phi", "rounds": [{"round": 1, "num_tokens": 5}, {"round": 2}]}])
    assert training_tokens(notes, lm) == 12  # the inherited SFT stage was counted in its own run
    assert training_tokens(notes, SimpleNamespace(lm_path="x", history=[])) == 0  # prompting trains nothing


def test_data_spans_command_writes_nothing_for_a_code_only_the_test_split_has(tmp_path):
    """`icdcoder data spans` with its defaults on a dataset whose test split has a code no training note
    has: no span example for it; asking for every split's codes is refused until allowed, then flagged."""
    from typer.testing import CliRunner

    from icdcoder.cli import app
    from icdcoder.data.store import write_dataset

    ds = _tiny_dataset()
    data = tmp_path / "data"
    write_dataset([(s, n) for s, n in ds], data, name="tiny", source="test")
    runner = CliRunner()
    out = tmp_path / "spans.jsonl"
    r = runner.invoke(app, ["data", "spans", str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    codes = {e.code for e in read_spans(out)}
    assert codes and "A00.9" not in codes and codes <= {"I10", "E11.9"}
    r = runner.invoke(app, ["data", "spans", str(data), "--out", str(out), "--label-space", "dataset"])
    assert r.exit_code != 0 and "evaluation labels" in (r.output + str(r.exception))
    r = runner.invoke(app, ["data", "spans", str(data), "--out", str(out), "--label-space", "dataset",
                            "--allow-evaluation-labels"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "EVALUATION LABELS" in r.output
    assert "A00.9" in {e.code for e in read_spans(out)}
