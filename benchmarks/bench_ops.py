"""The spectral ops: fused kernels against the reference (eager and under torch.compile).

    pytest benchmarks/bench_ops.py --benchmark-only --benchmark-json=out.json
    python benchmarks/report.py out.json          # the README's table, as ratios

Each group is one (device, op, size); its members are the implementations: the reference, the
reference under torch.compile, the fused op ("fused": the kernels, which multiply by the even/odd
halves of the process's bases, docs/design.md §2), the fused op forced to the dense products
("dense", blurdiff_ops.testing.dense_products: what a basis without the structure costs), and for
q_sample and the reverse step a "gemm" member: one float32 matmul with the dense op's FLOPs, timed
in the same run, the bound a dense transform-based op cannot beat (the halved op does half of
those FLOPs, so it can beat it). ``test_paired`` times the same things
interleaved (the others between the fused op's rounds): its ratios hold on a machine whose speed
drifts, and they are the README's. Shapes are batch x 3 x n x n with batch 16;
on CUDA also 256 x 3 x 64 x 64, whose fused run reports its memory bandwidth (one read of each
input, one write of the output) in extra_info. ``test_paired`` also runs q_sample and the reverse
step at 16 x 3 x 64 x 64 in three variants of the process (op names with a suffix): the DCT basis
("[dct]"), a random orthogonal basis, which has no even/odd structure ("[random]"), and float64
data ("[float64]").
"""

import os
import statistics
import time

import pytest
import torch

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff import BlurDiffusion, ProcessConfig
from blurdiff.samplers import make_sampler
from blurdiff_ops.testing import dense_products

HAS_CUDA = torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda")
QUICK = os.environ.get("BLURDIFF_BENCH_QUICK") == "1"  # the GPU check script's time budget

DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernels")),
]
SHAPES = [(16, 32), (16, 64), (16, 128), (16, 256), (256, 64)]
OPS = ["to_spectral", "from_spectral", "q_sample", "reverse_step"]
IMPLS = ["reference", "compiled", "fused", "dense", "gemm"]
VARIANTS = ["gaussian", "dct", "random", "float64"]  # the last three: lincomb ops at 64 x 64 only

_processes = {}


def _process(n, basis="gaussian"):
    if (n, basis) not in _processes:
        _processes[n, basis] = BlurDiffusion(ProcessConfig(n, basis=basis))
    return _processes[n, basis]


def _case(op, batch, n, device, variant="gaussian"):
    """Arguments of the op at this shape, and the matmul with the same FLOPs."""
    dtype = torch.float64 if variant == "float64" else torch.float32
    proc = _process(n, "dct" if variant == "dct" else "gaussian")
    tab = proc.tables(device, dtype)
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, n, n, device=device, generator=g, dtype=dtype)
    e = torch.randn(batch, 3, n, n, device=device, generator=g, dtype=dtype)
    t = torch.randint(1, 1001, (batch,), device=device, generator=g)
    U_h, U_w = tab["U_h"], tab["U_w"]
    if variant == "random":
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
        U_h = U_w = q.to(device, U_h.dtype)
    if op == "to_spectral":
        return dict(
            fused=lambda: blurdiff_ops.to_spectral(x, U_h, U_w), reference=lambda: R._to_spectral(x, U_h, U_w)
        ), 2
    if op == "from_spectral":
        return dict(
            fused=lambda: blurdiff_ops.from_spectral(x, U_h, U_w), reference=lambda: R._from_spectral(x, U_h, U_w)
        ), 2
    if op == "q_sample":  # K = 2 with the noise given
        args = ([x, e], tab["q_coefs"], t, U_h, U_w)
        return dict(fused=lambda: blurdiff_ops.spectral_lincomb(*args), reference=lambda: R.lincomb_unchecked(*args)), 6
    if op == "reverse_step":  # K = 2, noise drawn: by the op in the spectral domain, by the reference itself
        step = make_sampler(proc).tables(device, dtype)  # Eq. 12: the ddpm sampler's tables
        args = ([x, e], step["step_coefs"], t, U_h, U_w, step["step_noise"])
        return dict(
            fused=lambda: blurdiff_ops.spectral_lincomb(*args, generator=g),
            reference=lambda: R.lincomb_unchecked(*args, generator=g),
        ), 6
    raise ValueError(op)


