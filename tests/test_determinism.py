"""The same study config and seed give the same numbers in a fresh process, whatever Python's string hashing.

Each run is a separate ``icdcoder study`` process with its own ``PYTHONHASHSEED``: set and dict orders of
strings differ between them, as they do between two ``make demo`` runs, so any training data order,
label order or sampling that leaks from a set shows up as different metrics.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("trl")

from tests.test_generative import GEN, GRPO, PROMPT, SFT, TINY  # noqa: E402

STUDY = {
    "name": "twice", "seed": 7, "data": {"synth": {"n_train": 40, "n_val": 8, "n_test": 8, "seed": 7}},
    "tiny": TINY, "bootstrap_resamples": 50, "eval_splits": ["test"],
    "runs": [
        {"name": "tfidf", "coder": "tfidf", "params": {"C": 1.0}},
        {"name": "sft", "coder": "llm_sft", "params": {"prompt": {**PROMPT, "candidates": 4, "candidates_from": "tfidf"},
                                                       "generation": GEN, "sft": SFT}},
        {"name": "grpo", "coder": "llm_grpo", "params": {"init_from": "sft", "prompt": PROMPT, "generation": GEN,
                                                         "grpo": {**GRPO, "temperature": 1.0}}},
        {"name": "phi", "coder": "llm_phi", "params": {
            "init_from": "grpo", "prompt": PROMPT, "generation": GEN, "grpo": {**GRPO, "max_steps": -1},
            "phi": {"rounds": 1, "max_notes_per_round": 4, "hint_prob": 0.5, "scan_notes": 8}}},
    ]}


def _rounded(x, home: str):
    """Numbers to 4 decimals, recursively; timings (which never repeat) left out, the run's folder as RUN."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, str):
        return x.replace(home, "RUN")
    if isinstance(x, dict):
        return {k: _rounded(v, home) for k, v in x.items() if not any(t in k for t in ("second", "runtime", "time"))}
    if isinstance(x, list):
        return [_rounded(v, home) for v in x]
    return x


def _outcome(run_dir) -> dict:
    """What a study run produced: each run's test metrics, training logs (losses, gradient norms, rewards)
    and predictions, and the bootstrap comparisons."""
    home = str(run_dir)
    out = {"significance": _rounded(json.loads((run_dir / "report" / "study.json").read_text())["significance"], home)}
    for name in ("tfidf", "sft", "grpo", "phi"):
        run = json.loads((run_dir / name / "run.json").read_text())
        out[name] = {"metrics": _rounded(json.loads((run_dir / name / "metrics-test.json").read_text()), home),
                     "training": _rounded(run.get("training"), home),
                     "predictions": (run_dir / name / "predictions-test.jsonl").read_text()}
    return out


@pytest.mark.slow
def test_a_study_run_twice_gives_the_same_metrics(tmp_path):
    results = []
    for hash_seed in ("1", "2"):
        cfg = {**STUDY, "output": str(tmp_path / f"run{hash_seed}")}
        path = tmp_path / f"study{hash_seed}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "ICDCODER_PROGRESS": "off"}
        done = subprocess.run([sys.executable, "-m", "icdcoder.cli", "study", str(path)], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(_outcome(tmp_path / f"run{hash_seed}"))
    first, second = results
    losses = [r["loss"] for stage in first["phi"]["training"] for r in stage.get("log", []) if "loss" in r]
    assert len(losses) >= 6 and first["tfidf"]["metrics"]["micro_f1"] > 0  # there is something to compare
    for part in first:
        assert first[part] == second[part], part
