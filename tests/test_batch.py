"""Batch coding (icdcoder.batch): input shards, error rows, sharded resumable output, the local and Ray
engines against the single-process `icdcoder code`, and a job killed halfway then finished by a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icdcoder.batch import JobSpec, iter_coded, plan_shards, read_shard, run_job
from icdcoder.cli import app
from icdcoder.errors import IcdcoderError

runner = CliRunner()


def _write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


@pytest.fixture(scope="module")
def notes_jsonl(small_synth, tmp_path_factory) -> Path:
    notes = small_synth["val"] + small_synth["test"]  # 80 notes
    return _write_jsonl(tmp_path_factory.mktemp("batch") / "notes.jsonl", [{"id": n.id, "text": n.text} for n in notes])


@pytest.fixture(scope="module")
def single_process(tiny_model_dir, notes_jsonl, tmp_path_factory) -> list[dict]:
    """What `icdcoder code --out` writes for the same notes, in one process."""
    out = tmp_path_factory.mktemp("single") / "coded.jsonl"
    result = runner.invoke(app, ["code", "--model", str(tiny_model_dir), str(notes_jsonl), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------ shards
def test_jsonl_shards_cover_every_line_once(tmp_path):
    src = _write_jsonl(tmp_path / "a.jsonl", [{"id": str(i), "text": f"note {i}"} for i in range(23)])
    shards = plan_shards(src, 5)
    assert [s.rows for s in shards] == [5, 5, 5, 5, 3]
    assert [s.first_line for s in shards] == [1, 6, 11, 16, 21]
    ids = [r.id for s in shards for r in read_shard(s)]
    assert ids == [str(i) for i in range(23)]
    assert shards[0].start == 0 and shards[-1].stop == src.stat().st_size
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))


def test_blank_lines_do_not_count_and_lines_are_reported_where_they_are(tmp_path):
    src = _write_jsonl(tmp_path / "a.jsonl", ['{"id": "a", "text": "x"}', "", "  ", '{"id": "b", "text": "y"}',
                                              '{"id": "c", "text": "z"}'])
    shards = plan_shards(src, 2)
    assert [s.rows for s in shards] == [2, 1]
    assert [(r.id, r.line) for s in shards for r in read_shard(s)] == [("a", 1), ("b", 4), ("c", 5)]


def test_csv_shards_keep_quoted_multiline_fields_whole(tmp_path):
    src = tmp_path / "n.csv"
    rows = ['\ufeffid,text'] + [f'{i},"line one of {i}\nline two, with a comma ""quoted"""' for i in range(7)]
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    shards = plan_shards(src, 3)
    assert [s.rows for s in shards] == [3, 3, 1]
    got = [r for s in shards for r in read_shard(s)]
    assert [r.id for r in got] == [str(i) for i in range(7)]
    assert got[4].note.text == 'line one of 4\nline two, with a comma "quoted"'
    assert [r.line for r in got] == [2 + 2 * i for i in range(7)]  # each record spans two physical lines


def test_parquet_shards_read_row_ranges_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "n.parquet"
    table = pa.table({"id": [f"p{i}" for i in range(25)], "text": [f"text {i}" for i in range(25)],
                      "codes": [json.dumps(["I10"])] * 25})  # gold codes in any shape are ignored
    pq.write_table(table, src, row_group_size=7)
    shards = plan_shards(src, 10)
    assert [s.rows for s in shards] == [10, 10, 5]
    assert [r.id for s in shards for r in read_shard(s)] == [f"p{i}" for i in range(25)]


def test_bad_rows_become_error_rows_and_the_rest_is_read(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"id": "ok1", "text": "fine"}\n'
                    b'{not json\n'
                    b'["a", "list"]\n'
                    b'{"id": "e1", "text": ""}\n'
                    b'{"text": "no id"}\n'
                    b'{"id": "bad-utf8", "text": "\xff\xfe"}\n'
                    b'{"id": {"x": 1}, "text": "object id"}\n'
                    b'{"id": "ok2", "text": "also fine"}\n')
    rows = [r for s in plan_shards(src, 100) for r in read_shard(s)]
    assert [(r.line, r.id, r.note is not None) for r in rows] == [
        (1, "ok1", True), (2, None, False), (3, None, False), (4, "e1", False), (5, None, False),
        (6, None, False), (7, None, False), (8, "ok2", True)]
    reasons = [r.error for r in rows if r.error]
    assert "not valid JSON" in reasons[0] and "JSON object" in reasons[1] and "empty" in reasons[2]
    assert "id" in reasons[3] and "UTF-8" in reasons[4] and "string or an integer" in reasons[5]


