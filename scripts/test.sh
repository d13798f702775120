#!/usr/bin/env bash
# The README's test command: a fresh virtual environment, the project installed the way a user
# installs it (building the C++/CUDA extension), then the whole test suite.
#   bash scripts/test.sh            (VENV=path to choose where the environment goes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch first: the extension is compiled against the torch it will run with.
python -m pip install -q "torch==2.14.1" ninja pybind11 numpy
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation ".[test]"
# The tests must exercise the compiled kernels, not a silent fallback to the reference.
export BLURDIFF_REQUIRE_KERNELS=1
if command -v nvcc >/dev/null 2>&1 && [ "${BLURDIFF_NO_CUDA:-0}" != 1 ]; then
  export BLURDIFF_REQUIRE_CUDA_KERNELS=1
fi
# Plain `pytest` (not `python -m pytest`): the source folders stay off sys.path, so the tests
# import the installed packages with their compiled kernels.
pytest -q "$@"
