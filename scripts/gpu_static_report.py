"""Static report of the CUDA kernels from their machine code: no GPU needed (issue 25, item 3).

    python scripts/gpu_static_report.py [--json PATH] [--strict] [--work DIR] [--jobs N]

Builds csrc/cuda/*.cu as cubins for sm_80 and sm_90 with the CUDA 13 toolkit (CUDA_HOME, else
the toolkit around the nvcc on the PATH), each arch once, cached in --work by a hash of csrc/, the
flags and the compiler. sm_70 is scripts/check_sm70.sh's: CUDA 13 no longer targets it, and that
script compiles it with a CUDA 12 toolkit, keeping the object, its ptxas log and the digest of the
csrc/ it compiled; when that digest is not the one of the csrc/ here, this script runs it, beside
its own compiles (CI runs it just before, so CI compiles sm_70 once). Flags as setup.py's build
gets them from torch.utils.cpp_extension: torch's include paths (include_paths(device_type="cuda"),
with each toolkit's own include folder), the Python include folder, -std=c++20 (torch 2.14 needs
it), COMMON_NVCC_FLAGS, -O3, -DBLURDIFF_WITH_CUDA, plus `-Xptxas -v`.

Per kernel instantiation and architecture it prints:
- from ptxas -v: registers, spill store/load bytes, static shared memory;
- theoretical occupancy: resident blocks per SM as the least of the register limit (64K registers
  per SM, allocated per warp in units of 256), the thread limit (2048 per SM, kThreads per
  block), the block limit (32) and the shared-memory limit (static + dynamic + the 1 KB the
  runtime reserves per block on sm_80+, rounded to the allocation unit, against 96 KB per SM on a
  V100, 164 KB on an A100, 228 KB on an H100; a block over the per-block opt-in limit does not
  launch: the dispatcher takes the GEMM path there). The fused kernel's dynamic shared memory is
  its plan (FusedPlan in csrc/path_cost.h, mirrored by fused_shared_bytes: three planes, the
  staged basis blocks of both sides, four int32 maps), shown at 64x64 with even/odd sides;
- from the SASS (cuobjdump -sass; PyPI's nvidia-cuda-cuobjdump, the CUDA 12 toolkit's own for
  sm_70): the instruction mix of the transform loops. A loop is a backward branch: a BRA (or JMP)
  at address b whose target a <= b, the body being the instructions in [a, b]. The transform
  loops are the innermost such bodies (containing no other loop) that hold a multiply-add
  (FFMA, or DFMA in the float64 instantiations; both are "FMA" below), except those that draw
  noise (they hold a Philox round multiplier, 0xD2511F53 or 0xCD9E8D57: their multiply-adds are
  Box-Muller's polynomials; the JSON lists them as noise_loops). For them: the FMA share of
  their instructions, global loads (LDG*) and shared loads (LDS*, any width, one per instruction)
  per FMA, as the worst loop and as the static mix of all of them (every loop instruction counted
  once). NOPs (alignment padding) are not counted. Whole-kernel counts are in the JSON.

The roofline estimate: q_sample (lincomb of K = 2 inputs, x0 and the given noise, one output, no
output coefficients), float32, B x 3 x 64 x 64 for B = 16 and 256, P = 3B planes of n = 64 x 64
elements, on a V100 (sm_70: 80 SMs, 1.53 GHz, 15.7 TFLOPS FP32, 900 GB/s), an A100 (sm_80: 108
SMs, 1.41 GHz, 19.5 TFLOPS, 1555 GB/s) and an H100 SXM (sm_90: 132 SMs, 1.98 GHz, 67 TFLOPS,
3350 GB/s). Counted:
- multiply-adds: 2K + 2 = 6 one-side transforms per plane; one side of an H x W plane is
  H*W*W (dense) or H*(ne^2 + no^2) with ne = ceil(W/2), no = W - ne (the even/odd halves of
  csrc/even_odd.h, half the dense count at even W). The kernels multiply by the halves: the fused
  estimate uses the halved count, the FP32 compute bound is shown for both (FLOPs = 2 x MACs);
- DRAM bytes: the K inputs read and the output written once (4 bytes an element), plus one row
  of each input's coefficient table per sample (B * K * n * 4); the bases are cache-resident.
Fused kernel (one block per plane), a lower bound, the largest of
- issue:  t >= ceil(P / SMs) * I / (4 * f): I warp instructions per block, each SM's 4 schedulers
  issuing one a clock; I = (halved MACs per plane / 32) / (FMA share of the transform loops);
- FP32:   t >= ceil(P / SMs) * MACs / 32 / (FP32 lanes per SM / 32 * f) (64 lanes on V100/A100,
  128 on H100);
- LSU:    t >= ceil(P / SMs) * L / f, L = (halved MACs per plane / 32) * (LDG + LDS per FMA):
  one load warp-instruction per SM a clock, wider loads not charged more;
- DRAM:   t >= bytes / bandwidth.
ceil(P / SMs) is the busiest SM's share of blocks (at 48 planes most SMs of an H100 idle). Split
over k blocks a plane (the split stages): ceil(P k / SMs) blocks on the busiest SM, each with its
band's share of the products (the largest band's, of 4-row tiles: (H padded) / 4 forward,
(ceil(H/2) padded) / 4 back), the DRAM bound plus writing and reading the padded spectrum; the
best k from 2 to the units, launch gaps not counted (csrc/path_cost.h charges them). The
mix is the static mix of the transform loops of the instantiation q_sample runs (float, float);
the code around the loops (the fold, combine and unfold passes, barriers, the noise) is not
counted (csrc/path_cost.h's model, which chooses the path, adds an estimate of it).
GEMM path (spectral_launch.cuh's map_gemm as plain cuBLAS GEMMs on the dense bases, as the issue
measured it): each of the 6 side transforms a GEMM at max(dense FLOPs / (60 % of FP32 peak),
reading and writing the tensor / bandwidth), plus the combine kernel reading K spectra and the
coefficient rows and writing one at bandwidth. Launch overheads and the even/odd GEMM path's fold
and gather passes (it runs half the GEMM FLOPs) are not counted.

--strict exits 1 on any spill in a kernel instantiation (all are named by the dispatcher, so all
can be chosen), on a fused-kernel transform loop below 60 % FMA or above 0.5 shared loads per FMA
(the issue's bars), and on an architecture that could not be built.
"""

