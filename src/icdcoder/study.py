"""The study: one config in, every coder trained and evaluated under one protocol, one report out.

``icdcoder study configs/study-demo.yaml`` (and ``make demo``) runs TF-IDF, PLM-ICD, prompting, SFT,
GRPO and PHI on the same data and writes ``OUT/report/`` with the metrics table, the paired-bootstrap
significance of each coder against the previous one, F1 by code-frequency bucket, missed and
spurious code counts, training time and prediction speed. A config::

    name: study-demo
    seed: 13
    data: {synth: {seed: 13}}          # or {path: prepared/folder}
    output: runs/demo
    eval_splits: [test]
    tiny: {pretrain_steps: 150}        # the tiny LM shared by every generative coder with model: tiny
    runs:
      - {name: tfidf, coder: tfidf, params: {...}}
      - {name: sft, coder: llm_sft, params: {...}}
      - {name: grpo, coder: llm_grpo, params: {init_from: sft, ...}}   # a run name above -> its model
      - {name: p, coder: llm_prompt, params: {prompt: {candidates: 10, candidates_from: tfidf}}}  # likewise
      - {name: sft_cc, coder: llm_sft, code_centric: {span_ratio: 0.3}, compare_to: sft, params: {...}}

Each run is an ordinary experiment folder (``OUT/<name>/``: model, predictions, metrics, run.json),
so re-running the study reuses every finished coder and resumes an interrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icdcoder.distributed import is_main_process, main_writes_first
from icdcoder.experiment import (DataConfig, ExperimentConfig, load_yaml_config, prepare_data,
                                 run_experiment)
from icdcoder.data.note import Note
from icdcoder.io import write_json

GENERATIVE = ("llm_prompt", "llm_sft", "llm_grpo", "llm_phi")


class StudyRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    coder: str
    params: dict[str, Any] = Field(default_factory=dict)
    per_code_threshold: bool = False
    code_centric: dict[str, Any] | None = None  # mixed span + document training (training.mixing)
    rules: dict[str, Any] | None = None  # the ICD rule engine after the coder (rules.RuleConfig)
    compare_to: str | None = None  # the run the bootstrap compares this one with (default: the one before)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int = 13
    data: DataConfig
    output: str
    eval_splits: list[str] = Field(default_factory=lambda: ["test"])
    tiny: dict[str, Any] = Field(default_factory=dict)
    runs: list[StudyRun] = Field(min_length=1)
    bootstrap_resamples: int = 1000

    @model_validator(mode="after")
    def _names(self) -> "StudyConfig":
        seen: set[str] = set()
        for r in self.runs:
            if r.name in seen:
                raise ValueError(f"run name {r.name!r} appears twice")
            for key, ref in _run_refs(r.params):
                if "/" not in ref and ref not in seen:
                    raise ValueError(f"run {r.name!r}: {key} {ref!r} names no earlier run")
            if r.compare_to is not None and r.compare_to not in seen:
                raise ValueError(f"run {r.name!r}: compare_to {r.compare_to!r} names no earlier run")
            seen.add(r.name)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StudyConfig":
        return load_yaml_config(cls, path)


def _run_refs(params: dict[str, Any]) -> list[tuple[str, str]]:
    """The parameters that may name an earlier run's model: ``init_from`` and ``prompt.candidates_from``."""
    prompt = params.get("prompt")
    refs = [("init_from", params.get("init_from")),
            ("prompt.candidates_from", prompt.get("candidates_from") if isinstance(prompt, dict) else None)]
    return [(k, v) for k, v in refs if isinstance(v, str)]


