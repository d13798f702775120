"""The CUDA path's code, run on the CPU: the kernels of csrc/cuda/spectral_kernels.cuh and their
host planning in csrc/cuda/spectral_launch.cuh.

The test build (csrc/emulation/emulated_ops.cpp) compiles the very kernels that nvcc compiles,
with g++ over a host emulation of a launch (a std::thread per CUDA thread, a std::barrier for
__syncthreads), and registers them for CPU tensors as torch.ops.blurdiff_emu. Both the fused
shared-memory kernel and the GEMM path (forced by lowering the shared-memory budget) must agree
with the reference and, noise included, with the CPU kernels fed the same generator. The
Gaussian and DCT bases take the even/odd halves (csrc/even_odd.h), the identity basis no product;
both must agree with the dense product, which _set_even_odd(False) forces.
"""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import CASES, check_views
from helpers import H as VIEWS_H
from helpers import W as VIEWS_W

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff.bases import make_basis

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "emulation" / "emulated_ops.cpp"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    if not SOURCE.exists():
        pytest.skip(f"{SOURCE} is not in this checkout")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler to build the emulation")
    from torch.utils import cpp_extension

    build = tmp_path_factory.mktemp("emu_build")
    cpp_extension.load(
        name="blurdiff_emu",
        sources=[str(SOURCE)],
        extra_cflags=["-O2"],
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )
    ops = torch.ops.blurdiff_emu
    yield ops
    ops._set_map_path("auto")
    ops.set_max_shared_memory(H100_SHARED_MEMORY)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Many small ops (the GEMM path's matmuls, the reference): one thread (see
    conftest.one_torch_thread); the emulation runs its own threads."""


def _problem(H, W, K, dtype=torch.float32, B=2, C=3, T=4, seed=0, basis="gaussian"):
    g = torch.Generator().manual_seed(seed)
    table = torch.float64 if dtype == torch.float64 else torch.float32
    b = make_basis(basis, H, W)
    xs = [torch.randn(B, C, H, W, generator=g).to(dtype) for _ in range(K)]
    coefs = torch.randn(K, T, H, W, generator=g).to(table)
    nc = torch.rand(T, H, W, generator=g).to(table)
    nz = torch.randn(B, C, H, W, generator=g).to(dtype)
    t = torch.randint(0, T, (B,), generator=g)
    return xs, coefs, t, b.U_h.to(table), b.U_w.to(table), nc, nz


def _check(got, want, tol, where=""):
    assert got.shape == want.shape and got.dtype == want.dtype, where
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * (want.double().abs().max().item() + 1e-30), f"{where}: {err}"


PATHS = ["fused", "split", "gemm"]
# An H100's opt-in limit of shared memory per block, the emulation's default.
H100_SHARED_MEMORY = 227 * 1024


def _set_path(emu, path):
    emu._set_map_path(path)


@contextmanager
def _dense_path(emu):
    """The dense product for every basis, as before the even/odd halves."""
    before = emu._set_even_odd(False)
    try:
        yield
    finally:
        emu._set_even_odd(before)


def _assert_even_odd(emu, *Us):
    # Otherwise a test of the halves could pass on the dense product.
    for U in Us:
        assert emu._basis_layout(U) == (U.shape[0] + 1) // 2


def _random_orthogonal(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q.to(dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hw", [(8, 8), (5, 7), (16, 12), (33, 20), (64, 64)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_lincomb_matches_reference_and_cpu_kernels(emu, path, hw, dtype):
    _set_path(emu, path)
    xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=2, dtype=dtype, B=1 if hw == (64, 64) else 2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    _check(
        emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), R.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), tol
    )
    _check(emu.spectral_lincomb(xs, coefs, t, U_h, U_w), R.spectral_lincomb(xs, coefs, t, U_h, U_w), tol)
    if blurdiff_ops.kernels_available("cpu"):
        # Drawn noise: the same generator state gives the same Philox numbers on both paths; the
        # normals are float32 (the CPU's vectorised Box-Muller may round differently by an ulp).
        a = emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, None, torch.Generator().manual_seed(3))
        b = torch.ops.blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, None, torch.Generator().manual_seed(3))
        _check(a, b, max(tol, 1e-6))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hw", [(12, 20), (31, 16)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_half_types(emu, path, hw, dtype):
    _set_path(emu, path)
    xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=2, dtype=dtype)
    _assert_even_odd(emu, U_h, U_w)
    want = R.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)
    # Both compute in float32 and round once at the end: at most one rounding apart.
    tol = 2**-7 if dtype == torch.bfloat16 else 2**-10
    got = emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)
    _check(got, want, tol)
    with _dense_path(emu):
        _check(got, emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), tol)


@pytest.mark.parametrize("path", PATHS)
def test_emulated_transforms_and_backward(emu, path):
    _set_path(emu, path)
    xs, coefs, t, U_h, U_w, nc, _ = _problem(9, 14, K=3)
    x = xs[0]
    _check(emu.to_spectral(x, U_h, U_w), R.to_spectral(x, U_h, U_w), 1e-5)
    _check(emu.from_spectral(x, U_h, U_w), R.from_spectral(x, U_h, U_w), 1e-5)
    _check(emu.to_spectral(x[0, 0], U_h, U_w), R.to_spectral(x[0, 0], U_h, U_w), 1e-5)
    grads = emu.spectral_lincomb_backward(x, coefs, t, U_h, U_w, nc)
    for g, c in zip(grads, list(coefs) + [nc]):
        _check(g, R.spectral_lincomb([x], c[None], t, U_h, U_w), 1e-5)


def _assert_views_take_the_halves(emu):
    # check_views' problem: the Gaussian basis at the size of helpers' op problem, float64.
    b = make_basis("gaussian", VIEWS_H, VIEWS_W)
    _assert_even_odd(emu, b.U_h, b.U_w)


@pytest.mark.parametrize("case", list(CASES))
def test_emulated_ops_take_any_view_of_every_argument(emu, case):
    """Strided, expanded, offset and transposed views of each argument of each op, through the
    CUDA host code: the same bits as contiguous copies, and the reference's values."""
    _set_path(emu, "gemm")
    _assert_views_take_the_halves(emu)
    check_views(emu, case)