import argparse
import dataclasses
import datetime
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# PyPI's cuobjdump and the nvdisasm it runs for -sass (pinned for CI; CUDA 13's read sm_80+ only).
SASS_TOOLS = ["nvidia-cuda-cuobjdump==13.5.37", "nvidia-cuda-nvdisasm==13.5.37"]


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    arch: str
    sms: int
    clock_ghz: float
    fp32_lanes: int  # per SM
    tflops: float  # FP32, the published peak
    bandwidth_gbs: float
    smem_per_sm: int  # bytes usable by blocks
    smem_per_block: int  # the opt-in limit of one block
    smem_reserved: int  # per block, by the runtime
    smem_unit: int  # allocation granularity


GPUS = [
    Gpu("V100", "sm_70", 80, 1.53, 64, 15.7, 900, 96 * 1024, 96 * 1024, 0, 256),
    Gpu("A100", "sm_80", 108, 1.41, 64, 19.5, 1555, 164 * 1024, 163 * 1024, 1024, 128),
    Gpu("H100 SXM", "sm_90", 132, 1.98, 128, 67.0, 3350, 228 * 1024, 227 * 1024, 1024, 128),
]
ARCHES = [g.arch for g in GPUS]
REGS_PER_SM, REG_UNIT, THREADS_PER_SM, BLOCKS_PER_SM, WARPS_PER_SM = 65536, 256, 2048, 32, 64
GEMM_EFFICIENCY = 0.6  # of FP32 peak, for cuBLAS on these skinny batched GEMMs
STRICT_FMA_SHARE, STRICT_LDS_PER_FMA = 0.60, 0.5
ACC_SIZE = {"float": 4, "double": 8}
FUSED_PLANE = 64  # the fused kernel's shared memory and occupancy are shown at 64 x 64, even/odd sides


# --- parsing (tested in tests/test_gpu_static_report.py on captured output) ---------------------

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text):
    """ptxas -v output -> {(arch, mangled name): {registers, stack, spill_stores, spill_loads, smem}}
    for the entry functions (kernels). Properties of a function are on the line after its
    "Function properties" line; "Used N registers" belongs to the entry compiled last."""
    props, entries, current, pending = {}, {}, None, None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = (m.group(2), m.group(1))
            entries.setdefault(current, {"registers": 0, "smem": 0})
        elif m := _PROPS.search(line):
            pending = m.group(1)
        elif (m := _SPILL.search(line)) and pending is not None:
            props[pending] = dict(zip(("stack", "spill_stores", "spill_loads"), map(int, m.groups())))
            pending = None
        elif (m := _USED.search(line)) and current is not None:
            entries[current]["registers"] = int(m.group(1))
            if s := _SMEM.search(line):
                entries[current]["smem"] = int(s.group(1))
    for (_, name), e in entries.items():
        e.update(props.get(name, {"stack": 0, "spill_stores": 0, "spill_loads": 0}))
    return entries


