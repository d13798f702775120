"""The emulated CUDA kernels under AddressSanitizer + UndefinedBehaviorSanitizer and under
ThreadSanitizer, with no GPU.

    python scripts/sanitize_emulation.py [--only asan|tsan] [--quick] [--jobs N] [--build-dir DIR]

The host emulation (csrc/emulation/simt_host.h) runs each CUDA thread as a std::thread and
__syncthreads as a std::barrier, so a shared-memory race between threads of a block is a data race
for TSan, and an out-of-bounds shared-memory access (exactly sized per block) one for ASan, as
compute-sanitizer's racecheck and memcheck would report them on a GPU. Each sanitizer build links
csrc/emulation/emulated_ops.cpp (the very kernels and host planning of csrc/cuda/) with
csrc/emulation/sanitize_driver.cpp, a program that runs every configuration the planning can
choose on both paths. Any sanitizer report fails the run.

Each run also checks the harness itself: a copy of the kernels with a planted bug, made in the
build folder (never in csrc/), must be reported: the fused kernel without its first
__syncthreads (a shared-memory race: TSan) and with its first read of the last array of its shared
memory moved one element on (a read one past the end: ASan). A plant that no longer matches the kernel's text
fails the run with the pattern to update.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
KERNELS = Path("cuda") / "spectral_kernels.cuh"  # relative to csrc/

SANITIZERS = {
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
    "tsan": ["-fsanitize=thread"],
}
ENVIRONMENT = {
    "asan": {
        "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    },
    "tsan": {"TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1"},
}
MARK = "BLURDIFF_PLANTED_BUG"  # in every planted change, never in csrc/
REPORT = re.compile(r"ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error:|ERROR: LeakSanitizer")


@dataclass
class Plant:
    """A bug planted in a copy of the kernels, and what its sanitizer must say about it."""

    name: str
    sanitizer: str
    description: str
    expect: list[str] = field(default_factory=list)  # patterns (re) the report must match

    def apply(self, text: str) -> str:
        body_start, body_end = _fused_kernel_body(text)
        body = text[body_start:body_end]
        if self.name == "race":
            patched, n = re.subn(r"__syncthreads\(\);", f"/* {MARK}: no barrier */", body, count=1)
        else:
            patched, n = re.subn(r"col_padded\[([^\]]+)\]", rf"col_padded[(\1) + 1 /* {MARK} */]", body, count=1)
        if n != 1:
            raise SystemExit(f"sanitize_emulation: cannot plant {self.name!r} ({self.description}) in {KERNELS}")
        return text[:body_start] + patched + text[body_end:]


PLANTS = [
    Plant(
        "race",
        "tsan",
        "the fused kernel's first __syncthreads() removed",
        ["WARNING: ThreadSanitizer: data race", "spectral_kernels.cuh"],
    ),
    Plant(
        "oob",
        "asan",
        "the fused kernel's first read of col_padded[i] made col_padded[i + 1]",
        # col_padded, the original -> padded map of the columns, ends the block's shared memory
        # (allocated in simt_host.h): its last entry + 1 is one element past it.
        [
            "ERROR: AddressSanitizer: heap-buffer-overflow",
            "READ of size",
            "0 bytes (after|to the right of)",
            "simt_host.h",
        ],
    ),
]


def _fused_kernel_body(text: str) -> tuple[int, int]:
    m = re.search(r"__global__[^;{]*\bspectral_map_fused_kernel\(", text)
    start = m.end() if m else -1
    end = text.find("__global__", start)
    if start < 0 or end < 0:
        raise SystemExit(f"sanitize_emulation: no spectral_map_fused_kernel followed by another kernel in {KERNELS}")
    return start, end


def _source_key(cmd: list[str]) -> str:
    """A digest of the command, of the file it compiles and of every header of its source tree."""
    import torch

    h = hashlib.sha256("\0".join([torch.__version__, *cmd]).encode())
    source = Path(cmd[-3])
    tree = source.parents[1]  # the csrc/ (or its planted copy) of ".../emulation/X.cpp"
    for f in sorted(tree.rglob("*")):
        if f == source or f.suffix in (".h", ".cuh"):
            h.update(str(f.relative_to(tree)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _torch_flags() -> tuple[list[str], list[str]]:
    import torch
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"] + [f"-isystem{p}" for p in cpp_extension.include_paths()]
    libs = cpp_extension.library_paths()
    ldflags = [f"-L{p}" for p in libs] + [f"-Wl,-rpath,{p}" for p in libs] + ["-ltorch_cpu", "-lc10"]
    return cflags, ldflags


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float | None = None):
    """Runs cmd with its output going to log (to follow a long run); returns (exit status, output,
    wall seconds, CPU seconds): the CPU time says what a run costs on a machine shared with others."""
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
    out = log.read_text(errors="replace")
    if timer and rc == -signal.SIGKILL:
        out += f"\nsanitize_emulation: killed after {timeout} s\n"
    return rc, out, time.monotonic() - t0, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SANITIZERS), help="one sanitizer (default: both)")
    ap.add_argument("--quick", action="store_true", help="a few small configurations only")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compilations and runs at once")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build" / "sanitize_emulation")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per program run")
    args = ap.parse_args(argv)
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise SystemExit(f"sanitize_emulation: no C++ compiler {cxx!r}")
    build = args.build_dir
    build.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = _torch_flags()
    common = [cxx, "-std=c++20", "-O1", "-g", "-fPIC", "-pthread", "-Wall", "-Wno-unknown-pragmas", *cflags]
    sanitizers = [args.only] if args.only else sorted(SANITIZERS)

    # The planted copies: the whole of csrc/, so the emulation's relative includes find the patched file.
    trees = {("clean", s): CSRC for s in sanitizers}
    for plant in PLANTS:
        if plant.sanitizer not in sanitizers:
            continue
        tree = build / f"csrc_{plant.name}"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(CSRC, tree)
        kernels = tree / KERNELS
        kernels.write_text(plant.apply(kernels.read_text()))
        trees[(plant.name, plant.sanitizer)] = tree

    # The driver is single-threaded host code around the dispatcher: built once, uninstrumented,
    # and linked into every program; what runs under the sanitizers is emulated_ops.cpp.
    compiles = {build / "driver.o": [*common, "-c", str(CSRC / "emulation" / "sanitize_driver.cpp")]}
    for (variant, s), tree in trees.items():
        src = tree / "emulation" / "emulated_ops.cpp"
        compiles[build / f"ops_{variant}_{s}.o"] = [*common, *SANITIZERS[s], "-c", str(src)]

    timings: list[tuple[str, float, float]] = []
    failed: list[str] = []

    def compile_one(obj: Path) -> tuple[Path, int, str, float, float]:
        cmd = [*compiles[obj], "-o", str(obj)]
        # Kept from an earlier run only if built by the same command from the same sources.
        key_file, key = obj.with_suffix(".key"), _source_key(cmd)
        if obj.exists() and key_file.exists() and key_file.read_text() == key:
            return obj, 0, "", 0.0, 0.0
        key_file.unlink(missing_ok=True)
        rc, out, dt, cpu = _run(cmd, obj.with_suffix(".log"))
        if rc == 0:
            key_file.write_text(key)
        return obj, rc, out, dt, cpu

    t_build = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for obj, rc, out, dt, cpu in pool.map(compile_one, compiles):
            timings.append((f"compile {obj.name}" + (" (kept)" if dt == 0 else ""), dt, cpu))
            if rc != 0:
                print(out[-4000:], file=sys.stderr)
                failed.append(f"compile {obj.name}")
    if failed:
        print(f"sanitize_emulation: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    programs = {}
    for variant, s in trees:
        exe = build / f"sanitize_{variant}_{s}"
        rc, out, dt, cpu = _run(
            [cxx, *SANITIZERS[s], "-pthread", str(build / "driver.o"), str(build / f"ops_{variant}_{s}.o"),
             *ldflags, "-o", str(exe)],
            exe.with_suffix(".link.log"),
        )  # fmt: skip
        timings.append((f"link {exe.name}", dt, cpu))
        if rc != 0:
            print(out[-4000:], file=sys.stderr)
            failed.append(f"link {exe.name}")
        programs[(variant, s)] = exe
    if failed:
        print(f"sanitize_emulation: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    build_s = time.monotonic() - t_build

    def run_one(key: tuple[str, str]):
        variant, s = key
        exe = programs[key]
        cmd = [str(exe)] + (["--quick"] if args.quick or variant != "clean" else [])
        # ThreadSanitizer refuses small stacks; AddressSanitizer runs faster with them.
        cmd += ["--races"] if s == "tsan" else ["--thread-stack-kb", "256"]
        return key, *_run(cmd, exe.with_suffix(".run.log"), ENVIRONMENT[s], args.timeout)

    # The clean runs are the long ones: start them first.
    order = sorted(programs, key=lambda k: k[0] != "clean")
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for (variant, s), rc, out, dt, cpu in pool.map(run_one, order):
            timings.append((f"run {variant} {s}", dt, cpu))
            log = programs[(variant, s)].with_suffix(".run.log")
            if variant == "clean":
                report = REPORT.search(out)
                if rc != 0 or report:
                    print(out[-12000:], file=sys.stderr)
                    failed.append(
                        f"{s}: exit status {rc}" + (", a sanitizer report" if report else "") + f" (log {log})"
                    )
                else:
                    print(f"sanitize_emulation: {s}: {out.strip().splitlines()[-1]}")
            else:
                plant = next(p for p in PLANTS if p.name == variant)
                missing = [e for e in plant.expect if not re.search(e, out)]
                if rc == 0 or missing:
                    print(out[-4000:], file=sys.stderr)
                    failed.append(f"planted {variant} ({plant.description}) not reported by {s}: missing {missing}")
                else:
                    first = next((ln.strip() for ln in out.splitlines() if REPORT.search(ln)), "")
                    print(f"sanitize_emulation: planted {variant} ({plant.description}) caught: {first}")
    for what, dt, cpu in timings:
        print(f"sanitize_emulation: {dt:7.1f} s wall {cpu:7.1f} s CPU  {what}")
    print(f"sanitize_emulation: {build_s:7.1f} s wall building, {time.monotonic() - t_build:7.1f} s wall in all")
    if failed:
        for f in failed:
            print(f"sanitize_emulation: FAILED: {f}", file=sys.stderr)
        return 1
    print("sanitize_emulation: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
