"""Study configs: the packaged demo and the shipped real-study configs validate; bad ones are refused."""

from pathlib import Path

import pytest

from icdcoder.coders.base import BUILTIN
from icdcoder.errors import DataError
from icdcoder.study import StudyConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "icdcoder" / "resources" / "study-demo.yaml"
CONFIGS = sorted((REPO / "configs").glob("study-*.yaml"))
REAL = sorted((REPO / "configs").glob("study-mimic-*.yaml"))  # the full chain at GPU scale
CODE_CENTRIC = sorted((REPO / "configs").glob("study-code-centric-*.yaml"))


@pytest.mark.parametrize("path", [DEMO, *CONFIGS], ids=lambda p: p.name)
def test_shipped_study_configs_validate(path):
    cfg = StudyConfig.from_yaml(path)
    assert all(r.coder in BUILTIN for r in cfg.runs)


SMOLLM2 = [DEMO, *sorted((REPO / "configs").glob("study-smollm2-*.yaml"))]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_full_studies_run_every_stage_in_order(path):
    cfg = StudyConfig.from_yaml(path)
    names = [r.name for r in cfg.runs]
    assert names[:6] == ["tfidf", "plm_icd", "prompt", "sft", "grpo", "phi"]
    by_name = {r.name: r for r in cfg.runs}
    assert by_name["grpo"].params["init_from"] == "sft" and by_name["phi"].params["init_from"] == "grpo"


@pytest.mark.parametrize("path", [p for p in SMOLLM2 if "pilot" not in p.name], ids=lambda p: p.name)
def test_smollm2_studies_run_every_generative_stage_on_smollm2_against_tfidf(path):
    """The demo and the CPU studies: TF-IDF first, then the chain on SmolLM2 with candidate lists from an
    earlier run, and the code-centric twin of SFT."""
    cfg = StudyConfig.from_yaml(path)
    by_name = {r.name: r for r in cfg.runs}
    assert cfg.runs[0].name == "tfidf"
    chain = [r.name for r in cfg.runs if r.coder.startswith("llm_")]
    assert chain == ["prompt", "sft", "grpo", "phi", "sft_cc"]
    assert by_name["grpo"].params["init_from"] == "sft" and by_name["phi"].params["init_from"] == "grpo"
    earlier = [r.name for r in cfg.runs if not r.coder.startswith("llm_")]
    for name in chain:
        params = by_name[name].params
        assert params["model"] == "smollm2-135m-instruct"
        assert params["prompt"]["candidates_from"] in earlier
        for stage in ("sft", "grpo"):
            if stage in params:
                assert params[stage].get("train_layers", 0) > 0


def test_demo_has_the_code_centric_row_beside_its_document_only_twin():
    runs = {r.name: r for r in StudyConfig.from_yaml(DEMO).runs}
    cc, doc = runs["sft_cc"], runs["sft"]
    assert cc.compare_to == "sft" and cc.code_centric and not doc.code_centric
    assert cc.params == doc.params and cc.coder == doc.coder  # one factor: the training data


@pytest.mark.parametrize("path", CODE_CENTRIC, ids=lambda p: p.name)
def test_code_centric_studies_change_one_factor_per_pair(path):
    runs = {r.name: r for r in StudyConfig.from_yaml(path).runs}
    pairs = [(r.compare_to, r.name) for r in runs.values() if r.code_centric]
    assert pairs
    for a, b in pairs:
        doc, cc = runs[a], runs[b]
        assert not doc.code_centric and cc.coder == doc.coder
        differ = {k for k in set(doc.params) | set(cc.params) if doc.params.get(k) != cc.params.get(k)}
        assert differ <= {"init_from"}  # GRPO twins start from their own SFT twin


def test_real_study_configs_use_lora_r8_and_vllm():
    assert len(REAL) >= 2
    for path in REAL:
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


def test_candidates_from_a_run_name_becomes_its_model_folder(tmp_path):
    from icdcoder.study import _resolve_refs

    p = _write(tmp_path, [{"name": "sft", "coder": "llm_sft",
                           "params": {"prompt": {"candidates": 5, "candidates_from": "tfidf"}}},
                          {"name": "tfidf", "coder": "tfidf"}])
    with pytest.raises(DataError, match="prompt.candidates_from 'tfidf' names no earlier run"):
        StudyConfig.from_yaml(p)
    params = {"init_from": "sft", "prompt": {"candidates": 5, "candidates_from": "tfidf"}}
    out = _resolve_refs(params, tmp_path)
    assert out["prompt"] == {"candidates": 5, "candidates_from": str((tmp_path / "tfidf" / "model").resolve())}
    assert out["init_from"] == str((tmp_path / "sft" / "model").resolve())
    assert params["prompt"]["candidates_from"] == "tfidf"  # the config itself is left as written
    assert _resolve_refs({"prompt": {"candidates_from": "runs/x/model"}}, tmp_path)["prompt"]["candidates_from"] \
        == "runs/x/model"


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


@pytest.mark.parametrize("path", [DEMO, *CONFIGS], ids=lambda p: p.name)
def test_no_shipped_study_reads_evaluation_labels_into_training(path):
    from icdcoder.training.mixing import CodeCentricConfig

    for r in StudyConfig.from_yaml(path).runs:
        if r.code_centric is not None:
            cc = CodeCentricConfig.model_validate(r.code_centric)
            assert cc.label_space == "train" and not cc.evaluation_labels, r.name


def test_the_report_split_is_the_last_eval_split_the_data_has(tmp_path):
    from icdcoder.data.note import Note
    from icdcoder.data.store import write_dataset
    from icdcoder.errors import ConfigError
    from icdcoder.study import _report_split

    n = Note(id="a", text="x", codes=["I10"], code_systems={"I10": "icd10cm"})
    write_dataset([("train", n), ("val", n.model_copy(update={"id": "b"}))], tmp_path / "d", name="d", source="t")
    base = {"name": "s", "data": {"path": str(tmp_path / "d")}, "output": str(tmp_path / "o"),
            "runs": [{"name": "t", "coder": "tfidf"}]}
    assert _report_split(StudyConfig.model_validate({**base, "eval_splits": ["val", "test"]}), tmp_path / "d") == "val"
    with pytest.raises(ConfigError, match="none of eval_splits"):
        _report_split(StudyConfig.model_validate({**base, "eval_splits": ["test"]}), tmp_path / "d")
