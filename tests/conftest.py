import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ICDCODER_SHARED", REPO.parent / "shared"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