def test_emulated_fused_kernel_takes_any_view(emu):
    """The host code makes arguments dense before either path plans; the fused kernel reads them
    too (one channel and two layouts: each emulated block costs 256 threads)."""
    _set_path(emu, "fused")
    _assert_views_take_the_halves(emu)
    for case in ("lincomb", "lincomb_backward"):
        check_views(emu, case, channels=1, layouts=("strided", "expanded"))


def test_emulated_fused_kernel_at_its_largest_plane(emu):
    """120 x 120 is the largest square float32 plane whose fused plan (three planes, the halves of
    both bases) fits an H100's shared memory; each of its products is several tiles a thread."""
    _set_path(emu, "fused")
    xs, coefs, t, U_h, U_w, nc, nz = _problem(120, 120, K=1, B=1, C=1, basis="dct")
    _assert_even_odd(emu, U_h, U_w)
    _check(
        emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), R.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), 2e-5
    )


# ---------------------------------------------------------------------------------------------
# The even/odd halves and the identity basis against the reference and the dense product, every
# op, even, odd and non-square planes. Few planes: each emulated block costs 256 threads.

EVEN_ODD_SIZES = [(64, 64), (65, 65), (31, 16), (48, 80), (5, 7)]


def _tol(dtype):
    return 1e-11 if dtype == torch.float64 else 2e-5


