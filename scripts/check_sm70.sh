#!/usr/bin/env bash
# Compiles the CUDA sources for sm_70 (V100) with a CUDA 12 nvcc: CUDA 13, the toolkit on the CI
# machine, no longer targets sm_70, so this is the only way a machine without CUDA 12 can check
# that the code keeps to sm_70 (sm_80+ features guarded).
#   bash scripts/check_sm70.sh [WORK_DIR]      (PYTHON: an interpreter with torch; default .venv's)
# The toolkit is put together in WORK_DIR from registry packages, nothing installed system-wide:
# nvcc, cicc, ptxas and friends from Debian trixie's non-free nvidia-cuda-toolkit .debs, the
# headers from NVIDIA's PyPI wheels of the same release. About 120 MB of downloads (cached in
# WORK_DIR) and one minute of compiling per architecture on two cores.
# Exit status: 0 compiled (or, with a warning, the toolchain could not be fetched), 1 failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$PWD
W=$(realpath -m "${1:-${TMPDIR:-/tmp}/blurdiff-cuda12}")
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$W/dl"

unavailable() {
  echo "WARNING: sm_70 check skipped: $1 (the check needs $MIRROR and PyPI)" >&2
  exit 0
}

# 1. The toolkit's .debs, named by trixie's package index (a point release may renew them).
curl -fsSL -m 120 -o "$W/dl/Packages.xz" "$MIRROR/dists/trixie/non-free/binary-amd64/Packages.xz" \
  || unavailable "no trixie non-free package index"
xz -dcf "$W/dl/Packages.xz" >"$W/dl/Packages"
debs=()
for pkg in nvidia-cuda-toolkit libnvvm4; do
  file=$(awk -v p="$pkg" '$0 == "Package: " p {f = 1} f && /^Filename:/ {print $2; exit}' "$W/dl/Packages")
  [ -n "$file" ] || unavailable "no $pkg in trixie non-free"
  deb="$W/dl/${file##*/}"
  if [ ! -s "$deb" ]; then
    curl -fsSL -m 600 -o "$deb.part" "$MIRROR/$file" || unavailable "could not download $file"
    mv "$deb.part" "$deb"
  fi
  debs+=("$deb")
done

# 2. A CUDA_HOME-style tree in $W/cuda.
rm -rf "$W/root" "$W/cuda"
for d in "${debs[@]}"; do dpkg -x "$d" "$W/root"; done
R=$W/root/usr C=$W/cuda
mkdir -p "$C/bin" "$C/nvvm/bin" "$C/nvvm/lib64" "$C/include"
cp "$R/lib/nvidia-cuda-toolkit/bin/nvcc" "$C/bin/"  # the ELF; usr/bin/nvcc is Debian's wrapper
cp -r "$R/lib/nvidia-cuda-toolkit/bin/crt" "$C/bin/"
for b in ptxas cudafe++ fatbinary nvlink cuobjdump; do cp "$R/bin/$b" "$C/bin/"; done
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
case "$release" in 12.*) ;; *) echo "FAILED: trixie's nvcc is CUDA '$release', not 12.x"; exit 1 ;; esac

# Headers of the same release (pip skips yanked files, such as cccl 12.4.127 without nv/target).
wheels=(nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-cccl-cu12)
for w in "${wheels[@]}"; do
  ls "$W/dl/${w//-/_}-$release."*.whl >/dev/null 2>&1 \
    || "$PY" -m pip download -q --no-deps -d "$W/dl" "$w~=$release.0" || unavailable "could not download $w $release"
done
for w in "${wheels[@]}"; do
  whl=$(ls "$W/dl/${w//-/_}-$release."*.whl | sort -V | tail -1)
  rm -rf "$W/whl" && unzip -qo "$whl" -d "$W/whl" && cp -r "$W/whl"/nvidia/*/include/. "$C/include/"
done
rm -f "$C/include/__init__.py"

# 3. Compile as setup.py does (torch's cpp_extension flags, c++20 as torch 2.14 needs), for sm_70.
read -r TORCH_INC TORCH_VER PY_INC < <("$PY" -c '
import os, sysconfig, torch
print(os.path.join(os.path.dirname(torch.__file__), "include"), torch.__version__, sysconfig.get_paths()["include"])')
start=$(date +%s)
for cu in csrc/cuda/*.cu; do
  obj="$W/$(basename "$cu" .cu).o"
  echo "nvcc $release: $cu -> sm_70 SASS + compute_70 PTX"
  if ! PATH="$C/bin:$PATH" nvcc -c "$cu" -o "$obj" -std=c++20 -O3 --threads=2 -ccbin "${CXX:-g++}" \
      -gencode=arch=compute_70,code=sm_70 -gencode=arch=compute_70,code=compute_70 \
      -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" -I"$PY_INC" -I"$PROJECT/csrc" \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr --compiler-options -fPIC \
      -DBLURDIFF_WITH_CUDA "-DBLURDIFF_TORCH_VERSION_TOKENS=$TORCH_VER" \
      -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C 2>&1 | tee "$W/compile.log"; then
    echo "FAILED: $cu does not compile for sm_70 with CUDA $release"
    exit 1
  fi
  if grep -q "csrc/.*warning" "$W/compile.log"; then
    echo "FAILED: warnings in csrc/ (above)"
    exit 1
  fi
  "$C/bin/cuobjdump" --list-elf "$obj" | grep -q "sm_70" || { echo "FAILED: no sm_70 code in $obj"; exit 1; }
done
echo "OK: csrc/cuda compiles for sm_70 with CUDA $release ($(( $(date +%s) - start )) s)"
