"""The compiled kernels against the reference, on every device present.

CPU kernels run everywhere the extension is built; the CUDA cases need a GPU and skip cleanly
without one (tests/test_cuda_emulation.py runs the CUDA kernels' code on the CPU instead).
"""

import itertools
import os
import sys
import warnings

import pytest
import torch

import blurdiff_ops
import blurdiff_ops.reference as R
from blurdiff.bases import make_basis

ops = torch.ops.blurdiff_ops if blurdiff_ops.kernels_available("cpu") else None

needs_kernels = pytest.mark.skipif(
    ops is None, reason="blurdiff_ops._C is not built (pip install --no-build-isolation .)"
)

HAS_CUDA = torch.cuda.is_available() and blurdiff_ops.kernels_available("cuda")
DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernels")]
    ),
]

# Error of a float32 result against a float64 oracle: a few ulps per accumulation over H + W
# terms. Half types round the result itself: 2^-11 (fp16) and 2^-8 (bf16) relative.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def test_kernels_are_built_where_required():
    """CI sets BLURDIFF_REQUIRE_KERNELS=1, so a build that silently fell back fails here."""
    if os.environ.get("BLURDIFF_REQUIRE_KERNELS") != "1":
        pytest.skip("BLURDIFF_REQUIRE_KERNELS is not set")
    assert blurdiff_ops.kernels_available("cpu"), blurdiff_ops.unavailable_reason("cpu")
    if os.environ.get("BLURDIFF_REQUIRE_CUDA_KERNELS") == "1":
        assert blurdiff_ops.kernels_available("cuda"), blurdiff_ops.unavailable_reason("cuda")


def _problem(H, W, K, B=2, C=3, T=5, dtype=torch.float32, device="cpu", basis="gaussian", seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.float64 if dtype == torch.float64 else torch.float32
    b = make_basis(basis, H, W)
    U_h, U_w = b.U_h.to(device, table), b.U_w.to(device, table)
    xs = [torch.randn(B, C, H, W, generator=g).to(device, dtype) for _ in range(K)]
    coefs = torch.randn(K, T, H, W, generator=g, dtype=torch.float64).to(device, table)
    noise_coef = torch.rand(T, H, W, generator=g, dtype=torch.float64).to(device, table)
    noise = torch.randn(B, C, H, W, generator=g).to(device, dtype)
    t = torch.randint(0, T, (B,), generator=g).to(device)
    return xs, coefs, t, U_h, U_w, noise_coef, noise


def _oracle(xs, coefs, t, U_h, U_w, noise_coef=None, noise=None):
    """The reference in float64 on the CPU, from the same (rounded) inputs."""
    d = lambda x: None if x is None else x.detach().cpu().double()  # noqa: E731
    return R.spectral_lincomb([d(x) for x in xs], d(coefs), d(t).long(), d(U_h), d(U_w), d(noise_coef), d(noise))


def _close(got, want, dtype):
    scale = want.abs().max().item() + 1e-30
    err = (got.detach().cpu().double() - want).abs().max().item()
    assert err <= TOL[dtype] * scale * 4, f"max error {err:.3g} vs scale {scale:.3g} ({dtype})"


SIZES = [(8, 8), (16, 12), (7, 33), (64, 64), (31, 128), (128, 128), (256, 256), (200, 136)]


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("noise", ["none", "given"])
def test_lincomb_matches_reference(device, hw, K, noise):
    H, W = hw
    B = 1 if H * W > 128 * 128 else 2
    for dtype in (torch.float32, torch.float64):
        xs, coefs, t, U_h, U_w, nc, nz = _problem(H, W, K, B=B, dtype=dtype, device=device)
        if noise == "none":
            nc = nz = None
        got = blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)
        assert got.shape == xs[0].shape and got.dtype == dtype and got.device.type == device
        _close(got, _oracle(xs, coefs, t, U_h, U_w, nc, nz), dtype)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hw", [(16, 16), (64, 64), (24, 40), (160, 160)], ids=str)
def test_half_types_match_an_fp32_reference(device, dtype, hw):
    """Half data with float32 tables: the only rounding beyond fp32 is the output's own."""
    xs, coefs, t, U_h, U_w, nc, nz = _problem(*hw, K=2, dtype=dtype, device=device)
    got = blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)
    assert got.dtype == dtype
    _close(got, _oracle(xs, coefs, t, U_h, U_w, nc, nz), dtype)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hw", [(8, 8), (12, 20), (64, 64), (144, 144)], ids=str)
