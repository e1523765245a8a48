"""Model folders are data, checked before anything in them is read: ``coder.json`` records every file's
sha256; a file the coder does not write (a pickle, Python), a file the manifest does not list, a missing
file or a changed one is refused with an error naming the folder and the file; folders saved before the
manifest load with a warning; an old TF-IDF pickle is read only when trusted; and a crafted pickle runs
nothing, under ``Coder.load``, ``icdcoder code`` and ``icdcoder serve``."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from icdcoder.coders import Coder
from icdcoder.coders.base import BUILTIN, CODER_FILE, check_file_names, coder_class, folder_files
from icdcoder.coders.tfidf import TfidfCoder
from icdcoder.data.note import Note
from icdcoder.errors import IcdcoderError
from icdcoder.io import file_sha256
from tests.test_tfidf import _notes

STATE = {"weights.npz", "bias.npy", "tfidf.json", "vectors.npz"}


class _Payload:
    """Creates ``marker`` when unpickled, as a crafted model file would run any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _meta(folder: Path) -> dict:
    return json.loads((folder / CODER_FILE).read_text(encoding="utf-8"))


def _write_meta(folder: Path, meta: dict) -> None:
    (folder / CODER_FILE).write_text(json.dumps(meta), encoding="utf-8")


def _rehash(folder: Path) -> None:
    """List the folder's current files in its manifest, as whoever crafted it could."""
    meta = _meta(folder)
    meta["files"] = {rel: file_sha256(folder / rel) for rel in folder_files(folder)}
    _write_meta(folder, meta)


