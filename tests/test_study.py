"""Study configs: the packaged demo and the shipped real-study configs validate; bad ones are refused."""

from pathlib import Path

import pytest

from icdcoder.coders.base import BUILTIN
from icdcoder.errors import DataError
from icdcoder.study import StudyConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "icdcoder" / "resources" / "study-demo.yaml"
CONFIGS = sorted((REPO / "configs").glob("study-*.yaml"))


@pytest.mark.parametrize("path", [DEMO, *CONFIGS], ids=lambda p: p.name)
def test_shipped_study_configs_validate(path):
    cfg = StudyConfig.from_yaml(path)
    assert all(r.coder in BUILTIN for r in cfg.runs)
    names = [r.name for r in cfg.runs]
    assert names[-4:] == ["prompt", "sft", "grpo", "phi"] and names[:2] == ["tfidf", "plm_icd"]
    by_name = {r.name: r for r in cfg.runs}
    assert by_name["grpo"].params["init_from"] == "sft" and by_name["phi"].params["init_from"] == "grpo"


def test_real_study_configs_use_lora_r8_and_vllm():
    assert len(CONFIGS) >= 2
    for path in CONFIGS:
        runs = {r.name: r.params for r in StudyConfig.from_yaml(path).runs}
        assert runs["sft"]["sft"]["lora"]["r"] == 8
        assert runs["grpo"]["grpo"]["trainer_args"]["use_vllm"] is True
        assert runs["prompt"]["generation"]["backend"] == "vllm"


def _write(tmp_path, runs):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "data": {"synth": {}}, "output": str(tmp_path / "o"), "runs": runs}))
    return p


def test_init_from_must_name_an_earlier_run(tmp_path):
    p = _write(tmp_path, [{"name": "grpo", "coder": "llm_grpo", "params": {"init_from": "sft"}},
                          {"name": "sft", "coder": "llm_sft"}])
    with pytest.raises(DataError, match="init_from 'sft' names no earlier run"):
        StudyConfig.from_yaml(p)


def test_duplicate_run_names_are_refused(tmp_path):
    p = _write(tmp_path, [{"name": "a", "coder": "tfidf"}, {"name": "a", "coder": "tfidf"}])
    with pytest.raises(DataError, match="appears twice"):
        StudyConfig.from_yaml(p)


def test_study_cli_names_the_bad_field_and_exits_2(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {synth: {}}\noutput: o\nruns:\n  - {name: a, coder: tfidf, parms: {}}\n")
    r = subprocess.run([sys.executable, "-m", "icdcoder.cli", "study", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.yaml" in r.stdout + r.stderr and "parms" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
