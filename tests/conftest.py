import os
from pathlib import Path

import numpy as np
import pytest
import torch

# The authors' values (a copy of the project's shared golden/ folder, see golden/README.md), kept in the repo so
# that a clean clone always checks against them; BLURDIFF_GOLDEN points elsewhere.
GOLDEN_DIR = Path(os.environ.get("BLURDIFF_GOLDEN", Path(__file__).resolve().parent / "golden"))


@pytest.fixture(scope="session")
def golden():
    path = GOLDEN_DIR / "gray16_quartic.npz"
    assert path.exists(), f"golden values missing: {path}"
    return dict(np.load(path))


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of many small ops, which say so with ``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``: with two threads on a busy two-core machine
    every op's parallel region waits for a descheduled thread (measured: 130 s instead of 19 s for
    the sampler tests). One thread is as fast when the machine is idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_lmdb_of(tmp_path_factory):
    """``make(n, size, seed=0) -> Path``: a toy lmdb (``blurdiff.toy_data.make_toy_lmdb``) made once
    per session for each ``(n, size, seed)``; tests only read it."""
    from blurdiff.toy_data import make_toy_lmdb

    made: dict[tuple, Path] = {}

    def make(n: int, size: int, seed: int = 0) -> Path:
        if (n, size, seed) not in made:
            path = tmp_path_factory.mktemp("toy") / f"toy-{n}x{size}-seed{seed}"
            make_toy_lmdb(str(path), n, size, seed=seed)
            made[n, size, seed] = path
        return made[n, size, seed]

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