_ARCH = re.compile(r"code for (sm_\d+)")
_FUNC = re.compile(r"^\s*Function : (\S+)")
_INSN = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")


def parse_sass(text):
    """cuobjdump -sass output -> {(arch, mangled name): [(address, opcode, operands)]}; the
    opcode keeps its modifiers (LDG.E.128.CONSTANT), a guard predicate (@!P0) is dropped."""
    funcs, arch, current = {}, None, None
    for line in text.splitlines():
        if m := _ARCH.search(line):
            arch = m.group(1)
        elif m := _FUNC.match(line):
            current = funcs.setdefault((arch, m.group(1)), [])
        elif (m := _INSN.match(line)) and current is not None:
            body = _PRED.sub("", m.group(2).lstrip("{ "))
            opcode, _, operands = body.partition(" ")
            current.append((int(m.group(1), 16), opcode, operands.strip()))
    return funcs


def branch_target(opcode, operands):
    """The absolute target of a direct branch (cuobjdump prints them as hex), else None."""
    if opcode.split(".")[0] not in ("BRA", "JMP"):
        return None
    targets = re.findall(r"0x([0-9a-f]+)", operands)
    return int(targets[-1], 16) if targets else None


def find_loops(insns):
    """Loop bodies as (first, last) addresses: every backward (or self) branch closes one."""
    loops = set()
    for addr, opcode, operands in insns:
        target = branch_target(opcode, operands)
        if target is not None and target <= addr:
            loops.add((target, addr))
    return sorted(loops)


def classify(opcode):
    base = opcode.split(".")[0]
    if base in ("FFMA", "DFMA"):
        return "fma"
    if base == "LDG":
        return "ldg"
    if base == "LDS":
        return "lds"
    return {"STG": "stg", "STS": "sts", "LDL": "ldl", "STL": "stl", "NOP": "nop"}.get(base, "other")


def mix(insns):
    """Instruction counts of a stretch of SASS: total (NOPs excluded), fma, ldg, lds, ..."""
    counts = {k: 0 for k in ("total", "fma", "ldg", "lds", "stg", "sts", "ldl", "stl")}
    for _, opcode, _ in insns:
        kind = classify(opcode)
        if kind == "nop":
            continue
        counts["total"] += 1
        if kind in counts:
            counts[kind] += 1
    return counts


# Philox4x32's round multipliers, as cuobjdump prints an immediate (signed or not).
PHILOX_MULTIPLIERS = ("0xd2511f53", "-0x2daee0ad", "0xcd9e8d57", "-0x326172a9")


def draws_noise(insns):
    """Whether a stretch of SASS runs Philox rounds (holds one of its multipliers)."""
    return any(k in operands.lower() for _, _, operands in insns for k in PHILOX_MULTIPLIERS)


def innermost_loops(insns):
    """The innermost loops holding a multiply-add, each with its instructions' address range,
    its mix and whether it draws noise."""
    loops = find_loops(insns)
    bodies = []
    for first, last in loops:
        if first == last or any(a >= first and b <= last and (a, b) != (first, last) for a, b in loops):
            continue  # a self-branch (the end-of-kernel trap) or a loop around another
        body = [i for i in insns if first <= i[0] <= last]
        m = mix(body)
        if m["fma"]:
            bodies.append({"first": first, "last": last, **m, "noise": draws_noise(body)})
    return bodies


def transform_loops(insns):
    """The innermost loops holding a multiply-add that do not draw noise: the noise loop's
    multiply-adds are the Box-Muller polynomials, not a transform (reported apart)."""
    return [lp for lp in innermost_loops(insns) if not lp["noise"]]


def noise_loops(insns):
    return [lp for lp in innermost_loops(insns) if lp["noise"]]


