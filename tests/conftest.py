import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ICDCODER_SHARED", REPO.parent / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config):
    """One ontology index for every test and subprocess of the session (``ICDCODER_CACHE``): pytest's
    cache folder, so later sessions reuse it and a fresh CI machine builds it once, in the first test
    that asks the ontology anything. A cache folder given in the environment wins."""
    if not os.environ.get("ICDCODER_CACHE"):
        cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
        if cache is not None:
            folder = cache.mkdir("icdcoder")
        else:
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix="icdcoder-cache-"))
        os.environ["ICDCODER_CACHE"] = str(folder)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (CI has it); tests that need it skip with a reason when absent."""
    if not SHARED.exists():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def codiesp_root(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "codiesp"
    if not root.exists():
        pytest.skip(f"CodiEsp copy {root} is absent")
    return root


@pytest.fixture(scope="session")
def mimic_splits_dir(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "mimic_splits"
    if not root.exists():
        pytest.skip(f"MIMIC split files {root} are absent")
    return root


@pytest.fixture(scope="session")
def small_synth():
    """A small synthetic corpus (train 200, val 60, test 20 notes): enough for a TF-IDF coder that works."""
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig(n_train=200, n_val=60, n_test=20)):
        splits[split].append(note)
    return splits


@pytest.fixture(scope="session")
def tiny_model_dir(small_synth, tmp_path_factory) -> Path:
    """A TF-IDF coder fitted on ``small_synth`` with its threshold tuned, saved once per session."""
    from icdcoder.coders.tfidf import TfidfCoder

    coder = TfidfCoder(word_ngrams=(1, 1), C=10.0).fit(small_synth["train"], small_synth["val"])
    return coder.save(tmp_path_factory.mktemp("serving") / "model")
