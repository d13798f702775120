#!/usr/bin/env bash
# Style checks, with pinned tools installed into the active Python environment when missing.
#   bash scripts/lint.sh          check; exit status 1 if any check finds something
#   bash scripts/lint.sh --fix    rewrite the files instead, where a tool can
# The Python environment: $PYTHON, else the active virtual environment's, else .venv's, else
# python3. Each check below is one block that adds its name to `failed` on a finding; the summary
# and the exit status come from the EXIT trap, so further blocks can be appended at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

FIX=0
[ "${1:-}" = "--fix" ] && FIX=1

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then PY=$VIRTUAL_ENV/bin/python
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

# ensure_tool PACKAGE VERSION COMMAND: prints the path of COMMAND from PACKAGE==VERSION in PY's
# environment, installing that version with pip first when it is missing or another one.
ensure_tool() {
  local pkg=$1 version=$2 cmd=$3 have bin
  have=$("$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$pkg")
  bin="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/$cmd"
  if [ "$have" != "$version" ] || [ ! -x "$bin" ]; then
    echo "lint: installing $pkg==$version into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
    "$PY" -m pip install -q "$pkg==$version" >&2
  fi
  echo "$bin"
}

failed=()
finish() {
  local rc=$?
  [ "$rc" -ne 0 ] && { echo "lint: stopped by an error (exit status $rc)" >&2; exit "$rc"; }
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "lint: FAILED: ${failed[*]}" >&2
    exit 1
  fi
  echo "lint: OK"
}
trap finish EXIT

# --- C++ and CUDA (csrc/): clang-format, style in .clang-format ---------------------------------
CLANG_FORMAT=$(ensure_tool clang-format 19.1.7 clang-format)
mapfile -t cxx_files < <(find csrc -type f \( -name '*.c' -o -name '*.cc' -o -name '*.cpp' -o -name '*.h' \
  -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' \) | sort)
if [ "$FIX" = 1 ]; then
  "$CLANG_FORMAT" -i "${cxx_files[@]}"
elif ! "$CLANG_FORMAT" --dry-run --Werror "${cxx_files[@]}"; then
  echo "lint: csrc/ is not formatted (bash scripts/lint.sh --fix, or $CLANG_FORMAT -i FILE)" >&2
  failed+=(clang-format)
else
  echo "lint: clang-format $("$CLANG_FORMAT" --version | sed 's/.*version //'): ${#cxx_files[@]} files in csrc/ formatted"
fi

# --- Python: ruff lint and format, rules and line length in pyproject.toml -----------------------
RUFF=$(ensure_tool ruff 0.17.6 ruff)
if [ "$FIX" = 1 ]; then
  "$RUFF" check --fix . || failed+=(ruff-check)
  "$RUFF" format .
else
  "$RUFF" check . || { echo "lint: ruff check found problems (bash scripts/lint.sh --fix fixes some)" >&2; failed+=(ruff-check); }
  if ! "$RUFF" format --check .; then
    echo "lint: Python files are not formatted (bash scripts/lint.sh --fix, or $RUFF format)" >&2
    failed+=(ruff-format)
  fi
fi
