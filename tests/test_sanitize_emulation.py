"""The planted bugs of scripts/sanitize_emulation.py still fit the kernels.

CI's sanitizer step builds copies of csrc/cuda/spectral_kernels.cuh with a bug planted in each and
fails unless ASan and TSan report them; these tests say at once, without building anything, when
an edit of the kernels leaves a plant nothing to change or changes the wrong thing.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sanitize_emulation.py"
KERNELS = ROOT / "csrc" / "cuda" / "spectral_kernels.cuh"


@pytest.fixture(scope="module")
def harness():
    if not SCRIPT.exists() or not KERNELS.exists():
        pytest.skip("the sanitizer harness or the CUDA kernels are not in this checkout")
    spec = importlib.util.spec_from_file_location("sanitize_emulation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclasses
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _changed_lines(a: str, b: str) -> list[tuple[str, str]]:
    la, lb = a.splitlines(), b.splitlines()
    assert len(la) == len(lb)
    return [(x, y) for x, y in zip(la, lb) if x != y]


def test_each_plant_changes_one_line_of_the_fused_kernel(harness):
    text = KERNELS.read_text()
    start, end = harness._fused_kernel_body(text)
    assert {p.sanitizer for p in harness.PLANTS} == {"asan", "tsan"}
    for plant in harness.PLANTS:
        planted = plant.apply(text)
        (before, after), *rest = _changed_lines(text, planted)
        assert not rest, plant.name
        # The change lies inside the fused kernel, and the rest of the file is untouched.
        assert planted[:start] == text[:start] and planted.endswith(text[end:])
        if plant.name == "race":
            assert "__syncthreads();" in before and "__syncthreads();" not in after
        else:
            assert re.search(r"col_padded\[.*\) \+ 1 /\*", after), after


def test_plants_never_reach_the_library_sources(harness):
    for f in (ROOT / "csrc").rglob("*"):
        if f.is_file():
            assert harness.MARK not in f.read_text(errors="replace"), f
