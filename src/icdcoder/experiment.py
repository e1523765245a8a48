"""One config file per experiment, one command to run it: ``icdcoder train CONFIG.yaml``.

A config names the data, the coder and its parameters, the seed and the output folder::

    name: tfidf-synth
    seed: 13
    data: {path: runs/demo/data}          # a prepared folder, or {synth: {seed: 13}} to generate one
    coder: {name: tfidf, params: {classifier: svm, C: 1.0}}
    threshold: {per_code: false}
    eval_splits: [val, test]
    train_splits: [train]                 # [train, val]: fit on both, threshold by cross-validation
    output: runs/tfidf-synth
    code_centric: {span_ratio: 0.3}       # optional: mix span -> code examples into training

The run folder it writes (each file atomically)::

    model/                 the fitted coder with its tuned threshold (Coder.load reads it back)
    threshold.json         the threshold, so `icdcoder evaluate` applies it to these predictions
    predictions.jsonl      predictions on the last evaluated split (test) - what `icdcoder compare` reads
    predictions-<split>.jsonl, metrics-<split>.json for every evaluated split
    metrics.json           metrics of the last evaluated split
    run.json               config, timings (fit, predict: notes/s), sizes

A run whose ``model/`` exists is not fitted again unless ``force``; coders that checkpoint during
training (PLM-ICD, the generative ones) resume from ``checkpoints/`` in the run folder.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from icdcoder import distributed
from icdcoder.data.note import first_error
from icdcoder.distributed import is_main_process, main_writes_first
from icdcoder.errors import DataError
from icdcoder.io import atomic_write, write_json

M = TypeVar("M", bound=BaseModel)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    synth: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> "DataConfig":
        if (self.path is None) == (self.synth is None):
            raise ValueError("give exactly one of data.path (a prepared folder) or data.synth (generator options)")
        return self


class CoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ThresholdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_code: bool = False
    # when val is in train_splits: the threshold comes from this many folds of out-of-fold predictions
    cv_folds: int = Field(5, ge=2)


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int = 13
    data: DataConfig
    coder: CoderConfig
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    eval_splits: list[str] = Field(default_factory=lambda: ["val", "test"])
    # the splits whose notes the coder is fitted on; [train, val] trains on every labelled note, and the
    # threshold then comes from cross-validation (threshold.cv_folds), never from notes trained on
    train_splits: list[str] = Field(default_factory=lambda: ["train"])
    output: str
    # code-centric mixed training (icdcoder.training.mixing.CodeCentricConfig); None: documents only
    code_centric: dict[str, Any] | None = None
    # the ICD rule engine after the coder (icdcoder.rules.RuleConfig); None: raw coder output, as in papers
    rules: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _sub_configs(self) -> "ExperimentConfig":
        from icdcoder.data.note import canonical_split

        train = {canonical_split(x) for x in self.train_splits}
        if not train:
            raise ValueError("train_splits: name at least one split")
        both = sorted(train & {canonical_split(x) for x in self.eval_splits})
        if both:
            raise ValueError(f"eval_splits: {both} would be evaluated on notes the coder was trained on "
                             "(they are in train_splits)")
        if self.code_centric is not None and train != {"train"}:
            raise ValueError("train_splits: code-centric training reads the train split only")
        if self.code_centric is not None:
            from icdcoder.training.mixing import CodeCentricConfig

            CodeCentricConfig.model_validate(self.code_centric)  # errors name the field
        if self.rules is not None:
            from icdcoder.rules import RuleConfig

            RuleConfig.model_validate(self.rules)  # errors name the field
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentConfig":
        return load_yaml_config(cls, path)


def load_yaml_config(cls: type[M], path: str | Path) -> M:
    """Read a YAML config into the pydantic model ``cls``; errors name the file, line or field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("config file not found", path=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(f"malformed YAML ({getattr(e, 'problem', e)})", path=path,
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise DataError("a config is a YAML mapping", path=path)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise DataError(msg, path=path, field=loc or None) from None


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def prepare_data(cfg: DataConfig, run_dir: Path) -> Path:
    """The prepared folder a config points at; ``synth`` generates one inside the run folder (once)."""
    if cfg.path is not None:
        return Path(cfg.path)
    from icdcoder.data.store import MANIFEST, write_dataset
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    out = run_dir / "data"
    with main_writes_first() as main:  # several ranks: rank 0 generates, the others read it after the barrier
        if main and not (out / MANIFEST).exists():
            sc = SynthConfig(**cfg.synth)
            write_dataset(generate_synthetic(sc), out, name=f"synthetic-seed{sc.seed}", source="synthetic")
    return out


def run_experiment(cfg: ExperimentConfig, *, force: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit (or reuse) the coder, tune its threshold on val, predict and evaluate each split."""
    from icdcoder.coders import Coder, coder_class
    from icdcoder.data.note import canonical_split
    from icdcoder.data.store import load_dataset
    from icdcoder.evaluation import evaluate_files
    from icdcoder.prediction import write_predictions

    run_dir = Path(cfg.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    distributed.init()  # several ranks: the process group, before any trainer makes one with a short timeout
    main = is_main_process()
    model_dir = run_dir / "model"
    info: dict[str, Any] = {"config": cfg.model_dump()}

    # every rank reads the run's state before rank 0 changes anything (the barrier in prepare_data)
    previous = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if (run_dir / "run.json").exists() else {}
    fit_keys = ("coder", "code_centric", "train_splits")  # what the fitted model depends on
    changed = bool(previous) and any(previous.get("config", {}).get(k) != info["config"][k] for k in fit_keys)
    if (changed or force) and main:
        # a different coder config (or --force) must not reuse the old model or the old checkpoints
        if changed:
            log(f"the coder config of {run_dir} changed since it was fitted; fitting again")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    unfinished = previous.get("status") == "fitting"  # the last fit died: model/ (if any) is an older one
    reuse = (model_dir / "coder.json").exists() and not (force or changed or unfinished)
    data_dir = prepare_data(cfg.data, run_dir)
    ds = load_dataset(data_dir)
    info["data_dir"] = str(data_dir.resolve())
    if not main and (reuse or not getattr(coder_class(cfg.coder.name), "distributed_fit", False)):
        distributed.barrier()  # nothing to train together: wait for rank 0 to finish this run
        return {"metrics": {}, "info": info}
    if reuse:
        log(f"reusing the fitted coder in {model_dir}")
        coder = Coder.load(model_dir)
        for k in ("fit_seconds", "training", "train_examples", "training_tokens", "code_centric_data",
                  "training_labels"):
            if previous.get(k) is not None:  # keep what was measured when it was fitted
                info[k] = previous[k]
    else:
        cls = coder_class(cfg.coder.name)
        params = dict(cfg.coder.params)
        accepts = inspect.signature(cls.__init__).parameters
        if "checkpoint_dir" in accepts:  # coders that checkpoint resume from the run folder
            params.setdefault("checkpoint_dir", str(run_dir / "checkpoints"))
        if "seed" in accepts:
            params.setdefault("seed", cfg.seed)
        coder = cls(**params)
        if main:
            write_json(run_dir / "run.json", {**info, "status": "fitting"})  # a crash now resumes this config
        train_splits = [canonical_split(x) for x in cfg.train_splits]
        train = [n for split in train_splits for n in ds[split]]
        merged_val = "val" in train_splits
        val = ds["val"] if "val" in ds and not merged_val else None
        info["training_labels"] = training_labels(None, val is not None, train_splits,
                                                  cfg.threshold.cv_folds if merged_val else None)
        if cfg.code_centric is not None:
            from icdcoder.training.mixing import CodeCentricConfig, build_training_set

            cc = CodeCentricConfig.model_validate({"seed": cfg.seed, **cfg.code_centric})
            train, info["code_centric_data"] = build_training_set(cc, ds, log=log)
            info["training_labels"] = training_labels(info["code_centric_data"]["label_space"], val is not None)
        info["train_examples"] = len(train)
        log(f"fitting {cfg.coder.name} on {len(train):,} examples" + (f", tuning on {len(val):,}" if val else ""))
        start = time.perf_counter()
        coder.fit(train, val)
        if merged_val and not getattr(coder, "cv_threshold_without_val", False):
            log(f"threshold: {cfg.threshold.cv_folds}-fold cross-validation on the training notes")
            coder.threshold = cv_threshold(cls, params, train, cfg.threshold.cv_folds, cfg.seed)
        if val and cfg.threshold.per_code:
            coder.tune_threshold(val, per_code=True)
        info["fit_seconds"] = round(time.perf_counter() - start, 3)
        if getattr(coder, "history", None):  # what each training stage did (generative coders)
            info["training"] = coder.history
        info["training_tokens"] = training_tokens(train, coder)
        if not main:  # trained together; rank 0 saves, predicts and evaluates
            distributed.barrier()
            return {"metrics": {}, "info": info}
        coder.save(model_dir)
        write_json(run_dir / "run.json", {**info, "status": "fitted"})  # predicting may fail; the fit is kept
    write_json(run_dir / "threshold.json", {"threshold": coder.threshold,
                                            "per_code_thresholds": coder.per_code_thresholds})
    info["predict"] = {}
    metrics: dict[str, Any] = {}
    engine = None
    if cfg.rules is not None:
        from icdcoder.rules import RuleConfig, RuleEngine

        engine = RuleEngine(RuleConfig.model_validate(cfg.rules), label_space=coder.label_systems or None)
    splits = [s for s in cfg.eval_splits if s in ds]
    for split in splits:
        notes = ds[split]
        start = time.perf_counter()
        preds = coder.predict(notes)
        seconds = time.perf_counter() - start
        info["predict"][split] = {"notes": len(notes), "seconds": round(seconds, 3),
                                  "notes_per_second": round(len(notes) / max(seconds, 1e-9), 2)}
        if getattr(coder, "last_predict_stats", None):  # generative coders: malformed answers, invalid codes
            info["predict"][split]["generation"] = dict(coder.last_predict_stats)
        if engine is not None:
            from icdcoder.rules import edit_counts

            preds = [engine.apply(p, coder.system_of, coder.threshold, coder.per_code_thresholds) for p in preds]
            info["predict"][split]["rule_edits"] = edit_counts(preds)
        pred_path = run_dir / f"predictions-{split}.jsonl"
        write_predictions(preds, pred_path)
        # threshold None: threshold.json beside the predictions (global and per-code) is applied
        metrics = evaluate_files(data_dir, split, pred_path)
        metrics["coder"] = cfg.coder.name
        metrics["run"] = cfg.name
        if info.get("training_labels"):  # which splits' labels the fit saw travels with the numbers
            metrics["training_labels"] = info["training_labels"]
        write_json(run_dir / f"metrics-{split}.json", metrics)
        log(f"{cfg.name} {split}: micro F1 {metrics['micro_f1']:.3f}, macro F1 {metrics['macro_f1']:.3f}, "
            f"MAP {_fmt(metrics['map'])}, CodiEsp MAP {_fmt(metrics['codiesp_map'])}, "
            f"P@8 {_fmt(metrics['p@8'])}")
    if splits:  # the last split evaluated (test) is what `icdcoder compare` reads
        with atomic_write(run_dir / "predictions.jsonl", "wb") as fh:
            fh.write((run_dir / f"predictions-{splits[-1]}.jsonl").read_bytes())
        metrics["pred_path"] = str((run_dir / "predictions.jsonl").resolve())
        write_json(run_dir / "metrics.json", metrics)
    info["status"] = "done"
    write_json(run_dir / "run.json", info)
    distributed.barrier()  # the other ranks start the next run on the files written here
    return {"metrics": metrics, "info": info}


def training_labels(provenance: dict[str, Any] | None, tuned_on_val: bool, train_splits: list[str] | None = None,
                    cv_folds: int | None = None) -> dict[str, Any]:
    """Which splits' gold labels the fit saw: documents (``train_splits``), threshold tuning (val when
    there is one, or cross-validation over the training notes) and the code-centric target label
    space; ``evaluation_labels`` flags a run whose training read val or test gold (only with
    ``code_centric.evaluation_labels: true``)."""
    from icdcoder.training.mixing import label_provenance

    out = dict(provenance) if provenance else label_provenance(None)
    if train_splits:
        out["documents"] = list(train_splits)
    out["threshold_tuning"] = ["val"] if tuned_on_val else (
        [f"{cv_folds}-fold cross-validation on {'+'.join(train_splits or ['train'])}"] if cv_folds else [])
    return out


def cv_threshold(cls: Any, params: dict[str, Any], notes: list, folds: int, seed: int) -> float:
    """The threshold tuned on out-of-fold predictions: ``folds`` coders, each fitted on the other folds'
    notes, predict the held-out ones; the pooled predictions are tuned like a val split. Used when val
    is trained on, so the threshold is never tuned on notes the scoring model saw."""
    from icdcoder.data.splits import kfold_of
    from icdcoder.evaluation import tune_thresholds

    fold_of = kfold_of(len(notes), folds, seed)
    gold, preds = [], []
    for k in range(folds):
        inside = [n for n, f in zip(notes, fold_of) if f != k]
        held = [n for n, f in zip(notes, fold_of) if f == k]
        preds += cls(**params).fit(inside, None).predict(held)
        gold += held
    threshold, _ = tune_thresholds(gold, preds)
    return threshold


def training_tokens(train: list, coder: Any) -> int:
    """Tokens processed in training. LM coders: what TRL counted (``num_tokens``) in the stages of this
    fit (a prompting coder trains nothing: 0); other coders: whitespace words of the training texts
    times the epochs (TF-IDF, PLM-ICD)."""
    if hasattr(coder, "lm_path"):  # a generative coder: its history holds the TRL stages
        total = 0
        for stage in coder.history:
            if stage.get("inherited"):  # stages of an init_from parent were counted there
                continue
            logs = [r for r in stage.get("log", []) if "num_tokens" in r]
            if logs:
                total += int(logs[-1]["num_tokens"])
            total += sum(int(r.get("num_tokens", 0)) for r in stage.get("rounds", []))  # PHI rounds
        return total
    epochs = getattr(coder, "params", {}).get("epochs", 1) or 1
    return int(sum(len(n.text.split()) for n in train) * float(epochs))


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