def _drawn_spectrum(emu, x, t, T, seed):
    """The noise spectrum z̄ that spectral_lincomb draws for x's shape and this seed: with the
    identity basis, zero inputs and noise coefficient 1 the op returns it as it is."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    H, W = x.shape[-2:]
    return emu.spectral_lincomb(
        [torch.zeros_like(x)],
        torch.zeros(1, T, H, W, dtype=acc),
        t,
        torch.eye(H, dtype=acc),
        torch.eye(W, dtype=acc),
        torch.ones(T, H, W, dtype=acc),
        None,
        torch.Generator().manual_seed(seed),
    )


# spectral_lincomb's calls in _every_op: (inputs, noise: None, "given" or "drawn").
LINCOMB_CALLS = [(1, "drawn"), (2, "given"), (3, None), (4, "given"), (4, "drawn")]


def _every_op(ops, xs, coefs, t, U_h, U_w, nc, nz):
    """name -> result of every op on one problem (lincomb as LINCOMB_CALLS says, the backward
    with the noise coefficient)."""
    x = xs[0]
    out = {
        "to_spectral": ops.to_spectral(x, U_h, U_w),
        "from_spectral": ops.from_spectral(x, U_h, U_w),
        "from_spectral of one plane": ops.from_spectral(x[0, 0], U_h, U_w),
    }
    for K, noise in LINCOMB_CALLS:
        if noise is None:
            y = ops.spectral_lincomb(xs[:K], coefs[:K], t, U_h, U_w)
        elif noise == "given":
            y = ops.spectral_lincomb(xs[:K], coefs[:K], t, U_h, U_w, nc, nz)
        else:
            y = ops.spectral_lincomb(xs[:K], coefs[:K], t, U_h, U_w, nc, None, torch.Generator().manual_seed(K))
        out[f"lincomb {K} {noise}"] = y
    for k, g in enumerate(ops.spectral_lincomb_backward(x, coefs[:2], t, U_h, U_w, nc)):
        out[f"backward {k}"] = g
    return out


def _every_reference(emu, xs, coefs, t, U_h, U_w, nc, nz):
    """_every_op's results from the reference; the drawn noise as given noise whose spectrum is
    the z̄ the op draws (so the halves must add it at the right frequencies)."""
    x = xs[0]
    out = {
        "to_spectral": R.to_spectral(x, U_h, U_w),
        "from_spectral": R.from_spectral(x, U_h, U_w),
        "from_spectral of one plane": R.from_spectral(x[0, 0], U_h, U_w),
    }
    for K, noise in LINCOMB_CALLS:
        if noise is None:
            y = R.spectral_lincomb(xs[:K], coefs[:K], t, U_h, U_w)
        else:
            z = nz if noise == "given" else R.from_spectral(_drawn_spectrum(emu, x, t, coefs.shape[1], K), U_h, U_w)
            y = R.spectral_lincomb(xs[:K], coefs[:K], t, U_h, U_w, nc, z)
        out[f"lincomb {K} {noise}"] = y
    for k, c in enumerate(list(coefs[:2]) + [nc]):
        out[f"backward {k}"] = R.spectral_lincomb([x], c[None], t, U_h, U_w)
    return out


def _check_every_op(emu, problem, tol, exact_dense=False):
    got = _every_op(emu, *problem)
    with _dense_path(emu):
        dense = _every_op(emu, *problem)
    want = _every_reference(emu, *problem)
    assert got.keys() == want.keys() == dense.keys()
    for name in got:
        _check(got[name], want[name], tol, f"{name} vs reference")
        if exact_dense:
            assert torch.equal(got[name], dense[name]), name
        else:
            _check(got[name], dense[name], tol, f"{name} vs dense")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("basis", ["gaussian", "dct"])
@pytest.mark.parametrize("hw", EVEN_ODD_SIZES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_even_odd_halves(emu, path, basis, hw, dtype):
    _set_path(emu, path)
    xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=4, dtype=dtype, C=1, basis=basis)
    _assert_even_odd(emu, U_h, U_w)
    with _dense_path(emu):
        assert emu._basis_layout(U_h) == emu._basis_layout(U_w) == 0
    _check_every_op(emu, (xs, coefs, t, U_h, U_w, nc, nz), _tol(dtype))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hw", [(31, 16), (8, 8)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_identity_basis_skips_the_products(emu, path, hw, dtype):
    _set_path(emu, path)
    xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=4, dtype=dtype, C=1, basis="identity")
    assert emu._basis_layout(U_h) == emu._basis_layout(U_w) == -1
    _check_every_op(emu, (xs, coefs, t, U_h, U_w, nc, nz), _tol(dtype))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sides", ["random", "gaussian x random", "identity x dct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_dense_and_mixed_sides(emu, path, sides, dtype):
    """A random orthogonal U keeps the dense product (the same bits with the halves off); each
    side of a plane takes its own path."""
    _set_path(emu, path)
    H, W = 33, 20
    xs, coefs, t, U_h, U_w, nc, nz = _problem(H, W, K=4, dtype=dtype, C=1, basis="gaussian")
    table = coefs.dtype
    layout = {"random": (0, 0), "gaussian x random": ((H + 1) // 2, 0), "identity x dct": (-1, (W + 1) // 2)}[sides]
    if sides == "identity x dct":
        U_h, U_w = make_basis("identity", H, W).U_h.to(table), make_basis("dct", H, W).U_w.to(table)
    else:
        U_w = _random_orthogonal(W, table, seed=1)
        if sides == "random":
            U_h = _random_orthogonal(H, table, seed=2)
    assert (emu._basis_layout(U_h), emu._basis_layout(U_w)) == layout
    _check_every_op(emu, (xs, coefs, t, U_h, U_w, nc, nz), _tol(dtype), exact_dense=sides == "random")


def test_emulated_noise_statistics(emu):
    _set_path(emu, "fused")
    H, W, B = 6, 10, 400
    z = emu.spectral_lincomb(
        [torch.zeros(B, 1, H, W)],
        torch.zeros(1, 1, H, W),
        torch.zeros(B, dtype=torch.int64),
        torch.eye(H),
        torch.eye(W),
        torch.ones(1, H, W),
        None,
        torch.Generator().manual_seed(0),
    )
    assert abs(z.mean().item()) < 0.02 and abs(z.var().item() - 1) < 0.03
    assert z.var(dim=0).min() > 0.7  # each pixel, padded lanes included, has its own stream


def test_emulation_checks_arguments(emu):
    xs, coefs, t, U_h, U_w, _, _ = _problem(6, 8, K=2)
    with pytest.raises(ValueError, match="t must lie in"):
        emu.spectral_lincomb(xs, coefs, torch.tensor([0, 4]), U_h, U_w)
    many = xs * 9
    with pytest.raises(ValueError, match="at most 16 inputs"):
        emu.spectral_lincomb(many, coefs[:1].expand(18, -1, -1, -1).contiguous(), t, U_h, U_w)


# ---------------------------------------------------------------------------------------------
# Which path: the cost model (csrc/path_cost.h) and the switch that forces a path.

H100 = (9, 132, H100_SHARED_MEMORY, 228 * 1024)
FUSED, SPLIT, GEMM = 1, 2, 3  # path_cost.h's MapPath
A100 = (8, 108, 163 * 1024, 164 * 1024)
V100 = (7, 80, 96 * 1024, 96 * 1024)


def _all_costs(emu, device, planes, n, acc=4, sides="even_odd", inputs=2, outputs=1):
    """The model's (fused µs, GEMM µs, fused blocks per SM, fused bytes, split µs, split blocks per
    plane, the path auto takes) for q_sample-like calls."""
    return emu._path_costs(*device, planes, n, n, sides, acc, acc, inputs, outputs, 0, True, True)


def _costs(emu, device, planes, n, acc=4, sides="even_odd", inputs=2, outputs=1):
    """(fused µs, GEMM µs, fused blocks per SM, fused bytes)."""
    fused, gemm, blocks, smem, _, _, _ = _all_costs(emu, device, planes, n, acc, sides, inputs, outputs)
    return fused, gemm, int(blocks), int(smem)


def test_cost_model_q_sample_on_an_h100(emu):
    fused, gemm, blocks, smem = _costs(emu, H100, 768, 64)
    # Three planes of 64 x 64, both sides' halves (32 x 32 twice), four maps of 64 int32.
    assert smem == (3 * 64 * 64 + 2 * 2 * 32 * 32) * 4 + 4 * 64 * 4
    assert blocks == 2  # by registers (3 by shared memory)
    # docs/design.md's formula by hand: each of 3 transforms (2 inputs forward, 1 output back) is
    # two sides of 64 lines x (32² + 32²) multiply-adds; 9 elementwise passes of 12 instructions.
    macs = 3 * 2 * 64 * 2 * 32 * 32
    insns = macs / 32 / 0.75 + 9 * 64 * 64 * 12 / 32
    busiest = -(-768 // 132)
    compute = busiest * max(insns / 4, macs / 128) / 1980
    dram = 3 * 768 * 64 * 64 * 4 / 3350e3
    assert fused == pytest.approx(max(compute, dram) + 4)
    assert fused < gemm


def test_cost_model_sends_planes_too_large_for_a_block_to_the_gemm_path(emu):
    assert _costs(emu, H100, 48, 120)[2] > 0
    assert _costs(emu, H100, 48, 128)[2] == 0
    assert _costs(emu, A100, 48, 64, acc=8)[2] == 1
    assert _costs(emu, V100, 48, 64, acc=8)[2] == 0  # 129 KB of float64 plan, 96 KB a block
    assert _costs(emu, V100, 48, 64)[2] == 1
    # Dense sides stage the whole U; the identity none.
    assert (
        _costs(emu, H100, 48, 64, sides="dense")[3]
        > _costs(emu, H100, 48, 64)[3]
        > _costs(emu, H100, 48, 64, sides="identity")[3]
    )


def test_cost_model_grows_with_the_work(emu):
    small, large = _costs(emu, H100, 48, 64), _costs(emu, H100, 768, 64)
    assert small[0] < large[0] and small[1] < large[1]
    assert _costs(emu, H100, 768, 64, inputs=4)[0] > large[0]
    # Half the SMs: the busiest SM runs twice the blocks.
    half = (9, 66, H100_SHARED_MEMORY, 228 * 1024)
    assert _costs(emu, half, 768, 64)[0] > large[0]


def test_cost_model_refuses_bad_arguments(emu):
    with pytest.raises(ValueError, match="sides must be"):
        emu._path_costs(*H100, 1, 8, 8, "halves", 4, 4, 1, 1, 0, True, True)
    with pytest.raises(ValueError, match="must be positive"):
        emu._path_costs(*H100, 0, 8, 8, "dense", 4, 4, 1, 1, 0, True, True)


def test_map_path_switch_refuses_an_unknown_path(emu):
    with pytest.raises(ValueError, match="path must be 'auto', 'fused', 'split' or 'gemm', got 'cublas'"):
        emu._set_map_path("cublas")
    emu._set_map_path("gemm")
    assert emu._set_map_path("auto") == "gemm"
    assert emu._set_map_path("auto") == "auto"


def test_forcing_the_fused_kernel_onto_a_plane_it_cannot_hold_is_an_error(emu):
    _set_path(emu, "fused")
    xs, _, _, U_h, U_w, _, _ = _problem(128, 128, K=1, B=1, C=1, basis="dct")
    need = _costs(emu, H100, 1, 128)[3]
    with pytest.raises(ValueError, match=f"needs {need} bytes of shared memory for a 128x128 plane"):
        emu.to_spectral(xs[0], U_h, U_w)


def test_auto_takes_the_fused_kernel_where_it_fits_and_the_gemm_path_elsewhere(emu):
    """The two paths round differently, so a result's bits name the path that made it."""

    def run(hw, path):
        xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=2, B=1, C=1)
        _set_path(emu, path)
        return emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)

    fused, gemm = run((64, 64), "fused"), run((64, 64), "gemm")
    assert not torch.equal(fused, gemm)
    assert torch.equal(run((64, 64), "auto"), fused)
    gemm = run((128, 128), "gemm")
    assert torch.equal(run((128, 128), "auto"), gemm)
    emu.set_max_shared_memory(1 << 30)  # a device that could hold it
    try:
        assert not torch.equal(run((128, 128), "fused"), gemm)
    finally:
        emu.set_max_shared_memory(H100_SHARED_MEMORY)


