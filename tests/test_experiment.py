import json

import pytest
import yaml
from typer.testing import CliRunner

from icdcoder.cli import app
from icdcoder.data import write_dataset
from icdcoder.errors import DataError
from icdcoder.experiment import ExperimentConfig
from tests.test_tfidf import _notes

runner = CliRunner()
KEYS = {"micro_f1", "macro_f1", "micro_precision", "micro_recall", "micro_auc", "macro_auc", "micro_auprc", "p@5",
        "p@8", "p@15", "r@5", "r@8", "r@15", "r_precision", "map", "exact_match", "n_notes", "n_codes"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp") / "data"
    pairs = [("train", n) for n in _notes(80, 0)] + [("val", n) for n in _notes(30, 1)] + \
            [("test", n) for n in _notes(30, 2)]
    write_dataset(pairs, d, name="toy", source="test")
    return d


def _config(tmp_path, data_dir, name, **params):
    cfg = {"name": name, "seed": 1, "data": {"path": str(data_dir)},
           "coder": {"name": "tfidf", "params": {"word_ngrams": [1, 1], **params}}, "output": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_evaluate_compare_end_to_end(tmp_path, data_dir):
    a = _config(tmp_path, data_dir, "strong", C=10.0)
    b = _config(tmp_path, data_dir, "weak", C=0.01, top_k=2)
    for cfg in (a, b):
        r = runner.invoke(app, ["train", str(cfg)])
        assert r.exit_code == 0, r.output
    run = tmp_path / "strong"
    metrics = json.loads((run / "metrics.json").read_text())
    assert KEYS <= set(metrics) and metrics["split"] == "test" and metrics["n_notes"] == 30
    assert metrics["micro_f1"] > 0.9
    info = json.loads((run / "run.json").read_text())
    assert info["fit_seconds"] > 0 and info["predict"]["test"]["notes_per_second"] > 0
    # the stored threshold is what `evaluate` applies when none is given
    thr = json.loads((run / "threshold.json").read_text())["threshold"]
    r = runner.invoke(app, ["evaluate", "--gold", str(data_dir), "--split", "test", "--pred",
                            str(run / "predictions.jsonl"), "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["threshold"] == thr and again["micro_f1"] == pytest.approx(metrics["micro_f1"])
    r = runner.invoke(app, ["evaluate", "--gold", str(data_dir), "--pred", str(run / "predictions.jsonl"),
                            "--threshold", "0.999999", "--json", str(tmp_path / "m2.json")])
    assert json.loads((tmp_path / "m2.json").read_text())["micro_recall"] < again["micro_recall"]
    # a second train reuses the fitted coder and keeps its measured fit time
    r = runner.invoke(app, ["train", str(a)])
    assert "reusing" in r.output
    assert json.loads((run / "run.json").read_text())["fit_seconds"] == info["fit_seconds"]
    assert metrics["threshold_source"].endswith("threshold.json")
    r = runner.invoke(app, ["compare", str(run), str(tmp_path / "weak"), "--out", str(tmp_path / "cmp"),
                            "--resamples", "200"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "strong" in md and "weak" in md
    assert (tmp_path / "cmp" / "report.html").stat().st_size > 1000


def test_per_code_thresholds_are_applied(tmp_path, data_dir):
    cfg = yaml.safe_load(_config(tmp_path, data_dir, "pc").read_text())
    cfg["threshold"] = {"per_code": True}
    (tmp_path / "pc.yaml").write_text(yaml.safe_dump(cfg))
    assert runner.invoke(app, ["train", str(tmp_path / "pc.yaml")]).exit_code == 0
    stored = json.loads((tmp_path / "pc" / "threshold.json").read_text())
    assert stored["per_code_thresholds"]  # tuned for the codes with val positives
    metrics = json.loads((tmp_path / "pc" / "metrics.json").read_text())
    assert metrics["threshold_source"].endswith("threshold.json") and metrics["threshold"] == stored["threshold"]


def test_predict_command(tmp_path, data_dir):
    cfg = _config(tmp_path, data_dir, "p")
    assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    out = tmp_path / "preds" / "val.jsonl"
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "p" / "model"), "--data", str(data_dir),
                            "--split", "val", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 30 and (out.parent / "threshold.json").exists()


@pytest.mark.parametrize("content,match", [
    ("name: x\ndata: {path: a}\ncoder: {name: tfidf}\n", "output"),
    ("name: x\ndata: {path: a, synth: {}}\ncoder: {name: tfidf}\noutput: o\n", "exactly one of"),
    ("name: x\ndata: {path: a}\ncoder: {name: tfidf}\noutput: o\nsurprise: 1\n", "surprise"),
    ("name: [x\n", "malformed YAML"),
])
def test_bad_configs_name_the_field(tmp_path, content, match):
    p = tmp_path / "c.yaml"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        ExperimentConfig.from_yaml(p)


def test_runner_gives_checkpointing_coders_a_checkpoint_dir_and_the_seed(tmp_path, data_dir):
    from icdcoder.coders import register
    from icdcoder.coders.tfidf import TfidfCoder
    from icdcoder.experiment import run_experiment

    seen = {}

    @register("tfidf_ckpt_probe")
    class Probe(TfidfCoder):
        def __init__(self, checkpoint_dir=None, seed=13, **kw):
            seen["checkpoint_dir"], seen["seed"] = checkpoint_dir, seed
            super().__init__(seed=seed, **kw)

    cfg = ExperimentConfig.model_validate({"name": "probe", "seed": 7, "data": {"path": str(data_dir)},
                                           "coder": {"name": "tfidf_ckpt_probe", "params": {"word_ngrams": [1, 1]}},
                                           "output": str(tmp_path / "probe"), "eval_splits": ["test"]})
    run_experiment(cfg, log=lambda m: None)
    assert seen == {"checkpoint_dir": str(tmp_path / "probe" / "checkpoints"), "seed": 7}


def test_changed_coder_config_refits_and_clears_checkpoints(tmp_path):
    from icdcoder.experiment import ExperimentConfig, run_experiment

    data = {"synth": {"n_train": 30, "n_val": 10, "n_test": 10, "seed": 2}}
    cfg = ExperimentConfig(name="t", data=data, coder={"name": "tfidf", "params": {"C": 1.0}},
                           output=str(tmp_path / "run"), eval_splits=["test"])
    logs: list[str] = []
    run_experiment(cfg, log=logs.append)
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "stale").write_text("x")
    run_experiment(cfg, log=logs.append)
    assert any("reusing" in m for m in logs) and (tmp_path / "run" / "checkpoints" / "stale").exists()
    logs.clear()
    changed = cfg.model_copy(update={"coder": {"name": "tfidf", "params": {"C": 2.0}}})
    changed = ExperimentConfig.model_validate(changed.model_dump())
    run_experiment(changed, log=logs.append)
    assert any("changed since it was fitted" in m for m in logs) and not any("reusing" in m for m in logs)
    assert not (tmp_path / "run" / "checkpoints").exists()
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["status"] == "done" and run_json["config"]["coder"]["params"] == {"C": 2.0}
    # a fit that died leaves status "fitting": the next run fits again instead of reusing model/
    run_json["status"] = "fitting"
    (tmp_path / "run" / "run.json").write_text(json.dumps(run_json))
    logs.clear()
    run_experiment(changed, log=logs.append)
    assert not any("reusing" in m for m in logs)


def test_rules_run_after_the_coder_and_are_counted(tmp_path):
    """Gold I50 (a category): with the rule engine the suggestions become I50.9 and each edit is counted."""
    from tests.test_code_command import _notes as rule_notes

    d = tmp_path / "data"
    write_dataset([("train", n) for n in rule_notes(100, 0)] + [("val", n) for n in rule_notes(30, 1)] +
                  [("test", n) for n in rule_notes(30, 2)], d, name="rules", source="test")
    plain = _config(tmp_path, d, "plain", C=10.0)
    ruled = yaml.safe_load(_config(tmp_path, d, "ruled", C=10.0).read_text())
    ruled["rules"] = {"billable": "specify", "excludes1": True}
    (tmp_path / "ruled.yaml").write_text(yaml.safe_dump(ruled))
    for cfg in (plain, tmp_path / "ruled.yaml"):
        assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    edits = json.loads((tmp_path / "ruled" / "run.json").read_text())["predict"]["test"]["rule_edits"]
    assert edits["billable"] > 0 and edits.get("excludes1", 0) > 0
    assert "rule_edits" not in json.loads((tmp_path / "plain" / "run.json").read_text())["predict"]["test"]
    preds = [json.loads(x) for x in (tmp_path / "ruled" / "predictions.jsonl").read_text().splitlines()]
    assert any(e["rule"] == "billable" for p in preds for e in p.get("edits", []))
    f1 = {r: json.loads((tmp_path / r / "metrics.json").read_text())["micro_f1"] for r in ("plain", "ruled")}
    assert f1["ruled"] < f1["plain"]  # the gold here holds the category I50 and both diabetes types
    bad = yaml.safe_load(plain.read_text()) | {"rules": {"billable": "sometimes"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(DataError, match="billable"):
        ExperimentConfig.from_yaml(tmp_path / "bad.yaml")


def test_training_on_train_and_val_tunes_the_threshold_by_cross_validation(tmp_path, data_dir):
    """train_splits [train, val]: the coder sees both, val is not evaluated, and the threshold comes from
    out-of-fold predictions (the val-tuned threshold of the same coder is not reused)."""
    from icdcoder.experiment import cv_threshold, run_experiment
    from icdcoder.coders.tfidf import TfidfCoder

    cfg = ExperimentConfig.model_validate({
        "name": "all", "seed": 1, "data": {"path": str(data_dir)},
        "coder": {"name": "tfidf", "params": {"word_ngrams": [1, 1], "C": 10.0}},
        "train_splits": ["train", "val"], "eval_splits": ["test"], "threshold": {"cv_folds": 3},
        "output": str(tmp_path / "all")})
    out = run_experiment(cfg, log=lambda _: None)
    info = json.loads((tmp_path / "all" / "run.json").read_text())
    assert info["train_examples"] == 110
    assert info["training_labels"]["documents"] == ["train", "val"]
    assert info["training_labels"]["threshold_tuning"] == ["3-fold cross-validation on train+val"]
    assert not (tmp_path / "all" / "metrics-val.json").exists() and out["metrics"]["micro_f1"] > 0.5
    from icdcoder.data import load_dataset

    ds = load_dataset(data_dir)
    notes = ds["train"] + ds["val"]
    expected = cv_threshold(TfidfCoder, {"word_ngrams": [1, 1], "C": 10.0, "seed": 1}, notes, 3, 1)
    assert json.loads((tmp_path / "all" / "threshold.json").read_text())["threshold"] == pytest.approx(expected)


@pytest.mark.parametrize("extra, match", [
    ({"train_splits": ["train", "val"], "eval_splits": ["val", "test"]}, "trained on"),
    ({"train_splits": []}, "at least one split"),
    ({"train_splits": ["train", "val"], "eval_splits": ["test"], "code_centric": {}}, "code-centric"),
])
def test_train_splits_that_cannot_work_are_refused(tmp_path, data_dir, extra, match):
    base = {"name": "x", "data": {"path": str(data_dir)}, "coder": {"name": "tfidf"}, "output": str(tmp_path / "x")}
    with pytest.raises(Exception, match=match):
        ExperimentConfig.model_validate({**base, **extra})