def test_csv_row_with_wrong_field_count_is_an_error_row(tmp_path):
    src = tmp_path / "n.csv"
    src.write_text("id,text\n1,fine\n2,too,many\n3,fine again\n", encoding="utf-8")
    rows = [r for s in plan_shards(src, 10) for r in read_shard(s)]
    assert [(r.line, r.id, r.error is None) for r in rows] == [(2, "1", True), (3, None, False), (4, "3", True)]
    assert "3 fields" in rows[1].error


def test_folder_input_takes_files_in_name_order_and_refuses_others(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _write_jsonl(d / "b.jsonl", [{"id": "b", "text": "x"}])
    _write_jsonl(d / "a.jsonl", [{"id": "a", "text": "x"}])
    (d / "readme.txt").write_text("not input")
    (d / ".hidden.jsonl").write_text("{broken")
    assert [Path(s.path).name for s in plan_shards(d, 10)] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(IcdcoderError, match="no such file"):
        plan_shards(tmp_path / "missing", 10)
    with pytest.raises(IcdcoderError, match=".jsonl, .csv"):
        plan_shards(d / "readme.txt", 10)


# ------------------------------------------------------------------------------------------ jobs
def test_local_job_equals_single_process_code_row_for_row(tiny_model_dir, notes_jsonl, single_process, tmp_path):
    out = tmp_path / "job"
    result = run_job(JobSpec(model=str(tiny_model_dir)), notes_jsonl, out, rows_per_shard=15)
    assert (result.shards, result.coded, result.errors, result.skipped) == (6, 80, 0, 0)
    assert list(iter_coded(out)) == single_process
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_in"] == 80 and manifest["coded"] == 80 and manifest["shards"] == 6
    assert sum(f["coded_rows"] for f in manifest["files"]) == 80
    # concatenating the shard files in name order is the single-process file itself
    text = "".join((out / "coded" / f"part-{i:05d}.jsonl").read_text() for i in range(6))
    assert [json.loads(x) for x in text.splitlines()] == single_process


def test_every_row_gives_one_coded_or_one_error_row(tiny_model_dir, notes_jsonl, tmp_path):
    lines = notes_jsonl.read_text(encoding="utf-8").splitlines()
    lines[3:3] = ["{broken", json.dumps({"id": "empty", "text": "  "})]
    lines.append(json.dumps({"id": "last", "text": "hypertension and type 2 diabetes"}))
    src = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    out = tmp_path / "job"
    result = run_job(JobSpec(model=str(tiny_model_dir)), src, out, rows_per_shard=10)
    assert (result.coded, result.errors) == (81, 2)
    errors = [json.loads(x) for p in sorted((out / "errors").glob("*.jsonl")) for x in p.read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(4, None), (5, "empty")]
    assert all(e["source"] == str(src) for e in errors)
    coded_ids = [r["id"] for r in iter_coded(out)]
    assert len(coded_ids) == len(set(coded_ids)) == 81 and coded_ids[-1] == "last"


def test_rerun_skips_done_shards_and_redoes_unfinished_ones(tiny_model_dir, notes_jsonl, single_process, tmp_path):
    out = tmp_path / "job"
    spec = JobSpec(model=str(tiny_model_dir))
    run_job(spec, notes_jsonl, out, rows_per_shard=20)
    # what a kill leaves: a shard whose output was written but not marked done, another not started,
    # and atomic_write's staging file of a third
    (out / "done" / "part-00001.json").unlink()
    for sub in ("coded", "errors", "done"):
        (out / sub / "part-00003.jsonl").unlink(missing_ok=True)
    (out / "done" / "part-00003.json").unlink()
    (out / "coded" / ".part-00002.jsonl.abc.tmp").write_text("half")
    (out / "manifest.json").unlink()
    again = run_job(spec, notes_jsonl, out, rows_per_shard=20)
    assert (again.skipped, again.shards, again.coded) == (2, 4, 80)
    assert list(iter_coded(out)) == single_process
    assert not list((out / "coded").glob(".*.tmp"))


def test_a_folder_of_another_job_or_of_other_files_is_refused(tiny_model_dir, notes_jsonl, tmp_path):
    out = tmp_path / "job"
    run_job(JobSpec(model=str(tiny_model_dir)), notes_jsonl, out, rows_per_shard=40)
    with pytest.raises(IcdcoderError, match="another batch job"):
        run_job(JobSpec(model=str(tiny_model_dir)), notes_jsonl, out, rows_per_shard=30)
    with pytest.raises(IcdcoderError, match="another batch job"):
        run_job(JobSpec(model=str(tiny_model_dir), suggested_only=True), notes_jsonl, out, rows_per_shard=40)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(IcdcoderError, match="not a batch job folder"):
        run_job(JobSpec(model=str(tiny_model_dir)), notes_jsonl, other, rows_per_shard=40)
    assert (other / "keep.txt").read_text() == "mine"


def test_parquet_output_reads_back_equal(tiny_model_dir, notes_jsonl, single_process, tmp_path):
    out = tmp_path / "job"
    run_job(JobSpec(model=str(tiny_model_dir), output_format="parquet"), notes_jsonl, out, rows_per_shard=30)
    assert list(iter_coded(out)) == single_process


def test_cli_code_and_predict_with_the_local_engine(tiny_model_dir, notes_jsonl, small_synth, tmp_path):
    out = tmp_path / "coded"
    result = runner.invoke(app, ["code", "--engine", "local", "--model", str(tiny_model_dir), str(notes_jsonl),
                                 "--out", str(out), "--rows-per-shard", "50", "--suggested-only"])
    assert result.exit_code == 0, result.output
    assert "80 notes coded, 0 error rows, 2 shards" in result.output
    assert all(c["suggested"] for r in iter_coded(out) for c in r["codes"])
    # predict: a prepared dataset's split, raw predictions as `predict` writes them
    from icdcoder.data.store import write_dataset

    data = tmp_path / "data"
    write_dataset([("test", n) for n in small_synth["test"]], data, name="t", source="test")
    single = tmp_path / "single.jsonl"
    assert runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                               str(single)]).exit_code == 0
    job = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "--engine", "local", "--model", str(tiny_model_dir), "--data", str(data),
                                 "--out", str(job), "--rows-per-shard", "7", "--format", "parquet"])
    assert result.exit_code == 0, result.output
    from icdcoder.prediction import read_predictions

    assert [p.model_dump(mode="json") for p in read_predictions(single)] == list(iter_coded(job))


