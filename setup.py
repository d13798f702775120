"""Builds the extension ``blurdiff_ops._C`` (metadata lives in pyproject.toml).

- CPU kernels always; CUDA kernels whenever torch is a CUDA build and a CUDA toolkit is found,
  GPU or not (``BLURDIFF_NO_CUDA=1`` skips them).
- The toolkit: ``CUDA_HOME`` (or ``CUDA_PATH``) when set, else the toolkit around an ``nvcc``
  on the PATH, else the usual install folders. A toolkit must hold ``include/cuda_runtime.h``:
  an ``nvcc`` wrapper script outside its toolkit is not taken for the toolkit itself.
- Architectures: ``TORCH_CUDA_ARCH_LIST`` when set, else the visible GPUs', else a default
  list (7.5, 8.0, 8.6, 9.0 + PTX, and 7.0 on CUDA < 13). ``MAX_JOBS`` bounds parallel jobs.
"""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _is_toolkit(path) -> bool:
    return (
        bool(path) and (Path(path) / "include" / "cuda_runtime.h").is_file() and (Path(path) / "bin" / "nvcc").exists()
    )


def find_cuda_home():
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        if not _is_toolkit(explicit):
            sys.exit(f"CUDA_HOME={explicit} is not a CUDA toolkit (no include/cuda_runtime.h or bin/nvcc)")
        return explicit
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates += [Path("/usr/local/cuda")] + sorted(Path(p) for p in glob.glob("/usr/local/cuda-*"))[::-1]
    candidates += [Path("/opt/cuda"), Path("/usr")]
    if nvcc:
        # A wrapper script (exec /path/to/toolkit/bin/nvcc) names its toolkit inside.
        try:
            text = Path(nvcc).read_text(errors="ignore")[:4096]
        except OSError:
            text = ""
        for word in text.split():
            if word.endswith("/bin/nvcc"):
                candidates.insert(0, Path(word).parent.parent)
    for c in candidates:
        if _is_toolkit(c):
            return str(c)
    return None


def _toolkit_version(cuda_home):
    out = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    for word in out.replace(",", " ").split():
        if word[:1].isdigit() and word.count(".") == 1:
            return tuple(int(v) for v in word.split("."))
    return (0, 0)


def extension_modules():
    import torch

    want_cuda = os.environ.get("BLURDIFF_NO_CUDA", "0") not in ("1", "true", "yes")
    cuda_home = find_cuda_home() if (want_cuda and torch.version.cuda) else None
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            major = _toolkit_version(cuda_home)[0]
            os.environ["TORCH_CUDA_ARCH_LIST"] = ("7.0;" if major < 13 else "") + "7.5;8.0;8.6;9.0+PTX"
        print(
            f"blurdiff: building CUDA kernels with the toolkit in {cuda_home} "
            f"for TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)')}"
        )
    else:
        why = (
            "BLURDIFF_NO_CUDA is set"
            if not want_cuda
            else ("torch is a CPU build" if not torch.version.cuda else "no CUDA toolkit found (set CUDA_HOME)")
        )
        print(f"blurdiff: building CPU kernels only ({why})")

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/blurdiff_ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No errno and no FP traps (as torch itself is built): lets the noise and coefficient loops
    # vectorise (a select cannot be speculated while a multiply might trap).
    cxx = [
        "-O3",
        "-fvisibility=hidden",
        "-fno-math-errno",
        "-fno-trapping-math",
        f"-DBLURDIFF_TORCH_VERSION_TOKENS={torch.__version__}",
    ]
    link = []
    # at::parallel_for is a header template: without OpenMP in *our* compile it runs serially
    # (measured: 2 threads no faster than 1). The pip wheels of torch load their libgomp before
    # ours, so there is one OpenMP runtime. BLURDIFF_NO_OPENMP=1 opts out (other compilers/runtimes).
    if (
        torch.backends.openmp.is_available()
        and sys.platform.startswith("linux")
        and os.environ.get("BLURDIFF_NO_OPENMP", "0") != "1"
    ):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if cuda_home:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--threads=2", "-DBLURDIFF_WITH_CUDA", f"-DBLURDIFF_TORCH_VERSION_TOKENS={torch.__version__}"]
        ext = CUDAExtension(
            "blurdiff_ops._C",
            sources,
            extra_compile_args={"cxx": cxx + ["-DBLURDIFF_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link,
            py_limited_api=False,
        )
    else:
        ext = CppExtension("blurdiff_ops._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
