"""The coder interface: every coder, discriminative or generative, is fit, predicts, saves and loads
the same way (scikit-learn's estimator style), so the evaluation protocol never needs to know which."""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Sequence

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, parse_system
from icdcoder.data.note import Note
from icdcoder.errors import IcdcoderError
from icdcoder.io import atomic_dir, write_json
from icdcoder.prediction import Prediction

CODER_FILE = "coder.json"
_REGISTRY: dict[str, type["Coder"]] = {}
# Where each built-in coder lives, imported on first use so `import icdcoder` never pulls torch in.
BUILTIN = {"tfidf": "icdcoder.coders.tfidf", "plm_icd": "icdcoder.coders.plm_icd", "matcher": "icdcoder.coders.matcher",
           "rerank": "icdcoder.coders.rerank",
           "llm_prompt": "icdcoder.coders.generative.coder", "llm_sft": "icdcoder.training.stages",
           "llm_grpo": "icdcoder.training.stages", "llm_phi": "icdcoder.training.stages"}


def register(name: str):
    """Class decorator: make a coder loadable by name from configs and saved folders."""
    def wrap(cls: type["Coder"]) -> type["Coder"]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def coder_class(name: str) -> type["Coder"]:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        raise IcdcoderError(f"unknown coder {name!r}; known: {sorted(set(_REGISTRY) | set(BUILTIN))}")
    return _REGISTRY[name]


def label_system(code: str, label_systems: dict[str, str]) -> CodeSystem | None:
    """The system of a predicted code: from the label space (code -> system name), else inferred from
    its form within the label space's ICD version; None when neither says."""
    if code in label_systems:
        return parse_system(label_systems[code])
    versions = Counter(parse_system(s).version for s in label_systems.values())
    try:
        return infer_system(code, version=versions.most_common(1)[0][0] if versions else None)
    except (CodeFormatError, ValueError):
        return None


class Coder(ABC):
    """Subclasses implement ``fit``, ``predict``, ``_save_state`` and ``_load_state``.

    ``threshold`` is the decision threshold tuned on validation (a code is predicted when its score
    is at or above it); it is saved with the model. ``params`` are the constructor arguments, saved
    so that ``load`` rebuilds the same coder. ``label_systems`` (code -> system of every training
    code, set by ``fit`` through :meth:`_remember_labels`) is the label space the rule engine and
    the server check predictions against.
    """

    name: ClassVar[str] = "coder"
    scored: ClassVar[bool] = True  # False for coders that only output code sets (scores all 1.0)

    def __init__(self, **params: Any):
        self.params = params
        self.threshold: float = 0.5
        self.per_code_thresholds: dict[str, float] = {}
        self.label_systems: dict[str, str] = {}

    def _remember_labels(self, train: Sequence[Note]) -> None:
        """Record the training label space with each code's system (every ``fit`` calls this)."""
        self.label_systems = {c: n.code_systems[c].value for n in train for c in n.codes}

    def system_of(self, code: str) -> CodeSystem | None:
        """The system of a predicted code (see :func:`label_system`)."""
        return label_system(code, self.label_systems)

    @abstractmethod
    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "Coder": ...

    @abstractmethod
    def predict(self, notes: Sequence[Note]) -> list[Prediction]: ...

    @abstractmethod
    def _save_state(self, folder: Path) -> None: ...

    @abstractmethod
    def _load_state(self, folder: Path) -> None: ...

    def tune_threshold(self, val: Sequence[Note], per_code: bool = False) -> float:
        """Set the decision threshold (and optionally per-code ones) that maximise micro F1 on ``val``.

        Thresholds are part of the model (saved with it, applied to test), so the coder owns the
        tuning; the search itself is the evaluation package's, so every coder tunes the same way.
        """
        from icdcoder.evaluation import tune_thresholds

        self.threshold, self.per_code_thresholds = tune_thresholds(val, self.predict(val), per_code)
        return self.threshold

    def save(self, folder: str | Path) -> Path:
        """Write the coder to ``folder`` atomically: ``coder.json`` (name, params, thresholds) plus state."""
        with atomic_dir(folder, marker=CODER_FILE) as stage:
            self._save_state(stage)
            write_json(stage / CODER_FILE, {"coder": self.name, "params": self.params, "threshold": self.threshold,
                                            "per_code_thresholds": self.per_code_thresholds,
                                            "label_systems": self.label_systems})
        return Path(folder)

    @staticmethod
    def load(folder: str | Path) -> "Coder":
        """Rebuild any saved coder; the class comes from ``coder.json``."""
        folder = Path(folder)
        meta_path = folder / CODER_FILE
        if not meta_path.exists():
            raise IcdcoderError(f"{folder} holds no saved coder ({CODER_FILE} missing)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        coder = coder_class(meta["coder"])(**meta.get("params", {}))
        coder.threshold = float(meta.get("threshold", 0.5))
        coder.per_code_thresholds = {k: float(v) for k, v in meta.get("per_code_thresholds", {}).items()}
        coder.label_systems = dict(meta.get("label_systems", {}))  # absent in models saved before it existed
        coder._load_state(folder)
        return coder
