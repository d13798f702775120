#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine, from a fresh copy of the tree.
#   bash scripts/gpu_check.sh OUT_DIR
# Builds the extension in place for the visible GPU, runs the CUDA tests, a few small kernels
# under compute-sanitizer (memcheck, racecheck: any report fails), the static report of the
# kernels' machine code (scripts/gpu_static_report.py, sm_80 and sm_90; it needs PyPI's cuobjdump
# and nvdisasm, or skips), both CUDA paths forced in turn against the cost model's estimates and
# the static report's bounds (scripts/gpu_paths.py), and the GPU benchmarks, and writes report.md
# plus the logs to OUT_DIR. Budget: under 9 minutes on one H100.
# Needs torch (a CUDA build), nvcc, ninja, pytest; pytest-benchmark for the benchmarks (wheels
# in .whl/ are installed when it is missing). lmdb is not needed.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 BLURDIFF_BENCH_QUICK=1
status=0
step() { echo "== $1" | tee -a "$OUT/report.md"; }
: >"$OUT/report.md"

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1; } 2>&1 | tee -a "$OUT/report.md"

if ! python -c "import pytest_benchmark" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

step "build (in place, visible GPU's architecture)"
start=$(date +%s)
if MAX_JOBS=${MAX_JOBS:-16} python setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  echo "built in $(( $(date +%s) - start )) s" | tee -a "$OUT/report.md"
else
  echo "BUILD FAILED (see build.log)" | tee -a "$OUT/report.md"; tail -30 "$OUT/build.log"; exit 1
fi
python -c "import blurdiff_ops as b; assert b.kernels_available('cuda'), 'CUDA kernels not loaded'" || exit 1

step "CUDA tests"
BLURDIFF_REQUIRE_KERNELS=1 BLURDIFF_REQUIRE_CUDA_KERNELS=1 timeout 240 python -m pytest -q -m cuda \
  tests/test_kernels.py tests/test_cuda_graphs.py tests/test_sample.py 2>&1 | tee "$OUT/tests.log" | tail -5 | tee -a "$OUT/report.md"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  if [ -z "$SAN" ]; then echo "compute-sanitizer not found" | tee -a "$OUT/report.md"; status=1; continue; fi
  timeout 150 "$SAN" --tool "$tool" --error-exitcode 3 python scripts/cuda_sanitize.py >"$OUT/sanitize_$tool.log" 2>&1
  rc=$?
  tail -3 "$OUT/sanitize_$tool.log" | tee -a "$OUT/report.md"
  [ $rc = 0 ] || { echo "$tool FAILED (exit $rc)" | tee -a "$OUT/report.md"; status=1; }
done

step "static report (sm_80, sm_90: estimates from the machine code)"
if timeout 240 python scripts/gpu_static_report.py --no-sm70 --jobs 4 --work "$OUT/static_build" \
  --json "$OUT/static_report.json" >"$OUT/static_report.md" 2>"$OUT/static_report.log"; then
  tail -12 "$OUT/static_report.md" | tee -a "$OUT/report.md"
else
  echo "static report unavailable (see static_report.log): estimates below without its bounds" | tee -a "$OUT/report.md"
  tail -3 "$OUT/static_report.log"
fi

step "CUDA paths: estimated against measured"
timeout 180 python scripts/gpu_paths.py --static-json "$OUT/static_report.json" 2>&1 | tee -a "$OUT/report.md"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "GPU benchmarks"
if python -c "import pytest_benchmark" 2>/dev/null; then
  timeout 240 python -m pytest -q benchmarks/bench_ops.py -k cuda --benchmark-only \
    --benchmark-json="$OUT/bench_ops.json" >"$OUT/bench.log" 2>&1 || status=1
  python benchmarks/report.py "$OUT/bench_ops.json" | tee -a "$OUT/report.md"
  # End to end: adm-lsun64's train step (fp32, bf16) and sampling (bf16, CUDA graph; then the two
  # compiled variants, which compile the 121 M network, in a call of their own), each sampling
  # variant paired with the eager float32 loop. A call that runs out of time loses only its rows.
  timeout 150 python -m pytest -q benchmarks/bench_train.py benchmarks/bench_sampler.py \
    -k "cuda and (test_train_step or against_eager) and not compiled" --benchmark-only \
    --benchmark-json="$OUT/bench_e2e.json" >>"$OUT/bench.log" 2>&1 || status=1
  timeout 240 python -m pytest -q benchmarks/bench_sampler.py -k "cuda and against_eager and compiled" \
    --benchmark-only --benchmark-json="$OUT/bench_e2e_compiled.json" >>"$OUT/bench.log" 2>&1 || status=1
  python - "$OUT/bench_e2e.json" "$OUT/bench_e2e_compiled.json" <<'EOF' | tee -a "$OUT/report.md"
import json, os, sys
for path in sys.argv[1:]:
    if not os.path.exists(path):
        print(f"{os.path.basename(path)}: not written (the run failed or ran out of time; see bench.log)")
        continue
    for b in json.load(open(path))["benchmarks"]:
        e = b["extra_info"]
        if "speedup" in e:
            rates = ", ".join(f"{k} {v:.1f}" for k, v in e["images_per_s"].items())
            print(f"{b['name']}: images/s {rates}; speedup {e['speedup']:.2f}x, first call {e['first_call_s']:.1f} s")
        else:
            print(f"{b['name']}: {e['steps_per_s']:.2f} steps/s, {e['images_per_s']:.0f} images/s")
EOF
else
  echo "pytest-benchmark missing: benchmarks skipped" | tee -a "$OUT/report.md"; status=1
fi
step "exit status $status"
exit $status
