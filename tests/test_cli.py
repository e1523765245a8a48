import json
import subprocess
import sys

from typer.testing import CliRunner

from icdcoder.cli import app

runner = CliRunner()


def test_help_explains_each_command():
    for args in ([], ["data"], ["data", "prepare"], ["ontology"]):
        r = runner.invoke(app, args + ["--help"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "prepare", "codiesp", "--help"], env={"COLUMNS": "250"})
    assert "--lang" in r.output and "machine-translated English" in r.output


def test_prepare_codiesp_and_stats(codiesp_root, tmp_path):
    out = tmp_path / "cd"
    r = runner.invoke(app, ["data", "prepare", "codiesp", "--root", str(codiesp_root), "--lang", "en",
                            "--out", str(out), "--no-check-codes"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.jsonl", "val.jsonl"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["n_notes"] == 500 and manifest["splits"]["val"]["n_labels"] == 2677
    r = runner.invoke(app, ["data", "stats", str(out), "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert stats["splits"]["val"]["notes"] == 250
    # about one diagnosis label in six of dev has a code absent from train
    assert stats["labels_by_train_frequency"]["val"]["unseen"] == 477


def test_prepare_jsonl_parquet(tmp_path):
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "Hypertension.", "codes": ["I10"]}) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    r = runner.invoke(app, ["data", "prepare", "jsonl", "--path", str(src), "--split", "test", "--out", str(out),
                            "--format", "parquet", "--no-check-codes"])
    assert r.exit_code == 0, r.output
    assert (out / "test.parquet").exists()


def test_bad_input_gives_a_clear_error_and_exit_2(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "a", "text": "x"}\n{"id": "b"\n', encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "icdcoder.cli", "data", "prepare", "jsonl", "--path", str(src),
                        "--out", str(tmp_path / "o"), "--no-check-codes"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.jsonl:2: malformed JSON" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_prepare_mimic_commands_on_fixtures(tmp_path):
    from tests.mimic_fixtures import write_mimic3, write_mimic4

    for version, writer in (("mimic3", write_mimic3), ("mimic4", write_mimic4)):
        root = tmp_path / version
        writer(root, gz=True)
        out = tmp_path / f"{version}-out"
        args = ["data", "prepare", version, "--root", str(root), "--own-split", "time", "--ratios", "0.5,0.25,0.25",
                "--out", str(out), "--format", "jsonl", "--no-check-codes"]
        if version == "mimic4":
            args += ["--icd-version", "9"]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["source"] == "mimic" and sum(s["n_notes"] for s in manifest["splits"].values()) > 0
        assert not any(p.name.startswith(".") for p in root.rglob("*"))  # nothing written beside the raw files
    r = runner.invoke(app, ["data", "prepare", "mimic3", "--root", str(tmp_path / "mimic3"), "--own-split", "time",
                            "--ratios", "0.5,0.5", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "three numbers" in r.output
