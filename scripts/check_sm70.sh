#!/usr/bin/env bash
# Compiles the CUDA sources for sm_70 (V100) with a CUDA 12 nvcc: CUDA 13, the toolkit on the CI
# machine, no longer targets sm_70, so this is how a machine without CUDA 12 checks that the code
# keeps to sm_70 (sm_80+ features guarded).
#   bash scripts/check_sm70.sh [WORK_DIR]      (PYTHON: an interpreter with torch; default .venv's)
# The toolkit is put together in WORK_DIR from registry packages, nothing installed system-wide:
# nvcc, cicc, ptxas and friends from Debian trixie's non-free nvidia-cuda-toolkit .debs (checked
# against the signed release file), the headers from NVIDIA's PyPI wheels of the same release.
# About 120 MB of downloads (cached in WORK_DIR) and one minute of compiling on two cores. CUDA
# 12.4 takes host compilers up to GCC 13 (this machine's g++ is 12).
# Exit status: 0 compiled, 1 failed. When Debian's mirror cannot be reached at all, it warns and
# exits 0, unless BLURDIFF_SM70_REQUIRED=1; every failure after that first contact is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(realpath -m "${1:-${TMPDIR:-/tmp}/blurdiff-cuda12}")
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
MIRROR=${DEBIAN_MIRROR:-https://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DIST=$MIRROR/dists/trixie
mkdir -p "$W/dl"
fail() { echo "FAILED: $1" >&2; exit 1; }

"$PY" -c "import torch, pip" || fail "$PY cannot import torch and pip (set PYTHON)"
for tool in curl gpgv xz dpkg unzip sha256sum; do command -v $tool >/dev/null || fail "$tool is missing"; done

# 1. trixie's signed release file, then the package index it vouches for.
if ! curl -fsSL -m 120 -o "$W/dl/InRelease" "$DIST/InRelease"; then
  [ "${BLURDIFF_SM70_REQUIRED:-0}" = 1 ] && fail "cannot reach $MIRROR"
  echo "WARNING: sm_70 check skipped: cannot reach $MIRROR" >&2
  exit 0
fi
gpgv --keyring "$KEYRING" --output "$W/dl/Release" "$W/dl/InRelease" 2>/dev/null \
  || fail "the signature of $DIST/InRelease does not verify against $KEYRING"
index=non-free/binary-amd64/Packages.xz
want=$(awk -v f="$index" '/^SHA256:/ {s = 1; next} /^[^ ]/ {s = 0} s && $3 == f {print $1}' "$W/dl/Release")
[ -n "$want" ] || fail "$index is not listed in trixie's Release"
curl -fsSL -m 120 -o "$W/dl/Packages.xz" "$DIST/$index" || fail "cannot download $index"
echo "$want  $W/dl/Packages.xz" | sha256sum -c --quiet - || fail "$index does not match its checksum"
xz -dc "$W/dl/Packages.xz" >"$W/dl/Packages"

# 2. The toolkit's .debs, by name from the index (a point release may renew them), checksummed.
debs=()
for pkg in nvidia-cuda-toolkit libnvvm4; do
  read -r file sum < <(awk -v p="$pkg" '$0 == "Package: " p {f = 1} f && /^Filename:/ {n = $2}
    f && /^SHA256:/ {print n, $2; exit}' "$W/dl/Packages") || true
  [ -n "${file:-}" ] && [ -n "${sum:-}" ] || fail "no $pkg in trixie non-free"
  deb="$W/dl/${file##*/}"
  if [ ! -f "$deb" ] || ! echo "$sum  $deb" | sha256sum -c --quiet - >/dev/null 2>&1; then
    curl -fsSL -m 600 -o "$deb" "$MIRROR/$file" || fail "cannot download $file"
    echo "$sum  $deb" | sha256sum -c --quiet - || fail "$file does not match its checksum"
  fi
  debs+=("$deb")
done

# 3. A CUDA_HOME-style tree in $W/cuda.
rm -rf "$W/root" "$W/cuda"
for d in "${debs[@]}"; do dpkg -x "$d" "$W/root"; done
R=$W/root/usr C=$W/cuda
mkdir -p "$C/bin" "$C/nvvm/bin" "$C/nvvm/lib64" "$C/include"
cp "$R/lib/nvidia-cuda-toolkit/bin/nvcc" "$C/bin/"  # the ELF; usr/bin/nvcc is Debian's wrapper
cp -r "$R/lib/nvidia-cuda-toolkit/bin/crt" "$C/bin/"
# nvdisasm: cuobjdump -sass runs it (scripts/gpu_static_report.py; CUDA 13's no longer reads sm_70).
for b in ptxas cudafe++ fatbinary nvlink cuobjdump nvdisasm; do cp "$R/bin/$b" "$C/bin/"; done
cp "$R/lib/nvidia-cuda-toolkit/bin/cicc" "$C/nvvm/bin/"
cp -r "$R/lib/nvidia-cuda-toolkit/libdevice" "$C/nvvm/"
cp "$R"/lib/x86_64-linux-gnu/libnvvm.so.* "$C/nvvm/lib64/"
# Debian's own nvcc.profile names /usr/lib/nvidia-cuda-toolkit; this one is the stock relative layout.
cat >"$C/bin/nvcc.profile" <<'EOF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
EOF
release=$("$C/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\),.*/\1/p')
case "$release" in 12.*) ;; *) fail "trixie's nvcc is CUDA '$release', not 12.x" ;; esac

# Headers of the same release from PyPI (pip checks the index's hashes, and skips yanked files
# such as cccl 12.4.127, which lacks nv/target).
for w in nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-cccl-cu12; do
  whl=$(ls "$W/dl/${w//-/_}-$release."*.whl 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$whl" ]; then
    "$PY" -m pip download -q --no-deps -d "$W/dl" "$w~=$release.0" || fail "cannot download $w $release"
    whl=$(ls "$W/dl/${w//-/_}-$release."*.whl | sort -V | tail -1)
  fi
  rm -rf "$W/whl"
  unzip -qo "$whl" -d "$W/whl" || { rm -f "$whl"; fail "cannot unpack $whl (removed; run again)"; }
  cp -r "$W/whl"/nvidia/*/include/. "$C/include/"
done
rm -f "$C/include/__init__.py"

# 4. Compile with the flags setup.py gets from torch's cpp_extension (c++20, as torch 2.14 needs),
#    for sm_70 only.
read -r TORCH_INC TORCH_VER PY_INC < <("$PY" -c '
import os, sysconfig, torch
print(os.path.join(os.path.dirname(torch.__file__), "include"), torch.__version__, sysconfig.get_paths()["include"])')
host=()
[ -n "${CC:-}" ] && host=(-ccbin "$CC")  # as cpp_extension does
start=$(date +%s)
# The digest of csrc/ as compiled (taken first): scripts/gpu_static_report.py reuses each object and
# its ptxas log (-Xptxas -v: registers, spills, shared memory per kernel) while csrc/ still has it,
# so CI compiles sm_70 once. The same recipe is in that script's csrc_digest().
digest=$(cd csrc && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
rm -f "$W/csrc.sha256"
for cu in csrc/cuda/*.cu; do
  obj="$W/$(basename "$cu" .cu).o" log="$W/$(basename "$cu" .cu).sm_70.log"
  echo "nvcc $release: $cu -> sm_70"
  status=0
  PATH="$C/bin:$PATH" nvcc -c "$cu" -o "$obj" "${host[@]}" -std=c++20 -O3 --threads=2 \
    -gencode=arch=compute_70,code=sm_70 -Xptxas -v \
    -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" -I"$PY_INC" \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr --compiler-options -fPIC \
    -DBLURDIFF_WITH_CUDA "-DBLURDIFF_TORCH_VERSION_TOKENS=$TORCH_VER" \
    -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C >"$log" 2>&1 || status=$?
  # The compiler's messages without ptxas' resource lines (those are the report's to show).
  grep -vE '^ptxas info|^ +[0-9]+ bytes stack frame' "$log" || true
  [ "$status" = 0 ] || fail "$cu does not compile for sm_70 with CUDA $release"
  # The project's own files are named relative to the root (csrc/...), torch's by absolute path.
  if grep -qE '^csrc/.*warning' "$log"; then fail "warnings in csrc/ (above)"; fi
  elf=$("$C/bin/cuobjdump" --list-elf "$obj")
  [[ "$elf" == *sm_70* ]] || fail "no sm_70 code in $obj"
done
echo "$digest" >"$W/csrc.sha256"
echo "OK: csrc/cuda compiles for sm_70 with CUDA $release ($(( $(date +%s) - start )) s)"
