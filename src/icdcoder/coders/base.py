"""The coder interface: every coder, discriminative or generative, is fit, predicts, saves and loads
the same way (scikit-learn's estimator style), so the evaluation protocol never needs to know which.

A saved model folder is data only, and it is checked before any of it is read, because model folders
travel between teams and loading one must never run code: ``coder.json`` records the sha256 of every
other file (``files``), and :meth:`Coder.load` refuses a folder holding a file its coder does not
write (:attr:`Coder.state_files`: no pickle, no Python), a file the manifest does not list, a listed
file that is missing, or one whose hash differs. Folders saved before the manifest load with a
warning; an old TF-IDF model's pickle is read only when the caller trusts it (``trust_pickle``).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import logging
import zipfile
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Sequence

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, parse_system
from icdcoder.data.note import Note
from icdcoder.errors import IcdcoderError
from icdcoder.io import atomic_dir, file_sha256, write_json
from icdcoder.prediction import Prediction

log = logging.getLogger(__name__)

CODER_FILE = "coder.json"
#: Formats that run code when they are read (pickle and the formats that wrap it, Python): named as such
#: when a model folder holds one.
EXECUTABLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".dill", ".py",
                       ".pyc", ".pyo", ".so", ".dylib", ".dll")
#: What transformers' ``save_pretrained`` writes for a model, a PEFT adapter and a tokenizer, as
#: safetensors, JSON and text (the model card PEFT writes, sentencepiece's protobuf vocabularies), and
#: nothing it could read as a pickle or as code.
HF_FOLDER_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                   "model.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
                   "additional_chat_templates/*.jinja", "README.md")
_REGISTRY: dict[str, type["Coder"]] = {}
# Where each built-in coder lives, imported on first use so `import icdcoder` never pulls torch in.
BUILTIN = {"tfidf": "icdcoder.coders.tfidf", "plm_icd": "icdcoder.coders.plm_icd", "matcher": "icdcoder.coders.matcher",
           "rerank": "icdcoder.coders.rerank",
           "llm_prompt": "icdcoder.coders.generative.coder", "llm_sft": "icdcoder.training.stages",
           "llm_grpo": "icdcoder.training.stages", "llm_phi": "icdcoder.training.stages"}


class ModelFolderError(IcdcoderError, ValueError):
    """A model folder that is refused or cannot be read (a ValueError too, as the coders' own checks raise)."""


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
    #: The files ``_save_state`` writes, as paths relative to the folder ("/" between folders, shell
    #: wildcards within one name). Loading refuses any other file (see :func:`check_model_folder`).
    state_files: ClassVar[tuple[str, ...]] = ()
    #: Subfolders that hold a saved coder of their own; its ``load`` checks their files.
    nested_coders: ClassVar[tuple[str, ...]] = ()
    #: Pickles an older version saved, read (through a restricted unpickler) only with ``trust_pickle``.
    legacy_pickles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        self.params = params
        self.threshold: float = 0.5
        self.per_code_thresholds: dict[str, float] = {}
        self.label_systems: dict[str, str] = {}
        self._trust_pickle = False  # set by load: whether ``_load_state`` may read a legacy pickle

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
        """Write the coder to ``folder`` atomically (see :meth:`write_into`)."""
        with atomic_dir(folder, marker=CODER_FILE) as stage:
            self.write_into(stage, Path(folder))
        return Path(folder)

    def write_into(self, stage: Path, name: Path | None = None) -> None:
        """Write state files, then ``coder.json`` (name, params, thresholds, and the sha256 of every
        state file) into the new folder ``stage``: a staging folder, or a nested coder's folder inside
        one (which needs no staging of its own). Refuses to write a file :meth:`load` would refuse;
        ``name`` is the folder errors name."""
        stage.mkdir(exist_ok=True)
        self._save_state(stage)
        files = folder_files(stage)
        check_file_names(name or stage, type(self), files, trust_pickle=False)
        write_json(stage / CODER_FILE, {"coder": self.name, "params": self.params, "threshold": self.threshold,
                                        "per_code_thresholds": self.per_code_thresholds,
                                        "label_systems": self.label_systems,
                                        "files": {rel: file_sha256(stage / rel) for rel in files}})

    @staticmethod
    def load(folder: str | Path, *, trust_pickle: bool = False) -> "Coder":
        """Rebuild any saved coder; the class comes from ``coder.json``. The folder is checked first
        (:func:`check_model_folder`); ``trust_pickle`` lets an old TF-IDF model's pickle be read (with a
        warning; still through an unpickler that resolves nothing but a vectoriser's state)."""
        folder = Path(folder)
        meta = read_coder_meta(folder)
        cls = coder_class(meta["coder"])
        check_model_folder(folder, cls, meta.get("files"), trust_pickle=trust_pickle)
        try:
            coder = cls(**meta.get("params", {}))
            coder.threshold = float(meta.get("threshold", 0.5))
            coder.per_code_thresholds = {k: float(v) for k, v in meta.get("per_code_thresholds", {}).items()}
            coder.label_systems = dict(meta.get("label_systems", {}))  # absent in models saved before it existed
            coder._trust_pickle = trust_pickle
            coder._load_state(folder)
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as e:
            if isinstance(e, IcdcoderError):
                raise
            raise ModelFolderError(f"model folder {folder}: cannot load this {cls.name} model "
                                   f"({type(e).__name__}: {e})") from e
        return coder


# ---------------------------------------------------------------------------------- model folders

def read_coder_meta(folder: Path) -> dict[str, Any]:
    """``coder.json`` of a saved coder, with errors that name it."""
    path = folder / CODER_FILE
    if not path.is_file():
        raise ModelFolderError(f"{folder} holds no saved coder ({CODER_FILE} missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFolderError(f"{path}: cannot read the saved coder ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("coder"), str):
        raise ModelFolderError(f"{path}: not a saved coder (no 'coder' name)")
    return meta


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` but its ``coder.json``, as sorted "/"-separated relative paths.
    A link or anything else that is not a plain file or folder is refused: a link could lead a
    loader out of the folder."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ModelFolderError(f"model folder {folder}: {rel} is not a plain file or folder; a model folder "
                                f"holds plain files only")
        if path.is_file() and rel != CODER_FILE:
            out.append(rel)
    return out


def _matches(rel: str, pattern: str) -> bool:
    parts, pats = rel.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, p) for a, p in zip(parts, pats))


def check_file_names(folder: Path, cls: type[Coder], files: Sequence[str], *, trust_pickle: bool) -> None:
    """Refuse any file ``cls`` does not write (files of a nested coder's folder are left to its own
    load); a legacy pickle passes only with ``trust_pickle``, with a warning."""
    unknown = []
    for rel in files:
        top, _, rest = rel.partition("/")
        if rest and top in cls.nested_coders:
            continue
        if rel in cls.legacy_pickles:
            if not trust_pickle:
                raise ModelFolderError(
                    f"model folder {folder}: {rel} is a pickle, which can run code when it is read. This "
                    f"{cls.name} model was saved by an older icdcoder; load it with --trust-pickle "
                    f"(Coder.load(..., trust_pickle=True)) only if you trust where it came from, then save it "
                    f"again to convert it to data files")
            log.warning("model folder %s: reading the pickle %s because it is trusted (--trust-pickle); save "
                        "the model again to convert it to data files", folder, rel)
            continue
        if not any(_matches(rel, p) for p in cls.state_files):
            unknown.append(rel)
    if unknown:
        code = [r for r in unknown if r.lower().endswith(EXECUTABLE_SUFFIXES)]
        named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        why = (f" ({', '.join(code[:5])}: a format that can run code when it is read)" if code else "")
        raise ModelFolderError(f"model folder {folder}: unexpected file {named}{why}; a saved {cls.name} coder "
                            f"holds only {CODER_FILE}, {', '.join(cls.state_files)}"
                            + (f" and the coder folders {', '.join(n + '/' for n in cls.nested_coders)}"
                               if cls.nested_coders else ""))


def check_model_folder(folder: Path, cls: type[Coder], recorded: Any, *, trust_pickle: bool = False) -> None:
    """Check a model folder before anything in it is read: every file is one ``cls`` writes, and
    matches the sha256 that ``coder.json`` records for it (``recorded``; None in folders saved before
    hashes were recorded: loaded with a warning)."""
    files = folder_files(folder)
    check_file_names(folder, cls, files, trust_pickle=trust_pickle)
    if recorded is None:
        log.warning("model folder %s was saved before model folders recorded file hashes: its files are not "
                    "checked; save it again to record them", folder)
        return
    meta = folder / CODER_FILE
    if not (isinstance(recorded, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in recorded.items())):
        raise ModelFolderError(f"{meta}: 'files' must map each file to its sha256")
    extra = [rel for rel in files if rel not in recorded]
    if extra:
        raise ModelFolderError(f"model folder {folder}: {', '.join(extra[:5])} not in the manifest ({CODER_FILE}); "
                            f"a file was added after the model was saved")
    present = set(files)
    missing = [rel for rel in recorded if rel not in present]
    if missing:
        raise ModelFolderError(f"model folder {folder}: {', '.join(missing[:5])} missing (listed in {CODER_FILE})")
    for rel in files:
        if file_sha256(folder / rel) != recorded[rel]:
            raise ModelFolderError(f"model folder {folder}: {rel} does not match the sha256 recorded in {CODER_FILE}: "
                                f"the file changed after the model was saved (damaged or altered)")