def _resolve_refs(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """A run name in ``init_from`` / ``prompt.candidates_from`` becomes that run's model folder."""
    params = dict(params)
    for key, ref in _run_refs(params):
        if "/" in ref:
            continue
        folder = str((out / ref / "model").resolve())
        if key == "init_from":
            params["init_from"] = folder
        else:
            params["prompt"] = {**params["prompt"], "candidates_from": folder}
    return params


def _shared_tiny_lm(cfg: StudyConfig, data_dir: Path, out: Path, log: Callable[[str], None]) -> Path | None:
    """Build the tiny LM once for every generative run that asks for ``model: tiny``."""
    if not any(r.coder in GENERATIVE and r.params.get("model", "tiny") == "tiny" and not r.params.get("init_from")
               for r in cfg.runs):
        return None
    from icdcoder.coders.generative.tiny import TinyConfig, build_tiny_lm
    from icdcoder.data.store import load_dataset

    folder = out / "tiny-lm"
    with main_writes_first() as main:
        if main and not (folder / "tiny_lm.json").exists():
            log("building the shared tiny LM (tokenizer, model, brief pre-training)")
            build_tiny_lm(load_dataset(data_dir)["train"], folder, TinyConfig(**{"seed": cfg.seed, **cfg.tiny}),
                          log=log)
    return folder


def missed_and_spurious(run_dir: Path, gold: Sequence[Note], split: str) -> dict[str, int]:
    """Gold codes missed and codes predicted wrongly, at the run's own threshold(s)."""
    from icdcoder.prediction import read_predictions

    th = json.loads((run_dir / "threshold.json").read_text(encoding="utf-8"))
    per_code, t = th.get("per_code_thresholds", {}), float(th.get("threshold", 0.5))
    preds = {p.id: {c.code for c in p.codes if c.score >= per_code.get(c.code, t)}
             for p in read_predictions(run_dir / f"predictions-{split}.jsonl")}
    missed = spurious = 0
    for n in gold:
        g, p = set(n.codes), preds.get(n.id, set())
        missed += len(g - p)
        spurious += len(p - g)
    return {"gold_missed": missed, "spurious": spurious}


def _report_split(cfg: StudyConfig, data_dir: Path) -> str:
    """The last of ``eval_splits`` the prepared data has (``[val, test]`` reports on test when there is
    one, else on val): the split the report compares the runs on."""
    from icdcoder.data.store import read_manifest
    from icdcoder.errors import ConfigError

    have = set(read_manifest(data_dir).get("splits", {}))
    present = [s for s in cfg.eval_splits if s in have]
    if not present:
        raise ConfigError(f"none of eval_splits {cfg.eval_splits} is a split of {data_dir} (has {sorted(have)})")
    return present[-1]


def run_study(cfg: StudyConfig, *, only: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate every run in order (reusing finished ones), then write the report."""
    from icdcoder.evaluation import compare_runs
    from icdcoder.evaluation.protocol import load_gold
    from icdcoder.progress import Progress

    if not is_main_process():  # the other ranks of a launcher train in step with rank 0 and stay quiet
        log = lambda m: None  # noqa: E731
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = prepare_data(cfg.data, out)
    tiny = _shared_tiny_lm(cfg, data_dir, out, log)
    split = _report_split(cfg, data_dir)
    gold = load_gold(data_dir, split)[0]  # read once: every run's missed/spurious counts use it
    rows: dict[str, dict[str, Any]] = {}
    run_dirs = []
    # plain lines off a terminal (runs done, elapsed, ETA); on one, each run's own jobs draw their bars
    bar = Progress(f"study {cfg.name}", sum(not only or r.name in only for r in cfg.runs), unit="run", bar=False,
                   enabled=is_main_process()).start()
    for r in cfg.runs:
        if only and r.name not in only:
            continue
        params = _resolve_refs(r.params, out)
        if r.coder in GENERATIVE and tiny is not None and params.get("model", "tiny") == "tiny":
            params["model"] = str(tiny.resolve())
        exp = ExperimentConfig(name=r.name, seed=cfg.seed, data={"path": str(data_dir)},
                               coder={"name": r.coder, "params": params}, threshold={"per_code": r.per_code_threshold},
                               eval_splits=cfg.eval_splits, output=str(out / r.name), code_centric=r.code_centric,
                               rules=r.rules)
        log(f"== {r.name} ({r.coder}) ==")
        start = time.perf_counter()
        result = run_experiment(exp, log=log)
        bar.update(last=r.name)
        if not is_main_process():
            continue
        info = result["info"]
        pred = info["predict"].get(split, {})
        rows[r.name] = {"coder": r.coder, "fit_seconds": info.get("fit_seconds"),
                        "predict_notes_per_second": pred.get("notes_per_second"),
                        **missed_and_spurious(out / r.name, gold, split),
                        "malformed_answers": (pred.get("generation") or {}).get("malformed"),
                        "invalid_codes_dropped": (pred.get("generation") or {}).get("invalid_codes"),
                        "train_examples": info.get("train_examples"), "training_tokens": info.get("training_tokens"),
                        "training_labels": info.get("training_labels"),
                        "wall_seconds": round(time.perf_counter() - start, 1)}
        run_dirs.append(out / r.name)
    bar.close()
    if not is_main_process():
        return {"runs": {}, "report": {}}
    extra = {k: [rows[d.name][k] for d in run_dirs] for k in
             ("fit_seconds", "train_examples", "training_tokens", "predict_notes_per_second", "gold_missed",
              "spurious", "malformed_answers", "invalid_codes_dropped")}
    names = [d.name for d in run_dirs]
    by_name = {r.name: r for r in cfg.runs}
    pairs = [(by_name[b].compare_to if by_name[b].compare_to in names else names[i - 1], b)
             for i, b in enumerate(names) if i > 0]
    report = compare_runs(run_dirs, out / "report", n_resamples=cfg.bootstrap_resamples, seed=cfg.seed,
                          extra_rows=extra, title=f"Study: {cfg.name}", pairs=pairs)
    write_json(out / "report" / "study.json", {"config": cfg.model_dump(), "runs": rows,
                                               "significance": report["significance"]})
    return {"runs": rows, "report": report}
