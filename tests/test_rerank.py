"""The reranking coder (icdcoder.coders.rerank): cross-fitting without leakage, the threshold without
val, save and load as data only, and `code` / `serve` with a reranker model."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from icdcoder.cli import app
from icdcoder.coders import Coder
from icdcoder.coders.rerank import RerankCoder
from icdcoder.coders.rerank_features import FEATURES, Sources
from icdcoder.data.note import Note
from icdcoder.evaluation.protocol import evaluate
from icdcoder.io import file_sha256

# small and fast: the matcher over the training codes only, unigram TF-IDF, few trees
FAST = {"matcher": {"label_space": "train", "min_count": 2}, "tfidf": {"word_ngrams": [1, 1], "classifier": "logreg",
                                                                       "C": 10.0},
        "folds": 3, "rounds": 40, "lgbm": {"min_data_in_leaf": 5}}


@pytest.fixture(scope="module")
def fitted(small_synth):
    return RerankCoder(**FAST).fit(small_synth["train"], small_synth["val"])


@pytest.fixture(scope="module")
def model_dir(fitted, tmp_path_factory):
    return fitted.save(tmp_path_factory.mktemp("rerank") / "model")


def test_reranker_codes_synthetic_notes_with_evidence(fitted, small_synth):
    test = small_synth["test"]
    preds = fitted.predict(test)
    assert [p.id for p in preds] == [n.id for n in test]
    metrics = evaluate(test, preds, threshold=fitted.threshold)
    assert metrics["micro_f1"] > 0.6, metrics["micro_f1"]
    assert 0 < fitted.threshold < 1 and fitted.build_info["threshold_source"] == "val"
    suggested = [c for p in preds for c in p.codes if c.score >= fitted.threshold]
    assert suggested and all(c.evidence for c in suggested[:20])
    for note, pred in zip(test, preds):
        for c in pred.codes:
            for ev in c.evidence:
                assert note.text[ev.start:ev.end] == ev.text


def test_save_and_load_give_the_same_scores_and_hold_no_code(fitted, model_dir, small_synth):
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert "ranker.txt" in files and "rerank.json" in files and "matcher/matcher.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".bin", ".py"))], files
    loaded = Coder.load(model_dir)
    assert isinstance(loaded, RerankCoder) and loaded.threshold == fitted.threshold
    notes = small_synth["test"][:8]
    a, b = fitted.predict(notes), loaded.predict(notes)
    for x, y in zip(a, b):
        assert [c.code for c in x.codes] == [c.code for c in y.codes]
        assert np.allclose([c.score for c in x.codes], [c.score for c in y.codes])


def test_a_model_with_other_features_is_refused(model_dir, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(model_dir, copy)
    state = json.loads((copy / "rerank.json").read_text())
    state["features"] = state["features"][:-1]
    (copy / "rerank.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"rerank\.json does not match the sha256"):
        Coder.load(copy)
    meta = json.loads((copy / "coder.json").read_text())
    meta["files"]["rerank.json"] = file_sha256(copy / "rerank.json")  # as a deliberate edit would
    (copy / "coder.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other features"):
        Coder.load(copy)


def test_a_note_that_backs_no_candidate_gets_no_codes(fitted, small_synth):
    """TF-IDF's top k and the nearest notes propose codes for any note; unbacked, they are dropped."""
    notes = [Note(id=f"j{i}", text=t) for i, t in enumerate(["12345", "Lorem ipsum dolor sit amet",
                                                              "\U0001F600\U0001F44D", "Paciente con fiebre"])]
    assert [p.codes for p in fitted.predict(notes)] == [[] for _ in notes]
    assert all(p.codes for p in fitted.predict(small_synth["test"]))


# --------------------------------------------------------------------------------- cross-fitting
MARKED = ["A06.4", "B02.9", "D57.1", "G35", "H40.9", "K50.90", "L40.0", "M10.9", "N20.0", "Q21.1", "J45.909",
          "E66.9", "F32.9", "G43.909", "H52.02", "K29.50", "L50.9", "M06.00", "N62", "R51.9", "D68.1", "E03.9",
          "F41.1", "G47.33"]


def _marked_notes() -> list[Note]:
    """Each note has a common code and one code that no other note has, written as a made-up word only
    that note contains: a source fitted on the note knows the code, one fitted without it cannot."""
    notes = []
    for i, code in enumerate(MARKED):
        marker = f"zq{i}marker"
        text = f"Patient seen for hypertension. Finding {marker} {marker} noted. Plan follow-up."
        notes.append(Note.build(f"m{i}", text, [("I10", "icd10cm"), (code, "icd10cm")]))
    return notes


def _own_rows(note_of, codes, notes):
    return [r for r, (i, c) in enumerate(zip(note_of, codes)) if c == notes[i].codes[-1]]