def test_transforms_match_reference(device, hw):
    xs, _, _, U_h, U_w, _, _ = _problem(*hw, K=1, device=device)
    x = xs[0]
    d = lambda v: v.cpu().double()  # noqa: E731
    _close(blurdiff_ops.to_spectral(x, U_h, U_w), d(U_h).T @ d(x) @ d(U_w), torch.float32)
    _close(blurdiff_ops.from_spectral(x, U_h, U_w), d(U_h) @ d(x) @ d(U_w).T, torch.float32)
    # Any leading dims, including none.
    _close(blurdiff_ops.to_spectral(x[0, 0], U_h, U_w), d(U_h).T @ d(x[0, 0]) @ d(U_w), torch.float32)
    five = x.reshape(1, *x.shape)
    _close(blurdiff_ops.from_spectral(five, U_h, U_w), d(U_h) @ d(five) @ d(U_w).T, torch.float32)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_matches_reference(device):
    xs, coefs, t, U_h, U_w, nc, _ = _problem(12, 20, K=3, device=device)
    grads = ops.spectral_lincomb_backward(xs[0], coefs, t, U_h, U_w, nc)
    assert len(grads) == 4
    tables = list(coefs) + [nc]
    for g, c in zip(grads, tables):
        _close(g, _oracle([xs[0]], c[None], t, U_h, U_w), torch.float32)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1]
)
def test_every_path_in_every_dtype(device, dtype):
    """Drawn noise with K = 1, 2, 3, the plain transforms and the backward op (several outputs,
    and one output whose coefficients join the last pass), each in every data type."""
    H, W, B, C = 12, 20, 2, 3
    gen = lambda: torch.Generator(device).manual_seed(11)  # noqa: E731
    table = torch.float64 if dtype == torch.float64 else torch.float32
    # The noise z̄ this seed gives for [B, C, H, W]: the noise term alone, in an identity basis.
    eye = lambda n: torch.eye(n, device=device, dtype=table)  # noqa: E731
    zeros = torch.zeros(B, C, H, W, device=device, dtype=dtype)
    z_bar = blurdiff_ops.spectral_lincomb(
        [zeros],
        torch.zeros(1, 1, H, W, device=device, dtype=table),
        torch.zeros(B, dtype=torch.int64, device=device),
        eye(H),
        eye(W),
        torch.ones(1, H, W, device=device, dtype=table),
        generator=gen(),
    )
    z_bar = z_bar.double().cpu()
    for K in (1, 2, 3):
        xs, coefs, t, U_h, U_w, nc, _ = _problem(H, W, K, B=B, C=C, dtype=dtype, device=device, seed=K)
        got = blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, generator=gen())
        noise_term = U_h.cpu().double() @ (nc.cpu().double()[t.cpu()][:, None] * z_bar) @ U_w.cpu().double().T
        _close(got, _oracle(xs, coefs, t, U_h, U_w) + noise_term, dtype)

    xs, coefs, t, U_h, U_w, nc, _ = _problem(H, W, K=2, B=B, C=C, dtype=dtype, device=device)
    d = lambda v: v.cpu().double()  # noqa: E731
    _close(blurdiff_ops.to_spectral(xs[0], U_h, U_w), d(U_h).T @ d(xs[0]) @ d(U_w), dtype)
    _close(blurdiff_ops.from_spectral(xs[0], U_h, U_w), d(U_h) @ d(xs[0]) @ d(U_w).T, dtype)
    for noise_coef in (nc, None):
        grads = ops.spectral_lincomb_backward(xs[0], coefs, t, U_h, U_w, noise_coef)
        tables = list(coefs) + ([noise_coef] if noise_coef is not None else [])
        assert len(grads) == len(tables)
        for g, c in zip(grads, tables):
            assert g.dtype == dtype
            _close(g, _oracle([xs[0]], c[None], t, U_h, U_w), dtype)
    one = ops.spectral_lincomb_backward(xs[0], coefs[:1], t, U_h, U_w, None)  # a single output
    _close(one[0], _oracle([xs[0]], coefs[:1], t, U_h, U_w), dtype)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_empty(device):
    xs, coefs, t, U_h, U_w, nc, nz = _problem(16, 24, K=2, B=3, device=device)
    # A transposed view with the same logical shape, a strided slice, and an expanded tensor.
    a = xs[0].transpose(-1, -2).contiguous().transpose(-1, -2)
    b = torch.cat([xs[1], xs[1]], dim=3)[..., ::2]
    c = nz[:1].expand(3, -1, -1, -1)
    assert not (a.is_contiguous() or b.is_contiguous() or c.is_contiguous())
    got = blurdiff_ops.spectral_lincomb([a, b], coefs, t, U_h, U_w, nc, c)
    _close(got, _oracle([a, b], coefs, t, U_h, U_w, nc, c), torch.float32)
    empty = [x[:0] for x in xs]
    out = blurdiff_ops.spectral_lincomb(empty, coefs, t[:0], U_h, U_w, nc)
    assert out.shape == empty[0].shape
    assert blurdiff_ops.to_spectral(xs[0][:0], U_h, U_w).shape == (0, 3, 16, 24)


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_seeded_noise_reproduces_and_is_standard_normal(device):
    H, W, B = 16, 20, 256
    zeros = torch.zeros(B, 1, H, W, device=device)
    coefs = torch.zeros(1, 1, H, W, device=device)
    ones = torch.ones(1, H, W, device=device)
    t = torch.zeros(B, dtype=torch.int64, device=device)
    U_h, U_w = torch.eye(H, device=device), torch.eye(W, device=device)
    gen = lambda s: torch.Generator(device).manual_seed(s)  # noqa: E731
    g = gen(7)
    z1 = blurdiff_ops.spectral_lincomb([zeros], coefs, t, U_h, U_w, ones, generator=g)
    z2 = blurdiff_ops.spectral_lincomb([zeros], coefs, t, U_h, U_w, ones, generator=g)
    again = blurdiff_ops.spectral_lincomb([zeros], coefs, t, U_h, U_w, ones, generator=gen(7))
    torch.testing.assert_close(z1, again, rtol=0, atol=0)
    assert not torch.equal(z1, z2)  # the generator advanced
    other = blurdiff_ops.spectral_lincomb([zeros], coefs, t, U_h, U_w, ones, generator=gen(8))
    assert not torch.equal(z1, other)

    z = torch.cat([z1, z2]).double().cpu().reshape(2 * B, H * W)
    n = z.numel()
    assert abs(z.mean().item()) < 4 / n**0.5
    assert abs(z.var().item() - 1) < 4 * (2 / n) ** 0.5
    # Tails: a normal puts 4.55 % of its mass beyond 2 sigma and 0.27 % beyond 3.
    assert abs((z.abs() > 2).double().mean().item() - 0.0455) < 0.004
    assert abs((z.abs() > 3).double().mean().item() - 0.0027) < 0.001
    # No correlation between neighbouring pixels, lanes of a Philox block, rows or planes.
    corr = lambda a, b: ((a - a.mean()) * (b - b.mean())).mean().item() / (a.std() * b.std()).item()  # noqa: E731
    img = z.reshape(2 * B, H, W)
    for a, b in [
        (img[:, :, :-1], img[:, :, 1:]),
        (img[:, :-1], img[:, 1:]),
        (img[:-1], img[1:]),
        (img[:, :, 0::4], img[:, :, 1::4]),
    ]:
        assert abs(corr(a, b)) < 0.02
    # Sample means per pixel are not stuck (every pixel gets its own stream).
    assert z.var(dim=0).min() > 0.6


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_drawn_noise_enters_with_its_coefficient(device):
    """With zero inputs, output = from_spectral(noise_coef ⊙ z̄): its per-frequency variance is noise_coef²."""
    H, W, B = 8, 8, 4000
    b = make_basis("gaussian", H, W)
    U_h, U_w = b.U_h.float().to(device), b.U_w.float().to(device)
    nc = torch.linspace(0.1, 2.0, H * W).reshape(1, H, W).to(device)
    out = blurdiff_ops.spectral_lincomb(
        [torch.zeros(B, 1, H, W, device=device)],
        torch.zeros(1, 1, H, W, device=device),
        torch.zeros(B, dtype=torch.int64, device=device),
        U_h,
        U_w,
        nc,
        generator=torch.Generator(device).manual_seed(0),
    )
    spec = (U_h.T @ out @ U_w).double().cpu()
    var = spec.var(dim=0)[0]
    torch.testing.assert_close(var, (nc[0] ** 2).double().cpu(), rtol=0.12, atol=0)