def loop_summary(loops):
    """The static mix of all the loops (every loop instruction counted once) and the worst loop
    (lowest FMA share; most shared loads per FMA is reported apart, for the bar)."""
    if not loops:
        return None
    total = {k: sum(lp[k] for lp in loops) for k in ("total", "fma", "ldg", "lds")}
    worst = min(loops, key=lambda lp: lp["fma"] / lp["total"])
    return {
        "loops": len(loops),
        "fma_share": total["fma"] / total["total"],
        "ldg_per_fma": total["ldg"] / total["fma"],
        "lds_per_fma": total["lds"] / total["fma"],
        "fma_share_min": worst["fma"] / worst["total"],
        "fma_share_max": max(lp["fma"] / lp["total"] for lp in loops),
        "worst_ldg_per_fma": worst["ldg"] / worst["fma"],
        "worst_lds_per_fma": worst["lds"] / worst["fma"],
        "lds_per_fma_max": max(lp["lds"] / lp["fma"] for lp in loops),
    }


def split_template(name):
    """'void blurdiff::k<float, c10::Half, 4>(blurdiff::P<float>)' -> ('k', ['float', 'Half', '4'])
    with the namespaces blurdiff:: and c10:: dropped."""
    name = re.sub(r"\b(blurdiff|c10)::", "", name)
    name = re.sub(r"^void\s+", "", name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    if "<" not in name:
        return name, []
    base, inner = name.split("<", 1)
    inner = inner[: inner.rfind(">")]
    args, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return base, args


def short_label(base, args):
    label = re.sub(r"_kernel$", "", re.sub(r"^spectral_(map_)?", "", base))
    return f"{label}<{', '.join(args)}>" if args else label


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


# --- the kernels' launch geometry, read from the headers ----------------------------------------


def header_constant(name, default):
    text = (ROOT / "csrc/cuda/spectral_kernels.cuh").read_text()
    m = re.search(rf"constexpr int {name} = (\d+);", text)
    return int(m.group(1)) if m else default


def round4(x):
    return (x + 3) // 4 * 4


def fused_shared_bytes(h, w, acc_size, sides="even_odd"):
    """The fused kernel's dynamic shared memory for an h x w plane (FusedPlan in
    spectral_kernels.cuh): three planes of padded rows x padded columns, the staged basis blocks
    of both sides and four int32 index maps. sides: "even_odd", "dense" or "identity" (both)."""

    def side(n):
        ne = (n + 1) // 2 if sides == "even_odd" else n
        e4, o4 = round4(ne), round4(n - ne)
        return e4 + o4, 0 if sides == "identity" else e4 * e4 + o4 * o4

    (rows, basis_h), (ld, basis_w) = side(h), side(w)
    return (3 * rows * ld + basis_h + basis_w) * acc_size + (rows + ld + h + w) * 4


def occupancy(gpu, registers, smem_static, smem_dynamic, threads):
    """Resident blocks per SM, the limiting resource, and the occupancy (resident warps / 64)."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / REG_UNIT) * REG_UNIT
    limits = {  # on a tie the first is named
        "threads": THREADS_PER_SM // threads,
        "blocks": BLOCKS_PER_SM,
        "registers": (REGS_PER_SM // regs_per_warp) // warps,
    }
    smem = smem_static + smem_dynamic
    if smem > gpu.smem_per_block:
        return {"blocks": 0, "limit": "smem/block", "occupancy": 0.0}
    if smem:
        per_block = math.ceil((smem + gpu.smem_reserved) / gpu.smem_unit) * gpu.smem_unit
        limits["smem"] = gpu.smem_per_sm // per_block
    limit = min(limits, key=limits.get)
    blocks = limits[limit]
    return {"blocks": blocks, "limit": limit, "occupancy": blocks * warps / WARPS_PER_SM}


# --- the roofline --------------------------------------------------------------------------------


def side_macs(other, n, halved):
    ne = (n + 1) // 2
    return other * (ne * ne + (n - ne) ** 2) if halved else other * n * n


def q_sample_estimate(gpu, batch, loops, h=64, w=64, channels=3, k=2, elem=4):
    """Lower bounds in microseconds for q_sample on `gpu` (see the module docstring)."""
    planes, n = batch * channels, h * w
    sides = 2 * k + 2  # forward both sides of each input, inverse both sides of the one output
    per_plane = {hv: sides // 2 * (side_macs(h, w, hv) + side_macs(w, h, hv)) for hv in (False, True)}
    f = gpu.clock_ghz * 1e9
    busiest = math.ceil(planes / gpu.sms)
    fma_warp = per_plane[True] / 32
    pipe = busiest * fma_warp / (gpu.fp32_lanes / 32 * f) * 1e6
    dram_bytes = (k + 1) * planes * n * elem + batch * k * n * elem
    out = {
        "fp32_dense_us": 2 * per_plane[False] * planes / (gpu.tflops * 1e12) * 1e6,
        "fp32_halved_us": 2 * per_plane[True] * planes / (gpu.tflops * 1e12) * 1e6,
        "dram_us": dram_bytes / (gpu.bandwidth_gbs * 1e9) * 1e6,
        "fp32_pipe_us": pipe,
    }
    if loops:
        # The static mix of the loops, then the worst loop's as if every FMA ran in it.
        for tag, share, loads in (
            ("", loops["fma_share"], loops["ldg_per_fma"] + loops["lds_per_fma"]),
            ("worst_", loops["fma_share_min"], loops["worst_ldg_per_fma"] + loops["worst_lds_per_fma"]),
        ):
            out[f"{tag}issue_us"] = busiest * fma_warp / share / (4 * f) * 1e6
            out[f"{tag}lsu_us"] = busiest * fma_warp * loads / f * 1e6
            out[f"{tag}fused_us"] = max(out[f"{tag}issue_us"], out[f"{tag}lsu_us"], pipe, out["dram_us"])
        # Split over `bands` blocks a plane: the busiest SM's blocks each do their band's share (the
        # largest band's) of the forward and inverse products; the spectrum is written and read once
        # more through DRAM. The best band count from 2 to the plan's units.
        e4 = 4 * math.ceil((h + 1) // 2 / 4)
        units = {"gather": (e4 + 4 * math.ceil(h // 2 / 4)) // 4, "emit": e4 // 4}
        spectrum_bytes = 2 * planes * (e4 + 4 * math.ceil(h // 2 / 4)) * (w + 3) // 4 * 4 * elem
        for bands in range(2, min(units.values()) + 1):
            share = {key: math.ceil(u / bands) / u for key, u in units.items()}
            block = (k * share["gather"] + share["emit"]) / (k + 1)  # of a whole plane's products
            scale = math.ceil(planes * bands / gpu.sms) * block / busiest
            bound = max(
                out["issue_us"] * scale,
                out["lsu_us"] * scale,
                pipe * scale,
                out["dram_us"] + spectrum_bytes / (gpu.bandwidth_gbs * 1e9) * 1e6,
            )
            if bound < out.get("split_us", math.inf):
                out["split_us"], out["split_bands"] = bound, bands
    gemm = max(
        2 * planes * per_plane[False] / sides / (GEMM_EFFICIENCY * gpu.tflops * 1e12),
        2 * planes * n * elem / (gpu.bandwidth_gbs * 1e9),
    )
    combine = ((k + 1) * planes * n * elem + batch * k * n * elem) / (gpu.bandwidth_gbs * 1e9)
    out["gemm_path_us"] = (sides * gemm + combine) * 1e6
    return out


# --- building ------------------------------------------------------------------------------------


def is_toolkit(path):
    return path is not None and (Path(path) / "include/cuda_runtime.h").is_file() and (Path(path) / "bin/nvcc").exists()


def find_cuda13():
    """CUDA_HOME, else the toolkit an nvcc on the PATH is (or, as a wrapper script, names)."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(explicit)] if explicit else []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
        text = Path(nvcc).read_text(errors="ignore")[:4096] if Path(nvcc).stat().st_size < 65536 else ""
        candidates += [Path(w).parent.parent for w in text.split() if w.endswith("/bin/nvcc")]
    candidates += [Path("/usr/local/cuda")]
    return next((str(c) for c in candidates if is_toolkit(c)), None)


def nvcc_flags(cuda_home):
    # cpp_extension looks for a toolkit when imported, and warns that no GPU runtime is found.
    os.environ.setdefault("CUDA_HOME", cuda_home)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    # include_paths(device_type="cuda") adds the include folder of cpp_extension's CUDA_HOME; each
    # toolkit here gets its own instead.
    incs = include_paths(device_type="cpu") + [str(Path(cuda_home) / "include"), sysconfig.get_paths()["include"]]
    return (
        [f"-I{p}" for p in incs]
        + ["-std=c++20", "-O3", "--threads=1", "-Xptxas", "-v", "-DBLURDIFF_WITH_CUDA"]
        + list(COMMON_NVCC_FLAGS)
        + [f"-DBLURDIFF_TORCH_VERSION_TOKENS={torch.__version__}"]
        + ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    )


def csrc_digest(base=ROOT / "csrc"):
    """check_sm70.sh's digest of csrc/: sha256 of `sha256sum` over its files, in C order of ./path."""
    files = sorted(
        (p for p in base.rglob("*") if p.is_file()), key=lambda p: ("./" + p.relative_to(base).as_posix()).encode()
    )
    listing = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(base).as_posix()}\n" for p in files
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def compile_cubin(cuda_home, cu, arch, work, digest):
    """nvcc -cubin for one arch; returns (cubin, ptxas log), cached in work by digest."""
    nvcc = str(Path(cuda_home) / "bin/nvcc")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    cmd = [nvcc, "-cubin", f"-arch={arch}", str(cu), *nvcc_flags(cuda_home)]
    key = hashlib.sha256((digest + version + " ".join(cmd)).encode()).hexdigest()
    cubin, log, stamp = (work / f"{Path(cu).stem}.{arch}.{ext}" for ext in ("cubin", "log", "key"))
    if cubin.is_file() and log.is_file() and stamp.is_file() and stamp.read_text() == key:
        return cubin, log.read_text()
    r = subprocess.run([*cmd, "-o", str(cubin)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc {arch} failed on {cu}:\n{r.stdout}{r.stderr}")
    log.write_text(r.stdout + r.stderr)
    stamp.write_text(key)
    return cubin, r.stdout + r.stderr


def sm70_outputs(sm70_dir, cus, digest):
    """check_sm70.sh's object and ptxas log per translation unit when they were compiled from the
    csrc/ that is here now (its csrc.sha256), else None."""
    stamp = sm70_dir / "csrc.sha256"
    pairs = [(sm70_dir / f"{cu.stem}.o", sm70_dir / f"{cu.stem}.sm_70.log") for cu in cus]
    fresh = (
        stamp.is_file() and stamp.read_text().strip() == digest and all(o.is_file() and g.is_file() for o, g in pairs)
    )
    return pairs if fresh else None


def start_check_sm70(sm70_dir):
    """Runs check_sm70.sh (toolkit, then the sm_70 compile) beside the sm_80/sm_90 compiles."""
    print(f"gpu_static_report: compiling sm_70 with scripts/check_sm70.sh {sm70_dir}", file=sys.stderr)
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable))
    return subprocess.Popen(["bash", "scripts/check_sm70.sh", str(sm70_dir)], cwd=ROOT, env=env)