def test_cross_fitting_never_scores_a_note_with_sources_fitted_on_it():
    notes = _marked_notes()
    assert all(n.codes[-1] in MARKED for n in notes)
    params = {**FAST, "folds": 4, "overlap": False, "tfidf": {**FAST["tfidf"], "min_df": 1}}  # keep the markers
    coder = RerankCoder(**params).fit(notes)
    rows = coder.train_rows
    t_rank, k_score = FEATURES.index("t_rank"), FEATURES.index("k_score")
    # out of fold, no source knows a note's own code: TF-IDF and kNN never propose it
    for r in _own_rows(rows["note"], rows["codes"], notes):
        assert math.isnan(rows["X"][r, t_rank]) and math.isnan(rows["X"][r, k_score]), rows["codes"][r]
    assert rows["y"].sum() > 0  # the common code is still learned from
    # the same rows from sources fitted on the notes themselves show the leak this test guards against
    leaky = Sources.fit(notes, coder.params, None)
    X, _, note_of, codes = coder._rows(leaky, notes)
    own = _own_rows(note_of, codes, notes)
    assert len(own) == len(notes)
    assert all(X[r, k_score] > 0 for r in own)      # the note is its own nearest neighbour
    assert np.median(X[own, t_rank]) <= 1           # and TF-IDF ranks its code first or second


def test_without_val_the_threshold_comes_from_out_of_fold_scores(small_synth):
    coder = RerankCoder(**FAST).fit(small_synth["train"][:120])
    assert coder.build_info["threshold_source"].startswith("3-fold out-of-fold")
    assert 0 < coder.threshold < 1
    rows = coder.train_rows
    assert rows["X"].shape == (len(rows["y"]), len(FEATURES)) and rows["y"].sum() > 0
    assert 0.3 < coder.build_info["candidate_recall_oof"] <= 1


def test_too_few_notes_for_the_folds_is_an_error():
    with pytest.raises(ValueError, match="cannot cross-fit"):
        RerankCoder(folds=5).fit(_marked_notes()[:3])
    with pytest.raises(ValueError, match="at least 2"):
        RerankCoder(folds=1)


# ------------------------------------------------------------------------------- code and serve
def test_code_command_with_a_reranker(model_dir, small_synth, tmp_path):
    src = tmp_path / "notes.jsonl"
    notes = small_synth["test"][:3]
    src.write_text("".join(json.dumps({"id": n.id, "text": n.text}) + "\n" for n in notes))
    out = tmp_path / "coded.jsonl"
    result = CliRunner().invoke(app, ["code", "--model", str(model_dir), str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [n.id for n in notes]
    for row, note in zip(rows, notes):
        suggested = [c["code"] for c in row["codes"] if c["suggested"]]
        assert suggested and set(suggested) & set(note.codes)


def test_serve_with_a_reranker(model_dir, small_synth):
    from icdcoder.serving.app import create_app
    from icdcoder.serving.server import warm_pipeline
    from icdcoder.serving.settings import ServeSettings
    from tests.serving_helpers import running

    note = small_synth["test"][0]
    with running(create_app(warm_pipeline(model_dir), ServeSettings())) as url:
        r = httpx.post(f"{url}/v1/code", json={"text": note.text, "id": "n1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["coder"] == "rerank"
    (result,) = body["results"]
    suggested = [c for c in result["codes"] if c["suggested"]]
    assert suggested and {c["code"] for c in suggested} & set(note.codes)
    for c in result["codes"]:
        for ev in c["evidence"]:
            assert note.text[ev["start"]:ev["end"]] == ev["text"]


def test_generative_prompts_take_candidates_from_the_reranker(fitted, model_dir, small_synth):
    """`candidates_from`: a new note gets the reranker's ranking; a training note its out-of-fold one."""
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    from icdcoder.coders import coder_class
    from tests.test_generative import GEN, TINY

    train, test = small_synth["train"], small_synth["test"]
    coder = coder_class("llm_prompt")(tiny=TINY, generation=GEN,
                                      prompt={"max_note_tokens": 160, "candidates": 3, "candidates_from": str(model_dir)})
    coder.fit(train[:40])

    def listed(messages):
        block = messages[-1]["content"].split("Candidate codes:\n", 1)[1].split("\n\n", 1)[0]
        return [line.split(" ", 1)[0] for line in block.splitlines()]

    assert listed(coder.messages(test[0])) == [c.code for c in fitted.predict([test[0]])[0].codes[:3]]
    oof = [c for c, _ in fitted.out_of_fold[train[0].id][:3]]
    assert listed(coder.messages(train[0], exclude_self=True)) == oof
    assert len(fitted.out_of_fold) == len(train)