@needs_kernels
def test_gradcheck_float64():
    xs, coefs, t, U_h, U_w, nc, nz = _problem(5, 7, K=2, dtype=torch.float64)
    args = [x.requires_grad_() for x in (*xs, nz)]
    f = lambda a, b, n: blurdiff_ops.spectral_lincomb([a, b], coefs, t, U_h, U_w, nc, n)  # noqa: E731
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    assert torch.autograd.gradcheck(lambda x: blurdiff_ops.to_spectral(x, U_h, U_w), (args[0],))
    assert torch.autograd.gradcheck(lambda x: blurdiff_ops.from_spectral(x, U_h, U_w), (args[0],))
    assert torch.autograd.gradgradcheck(lambda x: blurdiff_ops.to_spectral(x, U_h, U_w), (args[0],))
    # With noise drawn inside, the gradient with respect to the inputs is unchanged.
    y = blurdiff_ops.spectral_lincomb([args[0]], coefs[:1], t, U_h, U_w, nc, generator=torch.Generator().manual_seed(0))
    (gx,) = torch.autograd.grad((y * y.detach()).sum(), args[0])
    ref = _oracle([y.detach()], coefs[:1], t, U_h, U_w)
    torch.testing.assert_close(gx, ref)


@needs_kernels
def test_not_differentiable_wrt_tables():
    """Public ops and direct torch.ops calls (the autograd formula's check) alike."""
    xs, coefs, t, U_h, U_w, _, _ = _problem(5, 7, K=1)
    x = xs[0].requires_grad_()
    for lib in (blurdiff_ops, ops):
        with pytest.raises(ValueError, match="coefs requires grad"):
            lib.spectral_lincomb([x], coefs.clone().requires_grad_(), t, U_h, U_w)
        with pytest.raises(ValueError, match="U_h requires grad"):
            lib.to_spectral(x, U_h.clone().requires_grad_(), U_w)