def ensure_cuobjdump(install):
    """PyPI's cuobjdump beside its nvdisasm in this interpreter's environment (pip-installed with
    --install-tools)."""

    def find():
        for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
            for p in sorted(glob.glob(os.path.join(base, "nvidia", "*", "bin", "cuobjdump"))):
                if os.path.exists(os.path.join(os.path.dirname(p), "nvdisasm")):
                    return p
        return None

    if find() is None and install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *SASS_TOOLS], check=True)
    tool = find()
    if tool is None:
        sys.exit(f"gpu_static_report: no cuobjdump and nvdisasm: pip install {' '.join(SASS_TOOLS)} (--install-tools)")
    return tool


def sass_of(cuobjdump, binary):
    # cuobjdump runs the nvdisasm on the PATH: the one of its own toolkit.
    env = dict(os.environ, PATH=f"{Path(cuobjdump).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run([str(cuobjdump), "-sass", str(binary)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{cuobjdump} -sass {binary} failed:\n{r.stderr}")
    return r.stdout


# --- the report ----------------------------------------------------------------------------------


def analyse(ptxas, sass, threads):
    """Per kernel instantiation: one record per arch with resources, occupancy and SASS mix."""
    names = sorted({name for _, name in ptxas} | {name for _, name in sass})
    pretty = demangle(names)
    kernels = {}
    for (arch, name), res in sorted(ptxas.items()):
        base, args = split_template(pretty[name])
        gpu = next(g for g in GPUS if g.arch == arch)
        fused = "fused" in base
        plane = dyn = None
        if fused and len(args) == 2:
            plane = f"{FUSED_PLANE}x{FUSED_PLANE}"
            dyn = fused_shared_bytes(FUSED_PLANE, FUSED_PLANE, ACC_SIZE.get(args[1], 4))
        insns = sass.get((arch, name), [])
        loops = transform_loops(insns)
        rec = {
            **res,
            "plane": plane,
            "dynamic_smem": dyn or 0,
            **occupancy(gpu, res["registers"], res["smem"], dyn or 0, threads),
            "kernel_mix": mix(insns),
            "loops": loops,
            "noise_loops": noise_loops(insns),
            "loop_summary": loop_summary(loops),
        }
        entry = kernels.setdefault(
            name, {"label": short_label(base, args), "demangled": pretty[name], "fused": fused, "arches": {}}
        )
        entry["arches"][arch] = rec
    return kernels


