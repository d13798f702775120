# Sourced by scripts/test.sh and scripts/demo.sh: a fresh virtual environment with this project
# installed the way the README says. Reads VENV (default .venv) and the build switches of setup.py
# (BLURDIFF_NO_CUDA, TORCH_CUDA_ARCH_LIST, CUDA_HOME, MAX_JOBS); PIP_EXTRAS picks extras ("[test]").
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch first: the extension is compiled against the torch it will run with, hence also
# --no-build-isolation below (an isolated build would fetch a second torch that may not match).
python -m pip install -q "torch==2.14.1" setuptools wheel ninja pybind11 numpy
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation ".${PIP_EXTRAS:-}"