@needs_kernels
@pytest.mark.parametrize("case", ["noise_given", "no_noise", "backward", "to", "from"])
def test_opcheck(case):
    xs, coefs, t, U_h, U_w, nc, nz = _problem(6, 10, K=2, dtype=torch.float64)
    op, args = {
        "noise_given": (ops.spectral_lincomb.default, (xs, coefs, t, U_h, U_w, nc, nz, None)),
        "no_noise": (ops.spectral_lincomb.default, (xs, coefs, t, U_h, U_w)),
        "backward": (ops.spectral_lincomb_backward.default, (xs[0], coefs, t, U_h, U_w, nc)),
        "to": (ops.to_spectral.default, (xs[0], U_h, U_w)),
        "from": (ops.from_spectral.default, (xs[0], U_h, U_w)),
    }[case]
    args = tuple([a.requires_grad_() for a in x] if isinstance(x, list) else x for x in args)
    torch.library.opcheck(op, args)


@needs_kernels
def test_opcheck_drawn_noise_schema_and_fake():
    xs, coefs, t, U_h, U_w, nc, _ = _problem(6, 10, K=1)
    torch.library.opcheck(
        ops.spectral_lincomb.default,
        (xs, coefs, t, U_h, U_w, nc, None, torch.Generator()),
        test_utils=("test_schema", "test_faketensor"),
    )


@needs_kernels
@pytest.mark.slow
def test_torch_compile_fullgraph():
    xs, coefs, t, U_h, U_w, nc, nz = _problem(16, 12, K=2)

    def step(x, e, z):
        y = blurdiff_ops.spectral_lincomb([x, e], coefs, t, U_h, U_w, nc, z)
        return blurdiff_ops.to_spectral(y * 2, U_h, U_w).sum(dim=(-1, -2))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(xs[0], xs[1], nz), step(xs[0], xs[1], nz))
    # And its backward.
    x = xs[0].clone().requires_grad_()
    compiled(x, xs[1], nz).sum().backward()
    x2 = xs[0].clone().requires_grad_()
    step(x2, xs[1], nz).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@needs_kernels
def test_direct_op_calls_check_their_arguments():
    xs, coefs, t, U_h, U_w, nc, nz = _problem(6, 10, K=2)
    with pytest.raises(ValueError, match="t must lie in \\[0, 4\\]"):
        ops.spectral_lincomb(xs, coefs, torch.tensor([0, 5]), U_h, U_w)
    with pytest.raises(ValueError, match="coefs must have shape \\[K=2"):
        ops.spectral_lincomb(xs, coefs[:1], t, U_h, U_w)
    with pytest.raises(ValueError, match="U_w must have shape"):
        ops.to_spectral(xs[0], U_h, U_h)
    with pytest.raises(ValueError, match="noise was given but noise_coef is None"):
        ops.spectral_lincomb(xs, coefs, t, U_h, U_w, None, nz)
    with pytest.raises(ValueError, match="coefs must have dtype"):
        ops.spectral_lincomb(xs, coefs.double(), t, U_h, U_w)


