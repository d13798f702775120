"""The parsers and arithmetic of scripts/gpu_static_report.py on captured compiler output (small
excerpts of ptxas -v and cuobjdump -sass in tests/data/gpu_static_report/), so they are tested
without building the CUDA kernels; and the parts of scripts/gpu_paths.py (the GPU check's
estimate-against-measured table) that need no GPU."""

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import blurdiff_ops

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "gpu_static_report"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("gpu_static_report")
paths = _load("gpu_paths")
FUSED_F4 = "_ZN8blurdiff25spectral_map_fused_kernelIffLi4EEEvNS_9MapParamsIT_T0_EE"
FUSED_D4 = "_ZN8blurdiff25spectral_map_fused_kernelIddLi4EEEvNS_9MapParamsIT_T0_EE"
COMBINE_F = "_ZN8blurdiff23spectral_combine_kernelIfEEvNS_13CombineParamsIT_EE"


def test_ptxas_resources_per_entry():
    entries = report.parse_ptxas((DATA / "ptxas_sm80.txt").read_text())
    assert set(entries) == {("sm_80", COMBINE_F), ("sm_80", FUSED_F4), ("sm_80", FUSED_D4)}
    assert entries[("sm_80", COMBINE_F)] == {
        "registers": 40,
        "smem": 0,
        "stack": 0,
        "spill_stores": 0,
        "spill_loads": 0,
    }
    assert entries[("sm_80", FUSED_F4)]["registers"] == 128
    d4 = entries[("sm_80", FUSED_D4)]
    assert (d4["stack"], d4["spill_stores"], d4["spill_loads"]) == (120, 384, 388)


def test_ptxas_static_shared_memory_and_arch():
    # The format of a kernel with __shared__ arrays (a "bytes smem" field), as CUDA 12's ptxas prints it.
    text = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_70'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "    0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 30 registers, used 1 barriers, 2048 bytes smem, 352 bytes cmem[0]\n"
    )
    assert report.parse_ptxas(text) == {
        ("sm_70", "_Z1kv"): {"registers": 30, "smem": 2048, "stack": 0, "spill_stores": 8, "spill_loads": 4}
    }


def test_sass_instructions_and_the_transform_loop():
    funcs = report.parse_sass((DATA / "sass_sm90.txt").read_text())
    assert list(funcs) == [("sm_90", FUSED_F4)]
    insns = funcs[("sm_90", FUSED_F4)]
    assert insns[0] == (0x0, "LDC", "R1, c[0x0][0x28]")
    # The guard predicate is not part of the opcode.
    assert (0x2670, "BRA", "0x2190") in insns
    # One backward branch closes the loop; the forward branch and the end-of-kernel self-branch
    # (BRA to itself) do not make loops with a body.
    assert report.find_loops(insns) == [(0x2190, 0x2670), (0x3ADE0, 0x3ADE0)]
    (loop,) = report.transform_loops(insns)
    assert (loop["first"], loop["last"]) == (0x2190, 0x2670)
    # This dense right-multiply loop: every FFMA with its own global load, as issue 25 measured.
    assert (loop["total"], loop["fma"], loop["ldg"], loop["lds"]) == (79, 16, 16, 1)
    summary = report.loop_summary([loop])
    assert summary["fma_share"] == pytest.approx(16 / 79)
    assert summary["ldg_per_fma"] == 1.0


def test_innermost_loops_only_and_nops_not_counted():
    sass = """
	code for sm_80
		Function : _Z1kv
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   FFMA R2, R3, R4, R2 ;
        /*0020*/                   LDS.128 R4, [R5] ;
        /*0030*/                   FFMA R2, R4, R4, R2 ;
        /*0040*/                   DFMA R6, R6, R6, R6 ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   NOP ;
        /*0070*/              @!P1 BRA 0x10 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
"""
    insns = report.parse_sass(sass)[("sm_80", "_Z1kv")]
    assert report.find_loops(insns) == [(0x10, 0x70), (0x20, 0x50), (0x90, 0x90)]
    (inner,) = report.transform_loops(insns)
    assert (inner["first"], inner["last"], inner["total"], inner["fma"], inner["lds"]) == (0x20, 0x50, 4, 2, 1)
    assert report.mix(insns)["total"] == 9  # the NOP is padding


def test_names():
    base, args = report.split_template(
        "void blurdiff::spectral_map_fused_kernel<c10::Half, float, 4>(blurdiff::MapParams<c10::Half, float>)"
    )
    assert (base, args) == ("spectral_map_fused_kernel", ["Half", "float", "4"])
    assert report.short_label(base, args) == "fused<Half, float, 4>"
    base, args = report.split_template(
        "void blurdiff::spectral_combine_kernel<double>(blurdiff::CombineParams<double>)"
    )
    assert report.short_label(base, args) == "combine<double>"
    if shutil.which("c++filt"):
        assert report.demangle([FUSED_F4])[FUSED_F4].startswith(
            "void blurdiff::spectral_map_fused_kernel<float, float, 4>"
        )