def pct(x):
    return "–" if x is None else f"{100 * x:.0f} %"


def occupancy_cell(r):
    return f"{r['blocks']} ({pct(r['occupancy'])})" if r["blocks"] else "GEMM path"


def kernel_cell(r):
    m = r["kernel_mix"]
    return f"{pct(m['fma'] / m['total'])} of {m['total']}" if m["total"] else "–"


def cells(rec_by_arch, fmt):
    return " / ".join(fmt(rec_by_arch[a]) if a in rec_by_arch else "–" for a in ARCHES)


def markdown(kernels, estimates, arches_built, meta):
    out = [
        f"Static estimates ({meta['date']}; {meta['toolkits']}; kThreads {meta['threads']}), "
        f"cells sm_70 / sm_80 / sm_90 ({', '.join(arches_built)} built):",
        "",
        "| kernel | registers | spill st+ld B | smem static + dyn (plane) | blocks/SM (occupancy) "
        "| loop FMA share, worst (mix) | LDG / FMA | LDS / FMA | kernel: FMA share of instructions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(kernels.values(), key=lambda e: (not e["fused"], e["label"]))
    for e in order:
        a = e["arches"]
        any_rec = next(iter(a.values()))
        smem = str(any_rec["smem"])
        if e["fused"]:
            smem += f" + {any_rec['dynamic_smem'] // 1024} KB ({any_rec['plane']})"

        def loops_cell(r):
            s = r["loop_summary"]
            return "–" if s is None else f"{pct(s['fma_share_min'])} ({pct(s['fma_share'])})"

        def per_fma(key):
            return lambda r: "–" if r["loop_summary"] is None else f"{r['loop_summary'][key]:.2f}"

        out.append(
            f"| `{e['label']}` | {cells(a, lambda r: str(r['registers']))} "
            f"| {cells(a, lambda r: str(r['spill_stores'] + r['spill_loads']))} | {smem} "
            f"| {cells(a, occupancy_cell)} "
            f"| {cells(a, loops_cell)} | {cells(a, per_fma('ldg_per_fma'))} | {cells(a, per_fma('lds_per_fma'))} "
            f"| {cells(a, kernel_cell)} |"
        )
    out += [
        "",
        "q_sample (K = 2, noise given), float32, µs, lower bounds. Fused kernel: issue, LSU, FP32-pipe and DRAM "
        "bounds with the loops' static mix, the largest of them (≥), and the same with the worst loop's mix; "
        "split: the fused bound over the best number of blocks a plane, the spectrum through DRAM once more; "
        f"GEMM path: dense GEMMs at {GEMM_EFFICIENCY:.0%} of FP32 peak + the combine kernel; FP32 peak: "
        "dense / halved FLOPs:",
        "",
        "| GPU | shape | issue | LSU | FP32 pipe | DRAM | fused ≥ | worst loop ≥ | split ≥ (blocks a plane) "
        "| GEMM path | FP32 peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (gpu, shape), est in estimates.items():

        def f(key, est=est):
            return f"{est[key]:.1f}" if key in est else "–"

        split = f"{f('split_us')} ({est['split_bands']})" if "split_bands" in est else "–"
        out.append(
            f"| {gpu} | {shape} | {f('issue_us')} | {f('lsu_us')} | {f('fp32_pipe_us')} | {f('dram_us')} "
            f"| **{f('fused_us')}** | {f('worst_fused_us')} | {split} | **{f('gemm_path_us')}** "
            f"| {f('fp32_dense_us')} / {f('fp32_halved_us')} |"
        )
    return "\n".join(out)


def strict_failures(kernels, arches_built):
    fails = [f"{a} was not built" for a in ARCHES if a not in arches_built]
    for e in kernels.values():
        for arch, r in e["arches"].items():
            if r["spill_stores"] or r["spill_loads"]:
                fails.append(f"{e['label']} {arch}: spills {r['spill_stores']} B stored, {r['spill_loads']} B loaded")
            s = r["loop_summary"]
            if e["fused"] and s is not None:
                if s["fma_share_min"] < STRICT_FMA_SHARE:
                    fails.append(f"{e['label']} {arch}: a transform loop at {pct(s['fma_share_min'])} FMA")
                if s["lds_per_fma_max"] > STRICT_LDS_PER_FMA:
                    fails.append(f"{e['label']} {arch}: a transform loop with {s['lds_per_fma_max']:.2f} LDS per FMA")
            if e["fused"] and s is None:
                fails.append(f"{e['label']} {arch}: no transform loop found in its SASS")
    return fails


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="also write the whole report (loops included) as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 on a spill or a loop under the bars")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "blurdiff-gpu-report")
    ap.add_argument("--sm70-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "blurdiff-cuda12")
    ap.add_argument("--rebuild-sm70", action="store_true", help="run check_sm70.sh even when its outputs are fresh")
    ap.add_argument("--no-sm70", action="store_true", help="sm_80 and sm_90 only")
    ap.add_argument("--install-tools", action="store_true", help=f"pip install {' '.join(SASS_TOOLS)} when missing")
    ap.add_argument("--jobs", type=int, default=2, help="parallel nvcc runs")
    args = ap.parse_args(argv)
    start = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    cus = sorted((ROOT / "csrc/cuda").glob("*.cu"))
    threads = header_constant("kThreads", 256)
    cuobjdump13 = ensure_cuobjdump(args.install_tools)
    cuda13 = find_cuda13()
    if cuda13 is None:
        # As check_sm70.sh without its mirror: a machine without the toolkit skips, --strict fails.
        print("gpu_static_report: WARNING: skipped: no CUDA toolkit (set CUDA_HOME)", file=sys.stderr)
        return 1 if args.strict else 0

    ptxas, sass, built, toolkits = {}, {}, [], []
    digest = csrc_digest()
    sm70_dir = args.sm70_dir.resolve()
    sm70 = None
    if not args.no_sm70 and (args.rebuild_sm70 or sm70_outputs(sm70_dir, cus, digest) is None):
        sm70 = start_check_sm70(sm70_dir)
    jobs = [(cu, arch) for cu in cus for arch in ("sm_80", "sm_90")]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda j: compile_cubin(cuda13, j[0], j[1], args.work, digest), jobs))
    for (_, arch), (cubin, log) in zip(jobs, results):
        ptxas.update(parse_ptxas(log))
        sass.update(parse_sass(sass_of(cuobjdump13, cubin)))
        built.append(arch)
    toolkits.append(f"nvcc {_release(Path(cuda13) / 'bin/nvcc')} (sm_80, sm_90)")
    if not args.no_sm70:
        if sm70 is not None and sm70.wait() != 0:
            raise RuntimeError("scripts/check_sm70.sh failed (above)")
        pairs = sm70_outputs(sm70_dir, cus, digest)
        if pairs is None:
            print("gpu_static_report: WARNING: no sm_70 build (see check_sm70.sh above)", file=sys.stderr)
        else:
            # CUDA 12's own cuobjdump: it reads sm_70 code for certain.
            cuobjdump12 = sm70_dir / "cuda/bin/cuobjdump"
            for obj, log in pairs:
                ptxas.update(parse_ptxas(log.read_text()))
                sass.update(parse_sass(sass_of(cuobjdump12, obj)))
            built.insert(0, "sm_70")
            toolkits.insert(0, f"nvcc {_release(sm70_dir / 'cuda/bin/nvcc')} (sm_70)")
    built = sorted(set(built), key=ARCHES.index)

    kernels = analyse(ptxas, sass, threads)
    estimates = {}
    for gpu in GPUS:
        q = next(
            (e["arches"].get(gpu.arch) for e in kernels.values() if e["label"] == "fused<float, float>"),
            None,
        )
        for batch in (16, 256):
            loops = q["loop_summary"] if q else None
            estimates[(gpu.name, f"{batch}x3x64x64")] = q_sample_estimate(gpu, batch, loops)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "toolkits": ", ".join(toolkits),
        "sass_tools": SASS_TOOLS,
        "threads": threads,
    }
    print(markdown(kernels, estimates, built, meta))
    if args.json:
        report = {
            "meta": meta,
            "arches": built,
            "kernels": kernels,
            "q_sample": [{"gpu": g, "shape": s, **est} for (g, s), est in estimates.items()],
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    fails = strict_failures(kernels, built)
    if fails:
        print(f"\ngpu_static_report: {len(fails)} below the issue's bars, e.g.:", file=sys.stderr)
        for f in fails[:12]:
            print(f"  {f}", file=sys.stderr)
    print(f"gpu_static_report: {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 1 if args.strict and fails else 0


def _release(nvcc):
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