def test_map_path_of_blurdiff_ops_testing():
    """blurdiff_ops.testing.map_path sets the switch of the compiled library and restores it."""
    if not blurdiff_ops.kernels_available("cpu"):
        pytest.skip("needs the compiled kernels")
    from blurdiff_ops.testing import map_path

    ops = torch.ops.blurdiff_ops
    with map_path("gemm"):
        assert ops._set_map_path("gemm") == "gemm"
        with map_path("fused"):
            assert ops._set_map_path("fused") == "fused"
        assert ops._set_map_path("gemm") == "gemm"
    assert ops._set_map_path("auto") == "auto"
    with pytest.raises(ValueError, match="path must be"), map_path("tensor cores"):
        pass


def test_auto_splits_a_plane_that_one_block_would_leave_the_gpu_idle_for(emu):
    """One dense 104 x 104 plane fits a block of an H100, but one block on one SM is estimated
    slower than GEMMs spread over the GPU, and the fused kernel split over 26 blocks cheaper than
    both (docs/design.md, "Which CUDA path")."""
    fused_us, gemm_us, blocks, _, split_us, bands, path = _all_costs(emu, H100, 1, 104, sides="dense")
    assert blocks > 0 and split_us < gemm_us < fused_us and bands == 26 and path == SPLIT
    xs, coefs, t, _, _, nc, nz = _problem(104, 104, K=2, B=1, C=1)
    U_h, U_w = _random_orthogonal(104, torch.float32, seed=3), _random_orthogonal(104, torch.float32, seed=4)
    assert emu._basis_layout(U_h) == emu._basis_layout(U_w) == 0

    def run(path):
        _set_path(emu, path)
        return emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)

    gemm, split = run("gemm"), run("split")
    assert not torch.equal(split, gemm)
    assert torch.equal(run("auto"), split)