@needs_kernels
def test_build_info_describes_the_loaded_extension():
    info = blurdiff_ops.build_info()
    assert info["torch_version"] == torch.__version__  # else the loader would have refused it
    assert info["cuda"] == blurdiff_ops.kernels_available("cuda") and isinstance(info["openmp"], bool)
    assert blurdiff_ops.unavailable_reason("cpu") == ""
    if not info["cuda"]:
        assert "without CUDA kernels" in blurdiff_ops.unavailable_reason("cuda")


# Shapes whose products cover every tile of cpu/small_gemm.h: row blocks of 1 to 8 (H, and the
# halves ne/no of an even/odd side), column panels of one and two vectors (16, 48 float32 columns;
# 8, 24 float64), and sides it does not serve (N not a whole number of vectors), which take the BLAS.
SMALL_GEMM_SHAPES = [(9, 16), (13, 48), (23, 32), (31, 24), (64, 64), (18, 80)]


def _small_gemm_cases():
    """Every op on the shapes above, for both bases and a random orthogonal (dense) U, float32 and
    float64, as (name, result, oracle) triples; run here and in a subprocess without small_gemm."""
    cases = []
    for (H, W), basis, dtype in itertools.product(
        SMALL_GEMM_SHAPES, ("gaussian", "random"), (torch.float32, torch.float64)
    ):
        xs, coefs, t, U_h, U_w, nc, _ = _problem(H, W, 2, dtype=dtype, basis="dct" if basis == "random" else basis)
        if basis == "random":
            g = torch.Generator().manual_seed(H * W)
            U_h = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))[0].to(U_h.dtype)
            U_w = torch.linalg.qr(torch.randn(W, W, generator=g, dtype=torch.float64))[0].to(U_w.dtype)
        name = f"{H}x{W}-{basis}-{dtype}"
        cases.append(
            (name + "-lincomb", blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w), _oracle(xs, coefs, t, U_h, U_w))
        )
        cases.append(
            (
                name + "-to",
                blurdiff_ops.to_spectral(xs[0], U_h, U_w),
                R.to_spectral(xs[0].double(), U_h.double(), U_w.double()),
            )
        )
        cases.append(
            (
                name + "-from",
                blurdiff_ops.from_spectral(xs[1], U_h, U_w),
                R.from_spectral(xs[1].double(), U_h.double(), U_w.double()),
            )
        )
    return cases


@needs_kernels
def test_cpu_products_match_reference():
    """The CPU kernels' products give the reference's results on every tile shape, through their
    own AVX-512 code (cpu/small_gemm.h) where the CPU has it, else through the BLAS."""
    avx512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    off = os.environ.get("BLURDIFF_NO_AVX512") is not None
    assert blurdiff_ops.build_info()["cpu_avx512"] == (avx512 and not off)
    for name, out, oracle in _small_gemm_cases():
        err = ((out.double() - oracle).abs().max() / oracle.abs().max()).item()
        assert err < TOL[out.dtype], (name, err)


_DRAW_NOISE = """
import sys, torch, blurdiff_ops
assert blurdiff_ops.kernels_available("cpu"), blurdiff_ops.unavailable_reason("cpu")
draws = []
for H, W in [(64, 64), (33, 20), (7, 260)]:
    z = torch.zeros(3, 2, H, W)
    U_h, U_w = torch.eye(H), torch.eye(W)
    c, ones, t = torch.zeros(1, 1, H, W), torch.ones(1, H, W), torch.zeros(3, dtype=torch.int64)
    draws.append(blurdiff_ops.spectral_lincomb([z], c, t, U_h, U_w, ones, generator=torch.Generator().manual_seed(H)))
torch.save(draws, sys.argv[1])
"""


@needs_kernels
def test_cpu_kernels_without_avx512(tmp_path):
    """BLURDIFF_NO_AVX512=1 takes the BLAS for every product, with the reference's results, and the
    scalar Philox for the drawn noise, with the same numbers bit for bit."""
    import subprocess

    env = dict(os.environ, BLURDIFF_NO_AVX512="1")
    test = f"{__file__}::test_cpu_products_match_reference"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    for name, environ in [("on", dict(os.environ)), ("off", env)]:
        environ.pop("BLURDIFF_NO_AVX512", None) if name == "on" else None
        out = subprocess.run(
            [sys.executable, "-c", _DRAW_NOISE, str(tmp_path / name)],
            env=environ,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-2000:]
    for a, b in zip(torch.load(tmp_path / "on"), torch.load(tmp_path / "off")):
        assert torch.equal(a, b)


