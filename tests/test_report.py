import json
import re

import numpy as np
import pytest

from icdcoder.data.note import Note
from icdcoder.data.store import write_dataset
from icdcoder.errors import DataError
from icdcoder.evaluation import RunData, ScoreMatrix, all_metrics, compare, compare_runs, evaluate_files
from icdcoder.io import write_json
from icdcoder.prediction import Prediction, write_predictions


def _matrices(n=60, k=12, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.random((n, k)) < 0.2
    ids, codes = [f"n{i}" for i in range(n)], [f"c{j}" for j in range(k)]
    gold = {ids[i]: [codes[j] for j in range(k) if Y[i, j]] for i in range(n)}
    out = []
    for signal in (0.2, 1.0):
        S = signal * Y + rng.random((n, k))
        out.append(ScoreMatrix.from_dicts(gold, {ids[i]: {codes[j]: float(S[i, j]) for j in range(k)}
                                                 for i in range(n)}, codes=codes))
    return out


def _external_refs(html: str) -> list[str]:
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', html, flags=re.I)
    return [r for r in refs if not r.startswith("data:")] + re.findall(r"url\(", html) + re.findall(r"@import", html)


def test_compare_writes_self_contained_reports(tmp_path):
    a, b = _matrices()
    ma, mb = all_metrics(a, 0.6), all_metrics(b, 0.6)
    for m in (ma, mb):
        m["threshold"] = 0.6
        m["by_bucket"] = {"unseen": {"micro_f1": 0.1}, "1-10": {"micro_f1": 0.2}, "11-100": {"micro_f1": 0.3},
                          ">100": {"micro_f1": 0.4}}
    res = compare([("weak", ma, RunData(a, 0.6)), ("strong", mb, b), ("curve-only", mb, {"precision": [1, .5],
                                                                                          "recall": [.1, .9]})],
                  tmp_path / "out", n_resamples=200)
    md = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"{ma['micro_f1']:.4f}" in md and f"{mb['micro_f1']:.4f}" in md
    assert f"{ma['micro_f1']:.4f}" in html and f"{mb['map']:.4f}" in html
    assert "weak" in html and "strong" in html
    assert _external_refs(html) == []
    assert html.count("data:image/png;base64,") == 2  # bucket bars + PR curves
    # significance: strong vs weak computed; curve-only has no per-note data -> skipped
    sig = res["significance"]
    assert sig[0]["a"] == "weak" and sig[0]["micro_f1"]["diff"] > 0
    assert "skipped" in sig[1]
    assert "p=" in md
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes left nothing behind


def _dataset(tmp_path):
    def note(i, codes):
        return Note.build(i, "text of note " + i, [(c, "icd10cm") for c in codes])

    items = [("train", note("t1", ["I50.9", "E11.9"])), ("train", note("t2", ["I50.9"])),
             ("val", note("v1", ["I50.9"])),
             ("test", note("s1", ["I50.9", "E11.9"])), ("test", note("s2", ["J18.9"])), ("test", note("s3", ["I50.9"]))]
    write_dataset(items, tmp_path / "data", name="tiny", source="test")
    return tmp_path / "data"


def test_evaluate_files_threshold_sources(tmp_path, monkeypatch):
    data = _dataset(tmp_path)
    run = tmp_path / "run"
    preds = [Prediction.from_scores("s1", {"I50.9": .9, "E11.9": .4}), Prediction.from_scores("s2", {"J18.9": .6}),
             Prediction.from_scores("s3", {"I50.9": .3, "J18.9": .2})]
    write_predictions(preds, run / "predictions.jsonl")
    with pytest.raises(DataError, match="no threshold is stored"):  # it refuses to guess 0.5
        evaluate_files(data, "test", run / "predictions.jsonl")
    r = evaluate_files(data, "test", run / "predictions.jsonl", threshold=0.5)
    # .5: TP I50.9(s1) J18.9(s2); FN E11.9(s1) I50.9(s3) -> P 1, R 1/2
    assert r["threshold_source"] == "argument" and r["micro_recall"] == pytest.approx(0.5)
    assert r["by_bucket"]["unseen"]["support"] == 1  # J18.9 never in train
    write_json(run / "threshold.json", {"threshold": 0.25})
    r = evaluate_files(data, "test", run / "predictions.jsonl")
    # .25: adds E11.9(s1) TP and I50.9(s3) TP -> recall 1
    assert r["threshold"] == 0.25 and r["micro_recall"] == 1.0 and r["threshold_source"].endswith("threshold.json")
    assert evaluate_files(data, "test", run / "predictions.jsonl", threshold=0.95)["micro_recall"] == 0
    import icdcoder.evaluation.analysis as an
    monkeypatch.setattr(an, "ontology_parent", lambda: None)  # prefixes only: keep the test fast
    r = evaluate_files(data, "test", run / "predictions.jsonl", analysis=True)
    assert r["analysis"]["most_missed"] == [] and len(r["analysis"]["notes"]) == 3
    seen = evaluate_files(data, "test", run / "predictions.jsonl", codes="seen")
    assert seen["n_codes"] == 2
    write_predictions(preds[:2], tmp_path / "bad" / "predictions.jsonl")
    with pytest.raises(DataError, match="'s3'"):
        evaluate_files(data, "test", tmp_path / "bad" / "predictions.jsonl", threshold=0.5)


def test_compare_runs(tmp_path):
    data = _dataset(tmp_path)
    for name, scores in (("a", {"s1": {"I50.9": .9}, "s2": {"I50.9": .8}, "s3": {}}),
                         ("b", {"s1": {"I50.9": .9, "E11.9": .8}, "s2": {"J18.9": .7}, "s3": {"I50.9": .9}})):
        run = tmp_path / name
        write_predictions([Prediction.from_scores(i, s) for i, s in scores.items()], run / "predictions.jsonl")
        write_json(run / "metrics.json", evaluate_files(data, "test", run / "predictions.jsonl", threshold=0.5))
    res = compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp", n_resamples=200)
    html = (tmp_path / "cmp" / "report.html").read_text()
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert mb["micro_f1"] == 1.0 and "1.0000" in html
    assert res["significance"][0]["micro_f1"]["diff"] > 0
    assert _external_refs(html) == []
    with pytest.raises(DataError, match="metrics.json"):
        compare_runs([tmp_path / "nothing"], tmp_path / "cmp2")


def test_the_report_says_which_labels_each_run_trained_on_and_flags_evaluation_labels(tmp_path):
    from icdcoder.evaluation.report import compare

    clean = {"micro_f1": 0.5, "training_labels": {"documents": ["train"], "code_centric_target": None,
                                                  "evaluation_labels": False}}
    leaky = {"micro_f1": 0.6, "training_labels": {
        "documents": ["train"], "evaluation_labels": True,
        "code_centric_target": {"label_space": "dataset", "source": "splits", "splits": ["train", "val", "test"]}}}
    compare([("clean", clean, None), ("leaky", leaky, None)], tmp_path / "r", n_resamples=10)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| labels in training | train | train+val+test EVALUATION LABELS |" in md
    assert "**Warning:** leaky trained with labels read from evaluation splits" in md
    assert "leaky trained with labels" in (tmp_path / "r" / "report.html").read_text()
    compare([("clean", clean, None)], tmp_path / "r2")
    assert "Warning" not in (tmp_path / "r2" / "report.md").read_text()