def test_cost_model_splits_planes_where_that_pays_for_a_second_launch(emu):
    """At batch 16 of 120 x 120 (48 planes, one block per SM by shared memory) an H100 gives a
    block to 48 of its 132 SMs; five blocks per plane cut each block's products fivefold for the
    price of a second launch and the spectrum's trip through memory. At 64 x 64 a block is so
    short that the second launch costs more than it saves, and at batch 256 every SM has planes
    enough."""
    fused, gemm, blocks, _, split, bands, path = _all_costs(emu, H100, 48, 120)
    assert blocks == 1 and bands == 5 and split < fused < gemm and path == SPLIT
    fused, gemm, blocks, _, split, bands, path = _all_costs(emu, H100, 48, 64)
    assert blocks == 2 and bands == 2 and fused < split < gemm and path == FUSED
    # By hand (path_cost.h's fused_time): 2 bands of 8 gather and 8 emit units halve the products;
    # the row fold of each input, the spectrum's load and one store band are every block's.
    macs = 3 * 2 * 64 * 2 * 32 * 32 / 2
    passes = 2 * (1 + 2 / 2) + (1 + 2 / 2) + 1 + 1 / 2
    insns = macs / 32 / 0.75 + passes * 64 * 64 * 12 / 32
    compute = 1 * max(insns / 4, macs / 128) / 1980
    dram = ((2 * 2 + 1) * 48 * 64 * 64 * 4 + 3 * 48 * 64 * 64 * 4) / 3350e3
    assert split == pytest.approx(max(compute, dram) + 8)
    fused, _, _, _, split, _, path = _all_costs(emu, H100, 768, 64)
    assert fused < split and path == FUSED
    # Bands stop at the plan's units: 8 x 8 has 2 of each, however few the planes.
    assert _all_costs(emu, H100, 1, 8)[5] <= 2
    assert _all_costs(emu, H100, 1, 128)[6] == GEMM  # does not fit a block


@pytest.mark.parametrize("hw", [(64, 64), (33, 20), (9, 16)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_split_kernel_is_the_fused_kernel_bitwise(emu, hw, dtype):
    """Each band runs the very tiles and passes of the one-launch kernel on its own rows (33 x 20
    and 9 x 16 have bands of unequal length and an odd half shorter than the even one), and the
    spectrum crosses global memory in the accumulator's type: the same bits."""
    xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=3, dtype=dtype, B=1, C=2)

    def run(path):
        _set_path(emu, path)
        g = torch.Generator().manual_seed(5)
        return (
            emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, None, g),
            emu.spectral_lincomb_backward(xs[0], coefs, t, U_h, U_w),
            emu.to_spectral(xs[1], U_h, U_w),
            emu.from_spectral(xs[2], U_h, U_w),
        )

    fused, split = run("fused"), run("split")
    for a, b in zip(fused, split, strict=True):
        for x, y in zip(a if isinstance(a, (list, tuple)) else [a], b if isinstance(b, (list, tuple)) else [b]):
            assert torch.equal(x, y)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    _check(
        emu.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), R.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz), tol
    )