def test_fallback_warns_once_and_matches_reference():
    from blurdiff_ops.testing import kernels_unavailable

    xs, coefs, t, U_h, U_w, nc, nz = _problem(6, 10, K=2)
    with kernels_unavailable(), warnings.catch_warnings(record=True) as caught:
        assert not blurdiff_ops.kernels_available("cpu")
        assert blurdiff_ops.unavailable_reason("cpu") == "not built (simulated)"
        assert blurdiff_ops.build_info() == {}
        warnings.simplefilter("always")
        a = blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz)
        blurdiff_ops.to_spectral(xs[0], U_h, U_w)
    assert blurdiff_ops.kernels_available("cpu") == (ops is not None)  # restored
    messages = [str(w.message) for w in caught if "blurdiff_ops" in str(w.message)]
    assert len(messages) == 1 and "not built (simulated)" in messages[0]
    torch.testing.assert_close(a, R.spectral_lincomb(xs, coefs, t, U_h, U_w, nc, nz))


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_process_through_fused_ops_matches_reference(device):
    """BlurDiffusion with backend="fused" against backend="reference", on the same device."""
    from blurdiff import BlurDiffusion, ProcessConfig

    fused = BlurDiffusion(ProcessConfig((16, 24)), backend="fused")
    ref = BlurDiffusion(ProcessConfig((16, 24)), backend="reference")
    g = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(4, 3, 16, 24, generator=g).to(device) for _ in range(3))
    t = torch.tensor([1, 2, 500, 1000], device=device)
    torch.testing.assert_close(fused.q_sample(x0, t, eps), ref.q_sample(x0, t, eps), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.reverse_step(x0, eps, t, z), ref.reverse_step(x0, eps, t, z), rtol=1e-4, atol=1e-5)
    model = lambda x, t: 0.1 * x  # noqa: E731
    out = fused.sample(model, (2, 3, 16, 24), generator=torch.Generator(device).manual_seed(1), device=device)
    assert out.shape == (2, 3, 16, 24) and torch.isfinite(out).all()


@needs_kernels
def test_cpu_kernels_are_threaded_and_thread_count_does_not_change_results():
    """at::parallel_for is a header template: an extension compiled without OpenMP runs it on one
    thread (this happened: two threads were no faster than one). The noise is keyed by plane and
    row, so the result must not depend on how the planes are split among threads."""
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        assert blurdiff_ops.build_info()["openmp"], (
            "the extension was compiled without -fopenmp: the CPU kernels run serially"
        )
    xs, coefs, t, U_h, U_w, noise_coef, _ = _problem(64, 64, 2, B=16)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            g = torch.Generator().manual_seed(5)
            outs.append(blurdiff_ops.spectral_lincomb(xs, coefs, t, U_h, U_w, noise_coef, generator=g))
    finally:
        torch.set_num_threads(before)
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@needs_kernels
def test_cpu_kernels_without_direct_blas(tmp_path):
    """Where torch exports no BLAS symbols the CPU kernels go through ATen's mm: same results."""
    import subprocess

    code = (
        "import torch, blurdiff_ops, blurdiff_ops.reference as R\n"
        "assert blurdiff_ops.kernels_available('cpu'), blurdiff_ops.unavailable_reason('cpu')\n"
        "from blurdiff.bases import make_basis\n"
        "b = make_basis('gaussian', 12, 20); U_h, U_w = b.U_h, b.U_w\n"
        "xs = [torch.randn(2, 3, 12, 20, dtype=torch.float64) for _ in range(2)]\n"
        "c = torch.randn(2, 3, 12, 20, dtype=torch.float64); t = torch.tensor([0, 2])\n"
        "d = (blurdiff_ops.spectral_lincomb(xs, c, t, U_h, U_w) - R.spectral_lincomb(xs, c, t, U_h, U_w)).abs().max()\n"
        "assert d < 1e-12, d\n"
        "assert (blurdiff_ops.to_spectral(xs[0], U_h, U_w) - R.to_spectral(xs[0], U_h, U_w)).abs().max() < 1e-12\n"
        "print('ok')\n"
    )
    env = dict(os.environ, BLURDIFF_NO_DIRECT_BLAS="1")
    # Run outside the checkout: `python -c` puts the working directory on sys.path, and the
    # source folder's blurdiff_ops (no compiled _C in a clean clone) would shadow the installed one.
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