def test_occupancy():
    v100, a100, h100 = report.GPUS
    # 128 registers: 4096 a warp, 16 warps = 2 blocks of 256; 16 KB of plane does not limit.
    assert report.occupancy(h100, 128, 0, 16 * 1024, 256) == {"blocks": 2, "limit": "registers", "occupancy": 0.25}
    assert report.occupancy(a100, 254, 0, 64 * 1024, 256)["blocks"] == 1
    # 40 registers: 6 blocks by registers (1280 a warp, 51 warps), the thread limit is 8.
    assert report.occupancy(h100, 40, 0, 0, 256)["blocks"] == 6
    # 32 registers: the thread limit, 8 blocks of 256 = 2048 threads.
    assert report.occupancy(v100, 32, 0, 0, 256) == {"blocks": 8, "limit": "threads", "occupancy": 1.0}
    # Shared memory: 40 KB blocks, 2 on a V100 (96 KB), 4 on an H100 (41 KB with the reserve, 228 KB).
    assert report.occupancy(v100, 32, 0, 40 * 1024, 256)["blocks"] == 2
    assert report.occupancy(h100, 32, 0, 40 * 1024, 256) == {"blocks": 5, "limit": "smem", "occupancy": 0.625}
    # A float64 128x128 plane (128 KB) exceeds a V100 block: the dispatcher takes the GEMM path.
    assert report.occupancy(v100, 255, 0, 128 * 1024, 256)["blocks"] == 0


def test_fused_shared_memory():
    # 64 x 64, even/odd: three planes of 64 x 64, E and O of 32 x 32 per side, 4 maps of 64 int32.
    assert report.fused_shared_bytes(64, 64, 4) == (3 * 64 * 64 + 2 * 2 * 32 * 32) * 4 + 4 * 64 * 4
    assert report.fused_shared_bytes(64, 64, 8, "dense") == (3 * 64 * 64 + 2 * 64 * 64) * 8 + 4 * 64 * 4
    assert report.fused_shared_bytes(64, 64, 4, "identity") == 3 * 64 * 64 * 4 + 4 * 64 * 4
    # 65: halves of 33 and 32 padded to 36 + 32 = 68 positions a side.
    assert report.fused_shared_bytes(65, 65, 4) == (3 * 68 * 68 + 2 * (36 * 36 + 32 * 32)) * 4 + 2 * (68 + 65) * 4
    # 120 x 120 float32 is the largest square plane within an H100's 227 KB.
    assert report.fused_shared_bytes(120, 120, 4) <= 227 * 1024 < report.fused_shared_bytes(124, 124, 4)


def test_noise_loops_are_not_transform_loops():
    sass = """
	code for sm_90
		Function : _Z1kv
        /*0000*/                   FFMA R2, R3, R4, R2 ;
        /*0010*/                   LDS.128 R4, [R5] ;
        /*0020*/               @P0 BRA 0x0 ;
        /*0030*/                   IMAD.WIDE.U32 R10, R10, -0x326172a9, RZ ;
        /*0040*/                   FFMA R2, R3, R4, R2 ;
        /*0050*/               @P0 BRA 0x30 ;
        /*0060*/                   EXIT ;
"""
    insns = report.parse_sass(sass)[("sm_90", "_Z1kv")]
    assert [(lp["first"], lp["noise"]) for lp in report.innermost_loops(insns)] == [(0x0, False), (0x30, True)]
    assert [lp["first"] for lp in report.transform_loops(insns)] == [0x0]
    assert [lp["first"] for lp in report.noise_loops(insns)] == [0x30]


