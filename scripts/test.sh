#!/usr/bin/env bash
# The README's test command: a fresh virtual environment, the project installed the way a user
# installs it (building the C++/CUDA extension), then the whole test suite.
#   bash scripts/test.sh            (VENV=path to choose where the environment goes)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_EXTRAS="[test,photos,diffusers]" . scripts/install_env.sh
# The tests must exercise the compiled kernels, not a silent fallback to the reference.
export BLURDIFF_REQUIRE_KERNELS=1
if command -v nvcc >/dev/null 2>&1 && [ "${BLURDIFF_NO_CUDA:-0}" != 1 ]; then
  export BLURDIFF_REQUIRE_CUDA_KERNELS=1
fi
# Plain `pytest` (not `python -m pytest`): the source folders stay off sys.path, so the tests
# import the installed packages with their compiled kernels.
pytest -q "$@"