def _gemm_bound(batch, n, gemms, device):
    """One matmul with the op's FLOPs: `gemms` n^3 products per plane. Into a preallocated output:
    its result is `gemms` times the op's, and page-faulting that in on every call would time the
    allocator, not the arithmetic."""
    a = torch.randn(batch * 3 * n, n, device=device)
    b = torch.randn(n, gemms * n, device=device)
    c = torch.empty(batch * 3 * n, gemms * n, device=device)
    return lambda: torch.mm(a, b, out=c)


def _dense(fn):
    def run():
        with dense_products():
            return fn()

    return run


def _compiled(fn):
    torch._dynamo.reset()
    compiled = torch.compile(fn, dynamic=False)
    compiled()  # compile outside the timing
    return compiled


def _timed(fn, device):
    if device == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()

        return run
    return fn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x3x{s[1]}x{s[1]}")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", IMPLS)
def test_op(benchmark, device, shape, op, impl):
    batch, n = shape
    if batch == 256 and device == "cpu":
        pytest.skip("256 x 3 x 64 x 64 is the GPU bandwidth case")
    if QUICK and impl != "fused":
        pytest.skip("quick run: test_paired times the other implementations")
    fns, gemms = _case(op, batch, n, device)
    if impl == "gemm":
        if op not in ("q_sample", "reverse_step"):
            pytest.skip("the GEMM bound is reported for the lincomb ops")
        fn = _gemm_bound(batch, n, gemms, device)
    elif impl == "compiled":
        fn = _compiled(fns["reference"])
    elif impl == "dense":
        fn = _dense(fns["fused"])
    else:
        fn = fns[impl]
    benchmark.group = f"{device} {op} {batch}x3x{n}x{n}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu", threads=torch.get_num_threads()
    )
    run = _timed(fn, device)
    # Many rounds of the small cases: on a two-core machine a single descheduling costs a round.
    rounds = {32: 200, 64: 100, 128: 30}.get(n, 8) if device == "cpu" else 50
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=3)
    if impl == "fused" and device == "cuda":
        inputs = 2 if op in ("q_sample", "reverse_step") else 1
        # report.py divides by the statistic it reports (median or min).
        benchmark.extra_info["bytes_moved"] = (inputs + 1) * batch * 3 * n * n * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x3x{s[1]}x{s[1]}")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_paired(benchmark, device, shape, op, variant):
    """The fused op's rounds with one call of each other implementation between them (untimed by
    pytest-benchmark, timed here): every ratio then compares calls made in the same seconds, which
    the separate groups above cannot do on a shared machine whose speed drifts from one test to
    the next. report.py prints these ratios in a table of their own."""
    batch, n = shape
    if batch == 256 and device == "cpu":
        pytest.skip("256 x 3 x 64 x 64 is the GPU bandwidth case")
    if variant != "gaussian" and (shape != (16, 64) or op not in ("q_sample", "reverse_step")):
        pytest.skip("the other processes are compared on the lincomb ops at 16 x 3 x 64 x 64")
    fns, gemms = _case(op, batch, n, device, variant)
    others = {"reference": fns["reference"], "dense": _dense(fns["fused"])}
    if op in ("q_sample", "reverse_step"):
        others["gemm"] = _gemm_bound(batch, n, gemms, device)
    if not QUICK or (n == 64 and op in ("q_sample", "reverse_step")):
        others["compiled"] = _compiled(fns["reference"])
    others = {name: _timed(fn, device) for name, fn in others.items()}
    times = {name: [] for name in others}

    def between_rounds():
        for name, fn in others.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    suffix = "" if variant == "gaussian" else f"[{variant}]"
    benchmark.group = f"{device} {op}{suffix} {batch}x3x{n}x{n} paired"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu", threads=torch.get_num_threads()
    )
    rounds = {32: 200, 64: 100, 128: 30}.get(n, 8) if device == "cpu" else 50
    benchmark.pedantic(_timed(fns["fused"], device), setup=between_rounds, rounds=rounds, iterations=1, warmup_rounds=3)
    # The warm-up rounds ran the setup too: keep the calls of the timed rounds (with
    # --benchmark-disable there is one call in all).
    benchmark.extra_info["paired"] = {
        name: {"min": min(ts[-rounds:]), "median": statistics.median(ts[-rounds:])} for name, ts in times.items()
    }
