import os
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN_DIR = Path(os.environ.get("BLURDIFF_GOLDEN", Path(__file__).resolve().parents[1] / ".." / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden():
    """The authors' values (../shared/golden); a user's checkout has none, so skip there."""
    path = GOLDEN_DIR / "gray16_quartic.npz"
    if not path.exists():
        pytest.skip(f"golden values not found at {path} (they live in ../shared/golden beside the checkout)")
    return dict(np.load(path))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