# ------------------------------------------------------------------------------------------ Ray
ray = pytest.importorskip("ray", reason="Ray is the optional icdcoder[ray] extra (make test installs it)")


def test_ray_job_with_two_workers_equals_single_process(tiny_model_dir, notes_jsonl, single_process, tmp_path):
    out = tmp_path / "job"
    result = run_job(JobSpec(model=str(tiny_model_dir)), notes_jsonl, out, engine="ray", workers=2,
                     rows_per_shard=10)
    assert (result.shards, result.coded, result.errors) == (8, 80, 0)
    assert list(iter_coded(out)) == single_process
    assert json.loads((out / "manifest.json").read_text())["engine"] == "ray"


def test_killed_ray_job_finishes_on_rerun_without_duplicates(tiny_model_dir, notes_jsonl, single_process, tmp_path):
    """A real kill: the CLI runs the job in its own process group, which is SIGKILLed once two shards are
    done; the rerun codes the rest, and the output is the single-process output exactly."""
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "icdcoder.cli", "code", "--engine", "ray", "--workers", "1", "--model",
           str(tiny_model_dir), str(notes_jsonl), "--out", str(out), "--rows-per-shard", "5", "--batch-size", "1"]
    env = {**os.environ, "ICDCODER_PROGRESS": "off"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list((out / "done").glob("*.json"))) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray's own processes (raylet, the actor) live outside the killed group: stop them before counting,
    # or the actor can finish one more shard in between
    stop = subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stderr
    done_before = len(list((out / "done").glob("*.json")))
    assert 2 <= done_before < 16 and not (out / "manifest.json").exists()
    result = runner.invoke(app, ["code", "--engine", "ray", "--workers", "2", "--model", str(tiny_model_dir),
                                 str(notes_jsonl), "--out", str(out), "--rows-per-shard", "5", "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert f"{done_before} of 16 shards already done" in result.output
    rows = list(iter_coded(out))
    assert rows == single_process and len({r["id"] for r in rows}) == 80


def test_a_generative_coder_codes_the_same_on_ray_actors(small_synth, tmp_path):
    """The generative path on actors (tiny LM on CPU; on GPUs the same with --num-gpus 1 and vLLM): each
    actor loads its own replica, and with the same shards and batches it writes what the local engine does."""
    pytest.importorskip("trl")
    from icdcoder.coders import coder_class
    from tests.test_generative import GEN, PROMPT, TINY

    model = coder_class("llm_sft")(tiny=TINY, prompt=PROMPT, generation=GEN,
                                   sft={"max_steps": 2, "batch_size": 4, "lr": 3e-3}).fit(small_synth["train"][:40])
    model.save(tmp_path / "model")
    src = _write_jsonl(tmp_path / "n.jsonl", [{"id": n.id, "text": n.text} for n in small_synth["test"][:12]])
    spec = JobSpec(model=str(tmp_path / "model"), mode="predict", batch_size=3)
    local = run_job(spec, src, tmp_path / "local", rows_per_shard=4)
    on_ray = run_job(spec, src, tmp_path / "ray", engine="ray", workers=2, rows_per_shard=4)
    assert local.coded == on_ray.coded == 12
    assert list(iter_coded(tmp_path / "ray")) == list(iter_coded(tmp_path / "local"))