@pytest.fixture
def model(tiny_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_a_saved_folder_records_the_sha256_of_every_file(model):
    files = _meta(model)["files"]
    assert set(files) == STATE == {p.name for p in model.iterdir()} - {CODER_FILE}
    assert all(files[name] == file_sha256(model / name) for name in files)
    assert isinstance(Coder.load(model), TfidfCoder)


def test_a_changed_file_is_reported(model):
    with open(model / "bias.npy", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IcdcoderError, match=rf"{model}: bias\.npy does not match the sha256 recorded in coder\.json"):
        Coder.load(model)


@pytest.mark.parametrize("name", ["notes.txt", ".DS_Store", "extra/weights.npz"])
def test_a_file_the_coder_does_not_write_is_refused(model, name):
    (model / name).parent.mkdir(exist_ok=True)
    (model / name).write_text("x", encoding="utf-8")
    with pytest.raises(IcdcoderError, match=rf"{model}: unexpected file {name}; a saved tfidf coder holds only"):
        Coder.load(model)


def test_a_file_the_manifest_does_not_list_or_lacks_is_refused(model):
    meta = _meta(model)
    del meta["files"]["vectors.npz"]
    _write_meta(model, meta)
    with pytest.raises(IcdcoderError, match=rf"{model}: vectors\.npz not in the manifest"):
        Coder.load(model)
    (model / "vectors.npz").unlink()
    meta["files"]["vectors.npz"] = "0" * 64
    _write_meta(model, meta)
    with pytest.raises(IcdcoderError, match=rf"{model}: vectors\.npz missing"):
        Coder.load(model)


def test_a_link_is_refused(model, tmp_path):
    (model / "bias.npy").rename(tmp_path / "elsewhere.npy")
    (model / "bias.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(IcdcoderError, match=r"bias\.npy is not a plain file"):
        Coder.load(model)


def test_a_folder_saved_before_the_manifest_loads_with_a_warning(model, caplog):
    meta = _meta(model)
    del meta["files"]
    _write_meta(model, meta)
    with caplog.at_level(logging.WARNING, logger="icdcoder.coders.base"):
        assert isinstance(Coder.load(model), TfidfCoder)
    assert "saved before model folders recorded file hashes" in caplog.text


@pytest.mark.parametrize("bad", ["", "[1, 2", '{"params": {}}'])
def test_a_damaged_coder_json_names_itself(model, bad):
    (model / CODER_FILE).write_text(bad, encoding="utf-8")
    with pytest.raises(IcdcoderError, match=r"coder\.json: (cannot read|not a saved coder)"):
        Coder.load(model)


def test_save_refuses_to_write_a_file_load_would_refuse(tiny_model_dir, tmp_path, monkeypatch):
    coder = Coder.load(tiny_model_dir)
    plain = TfidfCoder._save_state

    def also_pickles(self, folder):
        plain(self, folder)
        (folder / "debug.pkl").write_bytes(pickle.dumps({"a": 1}))

    monkeypatch.setattr(TfidfCoder, "_save_state", also_pickles)
    with pytest.raises(IcdcoderError, match=r"unexpected file debug\.pkl \(debug\.pkl: a format that can run code"):
        coder.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------------- crafted pickles
# a crafted pickle where a coder keeps its state, where an HF folder could hold weights, and in a nested
# coder's folder; with the manifest listing it or not, trusted or not: it is refused and never opened
PLACES = ["vectorizers.pkl", "model.pkl", "lm/pytorch_model.bin", "lm/model.pt", "encoder/pytorch_model.bin",
          "encoder/model.pth", "tfidf/vectorizers.pkl"]


@pytest.mark.parametrize("coder", sorted(BUILTIN))
@pytest.mark.parametrize("listed", [False, True], ids=["unlisted", "listed"])
def test_a_crafted_pickle_in_any_coders_folder_runs_nothing(tmp_path, coder, listed):
    marker = tmp_path / "ran"
    for place in PLACES:
        folder = tmp_path / f"m-{place.replace('/', '-')}"
        (folder / place).parent.mkdir(parents=True, exist_ok=True)
        _write_meta(folder, {"coder": coder, "params": {}})
        (folder / place).write_bytes(pickle.dumps(_Payload(marker)))
        if listed:
            _rehash(folder)
        for trust in (False, True):
            with pytest.raises(IcdcoderError):
                Coder.load(folder, trust_pickle=trust)
    assert not marker.exists()


def test_the_pickle_is_named_and_the_flag_to_trust_it_given(tmp_path, model):
    (model / "vectorizers.pkl").write_bytes(pickle.dumps(_Payload(tmp_path / "ran")))
    with pytest.raises(IcdcoderError, match=rf"{model}: vectorizers\.pkl is a pickle.*--trust-pickle"):
        Coder.load(model)
    (model / "vectorizers.pkl").unlink()
    (model / "extra.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(IcdcoderError, match=r"unexpected file extra\.pkl \(extra\.pkl: a format that can run code"):
        Coder.load(model, trust_pickle=True)  # trust covers an old TF-IDF model's own pickle, nothing else


def test_an_hf_folder_holds_what_transformers_writes_and_nothing_that_runs_code(tmp_path):
    gen, plm = coder_class("llm_prompt"), coder_class("plm_icd")
    written = ["config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
               "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
               "special_tokens_map.json", "vocab.txt", "adapter_config.json", "adapter_model.safetensors",
               "README.md"]
    check_file_names(tmp_path, gen, ["generative.json", "pool.jsonl", *(f"lm/{w}" for w in written),
                                     "lm/tiny_lm.json", "lm/stage.json"], trust_pickle=False)
    check_file_names(tmp_path, plm, ["plm_icd.json", "head.safetensors", *(f"encoder/{w}" for w in written)],
                     trust_pickle=False)
    for cls, sub in ((gen, "lm"), (plm, "encoder")):
        for name in ("pytorch_model.bin", "training_args.bin", "model.pt", "optimizer.pth", "state.pkl",
                     "modeling_custom.py"):
            with pytest.raises(IcdcoderError, match=rf"unexpected file {sub}/{name} \(.*can run code"):
                check_file_names(tmp_path, cls, [f"{sub}/{name}"], trust_pickle=False)


# ------------------------------------------------------------------------------------ command line
def _old_pickled(model: Path, payload: object) -> Path:
    """``model`` as a folder of the old format (no hashes, vectorisers pickled) holding ``payload``."""
    meta = _meta(model)
    del meta["files"]
    _write_meta(model, meta)
    (model / "tfidf.json").unlink()
    (model / "vectors.npz").unlink()
    (model / "vectorizers.pkl").write_bytes(pickle.dumps(payload))
    return model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icdcoder.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_code_and_serve_refuse_a_crafted_pickle_and_run_nothing(model, tmp_path):
    marker = tmp_path / "ran"
    _old_pickled(model, _Payload(marker))
    note = tmp_path / "note.txt"
    note.write_text("patient with hypertension", encoding="utf-8")
    runs = {"code": _cli("code", "--model", str(model), str(note)),
            "code --trust-pickle": _cli("code", "--model", str(model), "--trust-pickle", str(note)),
            "serve": _cli("serve", "--model", str(model), "--port", "1"),
            "serve --trust-pickle": _cli("serve", "--model", str(model), "--port", "1", "--trust-pickle")}
    for name, run in runs.items():
        out = run.stdout + run.stderr
        assert run.returncode == 2 and "Traceback" not in out, (name, out)
        assert ("refused to load" if "trust" in name else "--trust-pickle") in out, (name, out)
    assert not marker.exists()


def test_an_old_pickled_model_loads_only_when_trusted(tmp_path, caplog):
    fitted = TfidfCoder(word_ngrams=(1, 1), C=10.0).fit(_notes(40, 0))  # scikit-learn's vectorisers, as pickled
    model = fitted.save(tmp_path / "model")
    _old_pickled(model, {"word": fitted.word_vec, "char": None, "codes": fitted.codes, "platt": fitted.platt})
    with pytest.raises(IcdcoderError, match="--trust-pickle"):
        Coder.load(model)
    with caplog.at_level(logging.WARNING, logger="icdcoder.coders.base"):
        loaded = Coder.load(model, trust_pickle=True)
    assert "because it is trusted (--trust-pickle)" in caplog.text
    notes = _notes(5, 1)
    assert [p.model_dump() for p in loaded.predict(notes)] == [p.model_dump() for p in fitted.predict(notes)]