def test_q_sample_counts():
    # Halved transforms: 6 sides of 64 x 32 multiply-adds per element = 3072 a thread of 256.
    assert 3 * (report.side_macs(64, 64, True) * 2) / 256 == 3072
    assert report.side_macs(64, 64, False) == 2 * report.side_macs(64, 64, True)
    # Odd sides: the middle element belongs to the even half (ne = 3, no = 2 of 5).
    assert report.side_macs(1, 5, True) == 9 + 4
    h100 = report.GPUS[2]
    loops = {
        "fma_share": 0.25,
        "ldg_per_fma": 0.5,
        "lds_per_fma": 0.25,
        "fma_share_min": 0.1,
        "worst_ldg_per_fma": 1.0,
        "worst_lds_per_fma": 0.5,
    }
    est = report.q_sample_estimate(h100, 256, loops)
    # The dense FLOPs at the FP32 peak: issue 25's "about 36 µs".
    assert est["fp32_dense_us"] == pytest.approx(36.06, abs=0.05)
    # 768 planes on 132 SMs: 6 on the busiest; 24576 warp-FFMAs a plane at 25 % of 4 issues a clock.
    assert est["issue_us"] == pytest.approx(6 * 24576 / 0.25 / (4 * 1.98e9) * 1e6)
    assert est["fused_us"] == max(est["issue_us"], est["lsu_us"], est["fp32_pipe_us"], est["dram_us"])
    assert est["worst_fused_us"] > est["fused_us"]
    assert "issue_us" not in report.q_sample_estimate(h100, 16, None)
    # Batch 16: 48 planes leave 84 SMs idle; 8 blocks a plane (the 64 x 64 plan's 8 output bands)
    # put 3 eighths of a plane on the busiest SM, plus the spectrum's trip through DRAM.
    small = report.q_sample_estimate(h100, 16, loops)
    assert small["split_bands"] == 8
    assert small["split_us"] == pytest.approx(
        max(3 / 8 * small["issue_us"], small["dram_us"] + 2 * 48 * 64 * 64 * 4 / 3350e9 * 1e6)
    )
    assert small["split_us"] < small["fused_us"]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils")
def test_digest_is_check_sm70s(tmp_path):
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "a.cu").write_text("x\n")
    (tmp_path / "B.h").write_text("y\n")
    (tmp_path / "a_b.h").write_text("z\n")
    shell = subprocess.run(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert report.csrc_digest(tmp_path) == shell


needs_kernels = pytest.mark.skipif(not blurdiff_ops.kernels_available("cpu"), reason="needs the compiled kernels")
H100 = SimpleNamespace(
    major=9,
    multi_processor_count=132,
    shared_memory_per_block_optin=227 * 1024,
    shared_memory_per_multiprocessor=228 * 1024,
)


@needs_kernels
@pytest.mark.parametrize("sides", ["even_odd", "dense", "identity"])
@pytest.mark.parametrize("n", [5, 16, 64, 65, 120])
def test_shared_memory_mirror_is_the_kernels_plan(sides, n):
    """fused_shared_bytes (the report's) against csrc/path_cost.h's FusedPlan."""
    for acc in (4, 8):
        got = torch.ops.blurdiff_ops._path_costs(
            9, 132, 1 << 30, 1 << 30, 1, n, n + 3, sides, acc, acc, 1, 1, 0, True, True
        )
        assert int(got[3]) == report.fused_shared_bytes(n, n + 3, acc, sides)


@needs_kernels
def test_gpu_paths_estimates_are_the_cost_models():
    est, blocks, bands, chosen = paths.estimate(H100, 256, 64)
    want = torch.ops.blurdiff_ops._path_costs(
        9, 132, 227 * 1024, 228 * 1024, 768, 64, 64, "even_odd", 4, 4, 2, 1, 0, True, True
    )
    assert est == {"fused": want[0], "split": want[4], "gemm": want[1]}
    assert (blocks, bands, chosen) == (2, want[5], "fused")
    _, blocks, _, chosen = paths.estimate(H100, 16, 128)
    assert (blocks, chosen) == (0, "gemm")  # 128 x 128 does not fit


def test_gpu_paths_table():
    static = {"q_sample": [{"gpu": "H100 SXM", "shape": "256x3x64x64", "fused_us": 24.8, "gemm_path_us": 73.9}]}
    assert paths.static_bounds(static, H100, 256, 64) == (24.8, 73.9)
    assert paths.static_bounds(static, H100, 16, 64) is None
    assert paths.static_bounds(None, H100, 256, 64) is None
    rows = [
        (
            "256x3x64x64",
            ({"fused": 39.3, "split": 45.6, "gemm": 400.0}, 2, 1, "fused"),
            (24.8, 73.9),
            {"fused": 41.0, "split": 47.5, "gemm": 380.5},
        ),
        (
            "16x3x128x128",
            ({"fused": 0.0, "split": 0.0, "gemm": 90.0}, 0, 1, "gemm"),
            None,
            {"fused": "does not fit", "split": "does not fit", "gemm": 95.25},
        ),
    ]
    lines = paths.table(rows).splitlines()
    assert lines[2] == "| 256x3x64x64 | 41.0 | 39.3 | 24.8 | 47.5 | 45.6 (1) | 380.5 | 400.0 | 73.9 | fused | fused |"
    assert lines[3] == (
        "| 16x3x128x128 | does not fit | does not fit | – | does not fit | does not fit | 95.2 | 90.0 | – | gemm | – |"
    )
