"""The multi-process training path, run for real: `accelerate launch` with 2 CPU processes (torchrun, gloo).

Checked: SFT, GRPO and PLM-ICD train across both processes (each reports 2 processes); only rank 0 writes
under the run folder (every file opened for writing is audited per rank through a sitecustomize hook);
both ranks end with the same weights, equal to what rank 0 saved; a study interrupted after its SFT
checkpoints resumes from them under the launcher.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("accelerate")

from tests.test_generative import GEN, GRPO, PROMPT, SFT, TINY  # noqa: E402

# Loaded at start-up by every launched process (PYTHONPATH): logs "rank<TAB>path" for each file opened for
# writing under AUDIT_ROOT, whether through open(), os.open (tempfile, atomic writes) or a rename.
SITECUSTOMIZE = r'''
import builtins, io, os
_log, _root = os.environ.get("AUDIT_LOG"), os.environ.get("AUDIT_ROOT")
if _log and _root:
    _open, _os_open, _replace, _rename = builtins.open, os.open, os.replace, os.rename
    _flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def _note(path):
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(_root):
            fd = _os_open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, f"{os.environ.get('RANK', '0')}\t{path}\n".encode())
            finally:
                os.close(fd)

    def _audited_open(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            _note(file)
        return _open(file, mode, *a, **k)

    def _audited_os_open(path, flags, *a, **k):
        if flags & _flags:
            _note(path)
        return _os_open(path, flags, *a, **k)

    def _audited_replace(src, dst, *a, **k):
        _note(dst)
        return _replace(src, dst, *a, **k)

    def _audited_rename(src, dst, *a, **k):
        _note(dst)
        return _rename(src, dst, *a, **k)

    builtins.open = io.open = _audited_open
    os.open, os.replace, os.rename = _audited_os_open, _audited_replace, _audited_rename
'''

# Run by both ranks: fit SFT on the tiny LM and PLM-ICD directly, then each rank writes its weights' digest.
FIT_SCRIPT = r'''
import hashlib, json, sys
from pathlib import Path
import torch
from icdcoder import distributed
from icdcoder.coders.generative.tiny import TinyConfig, build_tiny_lm
from icdcoder.coders.plm_icd import PlmIcdCoder
from icdcoder.data.synth import SynthConfig, generate_synthetic
from icdcoder.training.stages import SFTCoder

out, tiny, sft = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
train = [n for s, n in generate_synthetic(SynthConfig(n_train=24, n_val=2, n_test=2, seed=3)) if s == "train"]
with distributed.main_writes_first() as main:
    if main:
        build_tiny_lm(train, out / "tiny", TinyConfig(seed=3, **tiny))

def digest(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode()); h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

coder = SFTCoder(model=str(out / "tiny"), seed=3, checkpoint_dir=str(out / "ckpt"), prompt={"max_note_tokens": 96},
                 generation={"max_new_tokens": 8}, sft=sft).fit(train)
plm = PlmIcdCoder(epochs=1, batch_size=4, segment_length=32, max_segments=2, seed=3, progress=False).fit(train)
rank = distributed.rank()
(out / f"digest-{rank}.json").write_text(json.dumps({
    "sft": digest(coder.lm()[0].state_dict()), "plm": digest(plm.model.state_dict()),
    "sft_processes": coder.history[-1]["processes"], "plm_processes": plm.history[-1]["processes"],
    "sft_steps": coder.history[-1]["global_step"]}))
if distributed.is_main_process():
    plm.save(out / "plm")
'''


def _launch(args: list[str], tmp_path: Path, audit_root: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "AUDIT_LOG": str(tmp_path / "writes.tsv"), "AUDIT_ROOT": str(audit_root), "ICDCODER_PROGRESS": "off",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu-2proc.yaml"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _writers(tmp_path: Path) -> dict[str, set[str]]:
    by_rank: dict[str, set[str]] = {}
    log = tmp_path / "writes.tsv"
    for line in log.read_text().splitlines() if log.exists() else []:
        rank, path = line.split("\t", 1)
        by_rank.setdefault(rank, set()).add(path)
    return by_rank


def _digest(state) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_processes_train_the_same_weights_and_rank0_saves_them(tmp_path):
    from icdcoder.coders import Coder
    from icdcoder.coders.generative.backends import load_causal_lm

    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    sft = {**SFT, "max_steps": 3, "save_steps": 100}
    _launch([str(script), str(out), json.dumps(TINY), json.dumps(sft)], tmp_path, out)
    d0, d1 = (json.loads((out / f"digest-{r}.json").read_text()) for r in (0, 1))
    assert d0["sft_processes"] == d1["sft_processes"] == 2 and d0["plm_processes"] == 2
    assert d0["sft_steps"] == 3
    assert d0["sft"] == d1["sft"] and d0["plm"] == d1["plm"]  # gradients were averaged: one model on both ranks
    saved = load_causal_lm(out / "ckpt" / "sft" / "final")
    assert _digest(saved.state_dict()) == d0["sft"]  # rank 0 saved exactly the trained weights
    start = load_causal_lm(out / "tiny")
    assert _digest(start.state_dict()) != d0["sft"]
    assert _digest(Coder.load(out / "plm").model.state_dict()) == d0["plm"]
    writers = _writers(tmp_path)
    assert any("/ckpt/sft/" in p for p in writers["0"])
    # rank 1 wrote its digest (the script asks it to: proof that the audit sees rank 1) and nothing else
    assert writers["1"] == {str(out / "digest-1.json")}


def test_a_study_under_the_launcher_writes_once_and_resumes(tmp_path):
    run = tmp_path / "run"
    cfg = {"name": "ddp", "seed": 7, "data": {"synth": {"n_train": 32, "n_val": 8, "n_test": 8, "seed": 7}},
           "tiny": TINY, "bootstrap_resamples": 20, "eval_splits": ["test"], "output": str(run),
           "runs": [
               {"name": "tfidf", "coder": "tfidf", "params": {"C": 1.0}},
               {"name": "sft", "coder": "llm_sft", "params": {
                   "prompt": {**PROMPT, "candidates": 4, "candidates_from": "tfidf"}, "generation": GEN,
                   "sft": {**SFT, "keep_checkpoints": True}}},
               {"name": "grpo", "coder": "llm_grpo", "params": {"init_from": "sft", "prompt": PROMPT,
                                                                "generation": GEN, "grpo": GRPO}},
               {"name": "plm", "coder": "plm_icd", "params": {"epochs": 1, "batch_size": 4, "segment_length": 32,
                                                              "max_segments": 2}}]}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = _launch(["-m", "icdcoder.cli", "study", str(config)], tmp_path, run)
    assert proc.stderr.count("== sft (llm_sft) ==") == 1  # the other rank trains without speaking
    for name in ("tfidf", "sft", "grpo", "plm"):
        assert json.loads((run / name / "run.json").read_text())["status"] == "done"
        assert (run / name / "metrics.json").exists()
    assert (run / "report" / "report.md").exists()
    sft_run = json.loads((run / "sft" / "run.json").read_text())
    grpo_run = json.loads((run / "grpo" / "run.json").read_text())
    assert sft_run["training"][-1]["processes"] == 2 and grpo_run["training"][-1]["processes"] == 2
    assert json.loads((run / "plm" / "run.json").read_text())["training"][-1]["processes"] == 2
    writers = _writers(tmp_path)
    assert any(p.endswith("trainer_state.json") for p in writers["0"])  # the audit sees TRL's checkpoints
    assert not writers.get("1"), sorted(writers.get("1", []))[:10]

    # interrupted after SFT's last checkpoint: its final model and the run's model never written
    (run / "sft" / "checkpoints" / "sft" / "final" / "stage.json").unlink()
    run_json = run / "sft" / "run.json"
    run_json.write_text(json.dumps({**sft_run, "status": "fitting"}))
    (tmp_path / "writes.tsv").unlink()
    proc = _launch(["-m", "icdcoder.cli", "study", str(config)], tmp_path, run)
    resumed = json.loads(run_json.read_text())
    assert resumed["status"] == "done"
    assert resumed["training"][-1]["resumed_from"].endswith("checkpoint-4")
    assert "reusing the fitted coder" in proc.stderr  # the other runs were finished
    assert not _writers(tmp_path).get("1")
