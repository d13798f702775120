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


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of many small ops: with two threads on a busy two-core machine every op's
    parallel region waits for a descheduled thread (measured: 130 s instead of 19 s for the
    sampler tests). One thread is as fast when the machine is idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
